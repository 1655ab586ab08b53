"""napari-berdiff: masked Bernoulli latent diffusion for unsupervised anomaly detection.

The pure numpy/torch library lives in :mod:`napari_berdiff.core` (it never imports napari or Qt);
the napari face (readers, writer, sample data, widget) sits beside it; ``berdiff`` is the CLI.
"""

__version__ = "0.1.0"
