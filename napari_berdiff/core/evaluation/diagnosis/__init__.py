"""Model diagnosis behind ``berdiff diagnose``: where a model's detection fails.

``ae`` (does the autoencoder reproduce anomalies?), ``unet`` (does the U-Net flag their bits?),
``oracle`` (would it heal them with a perfect mask?) and ``paired`` (generated anomalies against
their healthy twins). What each prints: docs/training.md and docs/benchmarks.md.
"""
