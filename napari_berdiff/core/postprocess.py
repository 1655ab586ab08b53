"""From reconstructions to anomaly maps and segmentations: the paper protocol (SPEC section 8).

Each function accepts a single 2D map ``(H, W)`` or a stack ``(N, H, W)`` and then works slice by
slice (percentiles, filtering and connected components never cross slices). Images and
reconstructions are ``(C, H, W)`` for one slice or ``(N, C, H, W)`` for a stack.

The napari widget and ``berdiff detect`` segment with ``segment(normalize_map(paper_anomaly_map(
x, x_rec)))``; ``berdiff evaluate`` uses the same pieces.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["paper_anomaly_map", "normalize_map", "segment", "remove_small_components"]


def _stack(a: np.ndarray, ndim: int, what: str) -> tuple[np.ndarray, bool]:
    """``a`` as a stack with ``ndim`` dims (adding a leading axis to a single item)."""
    arr = np.asarray(a)
    if arr.ndim == ndim - 1:
        return arr[None], True
    if arr.ndim != ndim:
        raise ValueError(f"{what}: expected {ndim - 1} or {ndim} dimensions, got shape {arr.shape}")
    return arr, False


def paper_anomaly_map(x: np.ndarray, x_rec: np.ndarray, median_size: int = 5) -> np.ndarray:
    """``sum_c median_filter((x_c - x_rec_c)^2)``: per-channel squared error, a
    ``median_size`` x ``median_size`` median filter per channel (within each slice; borders
    reflected as in scipy's default), then the sum over channels. ``median_size <= 1`` skips the
    filter (the detector's raw map). ``(C, H, W) -> (H, W)``, ``(N, C, H, W) -> (N, H, W)``;
    float32."""
    xs, single = _stack(x, 4, "paper_anomaly_map x")
    rs, _ = _stack(x_rec, 4, "paper_anomaly_map x_rec")
    if xs.shape != rs.shape:
        raise ValueError(f"x {xs.shape} and x_rec {rs.shape} differ in shape")
    err = (xs.astype(np.float32) - rs.astype(np.float32)) ** 2
    if median_size and median_size > 1:
        # filter only the two spatial axes: size 1 along the slice and channel axes
        err = ndimage.median_filter(err, size=(1, 1, int(median_size), int(median_size)))
    out = err.sum(axis=1, dtype=np.float32)
    return out[0] if single else out


def normalize_map(a: np.ndarray, low: float = 1.0, high: float = 99.0) -> np.ndarray:
    """Clip each 2D map to its own ``[low, high]`` percentiles and min-max scale to [0, 1].

    A map whose clipped range is empty (constant, or constant between the percentiles) becomes
    all zeros: nothing in it stands out, so nothing is segmented at any threshold > 0.
    Works on ``(H, W)`` or per slice on ``(N, H, W)``; float32.
    """
    if not 0.0 <= low < high <= 100.0:
        raise ValueError(f"need 0 <= low < high <= 100, got low={low}, high={high}")
    s, single = _stack(a, 3, "normalize_map")
    s = s.astype(np.float32, copy=False)
    flat = s.reshape(s.shape[0], -1)
    lo, hi = np.percentile(flat, [low, high], axis=1)  # (N,) each
    out = np.zeros_like(s, dtype=np.float32)
    for i in range(s.shape[0]):
        span = float(hi[i] - lo[i])
        if span > 0:
            out[i] = (np.clip(s[i], lo[i], hi[i]) - lo[i]) / span
    return out[0] if single else out


def _structure(connectivity: int) -> np.ndarray:
    """scipy structuring element: 1 = 4-connected (edges), 2 = 8-connected (edges and corners).
    8 and 4 are accepted as aliases."""
    conn = {4: 1, 8: 2}.get(int(connectivity), int(connectivity))
    if conn not in (1, 2):
        raise ValueError(f"connectivity must be 1/4 or 2/8, got {connectivity}")
    return ndimage.generate_binary_structure(2, conn)


def remove_small_components(mask: np.ndarray, min_size: int = 10, connectivity: int = 2) -> np.ndarray:
    """Drop connected components with fewer than ``min_size`` pixels (per slice); bool array.

    ``connectivity`` 2 (or 8) joins diagonal neighbours, 1 (or 4) only edge neighbours. The
    paper removes components "smaller than 10 pixels" (``min_size=10``); the authors' released
    evaluation removes components of <= 15 pixels, 8-connected (``min_size=16``).
    """
    s, single = _stack(mask, 3, "remove_small_components")
    s = s.astype(bool, copy=False)
    out = s.copy()
    if min_size and min_size > 1:
        st = _structure(connectivity)
        for i in range(s.shape[0]):
            if not s[i].any():
                continue
            lab, n = ndimage.label(s[i], structure=st)
            sizes = np.bincount(lab.ravel(), minlength=n + 1)
            small = sizes < int(min_size)
            small[0] = False
            if small.any():
                out[i][small[lab]] = False
    return out[0] if single else out


def segment(a_norm: np.ndarray, threshold: float = 0.5, min_size: int = 10,
            connectivity: int = 2) -> np.ndarray:
    """Binary segmentation: ``a_norm > threshold``, then components smaller than ``min_size``
    pixels removed (see :func:`remove_small_components`). ``(H, W)`` or ``(N, H, W)``; bool."""
    return remove_small_components(np.asarray(a_norm) > threshold, min_size, connectivity)
