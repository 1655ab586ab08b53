"""The napari plugin: reader, writer, sample data and the widget (wires core calls to layers)."""
