"""napari-berdiff: masked Bernoulli latent diffusion for unsupervised anomaly detection.

The pure numpy/torch library lives in :mod:`napari_berdiff.core` (it never imports napari or Qt);
the napari plugin (reader, writer, sample data, widget) in :mod:`napari_berdiff.plugin`;
``berdiff`` is the CLI (:mod:`napari_berdiff.cli`).
"""

__version__ = "0.1.0"
