"""Pure numpy/torch core of napari-berdiff. Never imports napari or Qt."""
