"""Robust per-channel intensity normalisation of volumes, shared by detection and training
preparation (docs/method.md §9)."""

from __future__ import annotations

import numpy as np

__all__ = ["normalize_volume", "LOW_PERCENTILE", "HIGH_PERCENTILE"]

#: The default percentiles of the foreground that map to 0 and 1.
LOW_PERCENTILE = 0.5
HIGH_PERCENTILE = 99.5


def normalize_volume(vol: np.ndarray, low: float = LOW_PERCENTILE, high: float = HIGH_PERCENTILE, *,
                     channel_axis: int | None = 0, mask: np.ndarray | None = None,
                     return_stats: bool = False):
    """Robust per-channel normalisation to [0, 1].

    For each channel: take the voxels that are nonzero (the brain; or ``mask`` when given), find
    their ``low`` and ``high`` percentiles (defaults 0.5 and 99.5), map ``[p_low, p_high]``
    linearly onto [0, 1] and clip; voxels outside the foreground are set to 0. A channel without
    foreground is all zeros; a constant foreground maps to 1. ``channel_axis=None`` treats the
    whole array as one channel. Returns float32 of the same shape (and, with
    ``return_stats=True``, a list of ``(p_low, p_high)`` per channel).
    """
    if not 0.0 <= low < high <= 100.0:
        raise ValueError(f"need 0 <= low < high <= 100, got low={low}, high={high}")
    x = np.asarray(vol, dtype=np.float32)
    bad = int(np.count_nonzero(~np.isfinite(x)))
    if bad:  # NaN percentiles would silently turn a whole channel into ones
        raise ValueError(f"cannot normalise: the data contain {bad} NaN/Inf value(s)")
    moved = x[None] if channel_axis is None else np.moveaxis(x, channel_axis, 0)
    out = np.zeros(moved.shape, dtype=np.float32)
    stats = []
    for c in range(moved.shape[0]):
        v = moved[c]
        fg = (v != 0) if mask is None else np.asarray(mask, dtype=bool)
        vals = v[fg]
        if vals.size == 0:
            stats.append((0.0, 0.0))
            continue
        lo, hi = (float(q) for q in np.percentile(vals, [low, high]))
        stats.append((lo, hi))
        if hi > lo:
            o = (v - np.float32(lo)) * np.float32(1.0 / (hi - lo))
            np.clip(o, 0.0, 1.0, out=o)
        else:
            o = np.ones_like(v)
        o[~fg] = 0.0
        out[c] = o
    out = out[0] if channel_axis is None else np.moveaxis(out, 0, channel_axis)
    return (out, stats) if return_stats else out
