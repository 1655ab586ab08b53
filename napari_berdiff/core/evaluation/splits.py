"""Evaluation splits: their images as floats, which slices have pixel labels, and the progress
count of a sweep over them."""

from __future__ import annotations

import numpy as np

__all__ = ["as_float", "pixel_labelled", "n_ticks"]


def pixel_labelled(split) -> np.ndarray:
    """Slices whose label image is a real pixel label (healthy, BraTS, or OCT with a mask)."""
    n = len(split.healthy)
    has = getattr(split, "has_mask", None)
    if (split.meta or {}).get("dataset") == "oct" and has is not None:
        return np.asarray(split.healthy, bool) | np.asarray(has, bool)
    return np.ones(n, bool)


def as_float(a) -> np.ndarray:
    """Images as float32 in [0, 1]; stored uint8 (``decode=False`` splits) are divided by 255."""
    a = np.asarray(a)
    if a.dtype == np.uint8:
        return a.astype(np.float32) * np.float32(1.0 / 255.0)
    return np.ascontiguousarray(a, dtype=np.float32)


def n_ticks(n: int, k: int, batch_size: int, n_steps: int) -> int:
    """Network evaluations for ``n`` slices at ``k`` thresholds, ``batch_size`` trajectories a call."""
    per = max(1, batch_size // k)
    return -(-n // per) * n_steps
