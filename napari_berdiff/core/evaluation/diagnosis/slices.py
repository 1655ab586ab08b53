"""What the split-based diagnoses share: the diseased slices of a split and the labels on the
latent grid."""

from __future__ import annotations

import numpy as np

from ..report import pick_slices


def diseased_slices(ck, split, what: str, max_slices: int | None):
    """``(slices, cell)``: at most ``max_slices`` slices of ``split`` with a labelled anomaly
    (evenly spaced) and the pixels per latent cell side. ``ck`` must hold both networks and match
    the split's channels; ``what`` names the split in errors (ValueError)."""
    if ck.unet_config is None or ck.ae_config is None:
        raise ValueError(f"{ck.path} is not a full model (autoencoder and U-Net)")
    ck.check_channels(split.images.shape[1], what)
    diseased = np.flatnonzero(split.labels.reshape(len(split), -1).any(axis=1))
    if diseased.size == 0:
        raise ValueError(f"{what} has no labelled anomalies")
    s = split.subset(diseased[pick_slices(diseased.size, max_slices)])
    return s, s.images.shape[-1] // ck.ae_config.latent_size


def cell_fraction(labels: np.ndarray, cell: int) -> np.ndarray:
    """(B, H, W) pixel mask -> (B, H/cell, W/cell): the labelled fraction of each latent cell."""
    b, h, w = labels.shape
    return labels.reshape(b, h // cell, cell, w // cell, cell).mean(axis=(2, 4))
