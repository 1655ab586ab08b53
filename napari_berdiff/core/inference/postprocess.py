"""From reconstructions to anomaly maps and segmentations: the paper protocol (docs/method.md §8).

Each function accepts a single 2D map ``(H, W)`` or a stack ``(N, H, W)`` and then works slice by
slice (percentiles, filtering and connected components never cross slices). Images and
reconstructions are ``(C, H, W)`` for one slice or ``(N, C, H, W)`` for a stack.

The napari widget and ``berdiff detect`` segment with ``segment_map(paper_anomaly_map(x, x_rec))``
(the parameters: :class:`.settings.PostProcess`); ``berdiff evaluate`` uses the same pieces.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import ndimage

from .settings import POST, PostProcess

__all__ = ["paper_anomaly_map", "normalize_map", "segment", "remove_small_components",
           "median_filter_2d", "segment_map"]

_CHUNK = 1 << 16  # elements per plane of the sorting network: 26 planes stay in the CPU cache


def _batcher(n: int) -> list[tuple[int, int]]:
    """Batcher's odd-even merge sort: comparators ``(i, j)``, ``i < j``, for ``n = 2**m`` wires."""
    out = []
    p = 1
    while p < n:
        k = p
        while k >= 1:
            for j in range(k % p, n - k, 2 * k):
                for i in range(min(k, n - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        out.append((i + j, i + j + k))
            k //= 2
        p *= 2
    return out


@lru_cache(maxsize=None)
def _selection_network(m: int, rank: int) -> tuple[tuple, int]:
    """A comparator network that puts the ``rank``-th smallest of ``m`` values on one wire:
    Batcher's sorting network padded to a power of two with +inf wires, with the comparators
    that touch a +inf wire turned into relabellings and those the result does not depend on
    dropped (25 values: 113 comparators). Returns ``((a, b, need_min, need_max), ...)`` over
    the ``m`` input planes (min -> a, max -> b) and the plane that ends up holding the result."""
    n = 1
    while n < m:
        n *= 2
    phys: list[int | None] = [w if w < m else None for w in range(n)]  # None: a +inf wire
    ops = []
    for i, j in _batcher(n):
        a, b = phys[i], phys[j]
        if b is None:  # max(a, inf) = inf stays on j, a stays on i
            continue
        if a is None:  # min(inf, b) = b moves to i
            phys[i], phys[j] = b, None
            continue
        ops.append((a, b))
    target = phys[rank]
    need = {target}
    keep = []
    for a, b in reversed(ops):
        if a in need or b in need:
            keep.append((a, b, a in need, b in need))
            need.update((a, b))
    return tuple(reversed(keep)), target


def median_filter_2d(a: np.ndarray, size: int = 5) -> np.ndarray:
    """A ``size`` x ``size`` median over the last two axes of ``a`` (each 2D slice alone), equal
    to ``scipy.ndimage.median_filter(a, size=(1, ..., size, size))`` with scipy's default
    boundary mode "reflect" (``d c b a | a b c d | d c b a``), even sizes included (scipy's
    upper median and window origin), same dtype.

    A selection network of elementwise ``minimum``/``maximum`` over the ``size**2`` shifted
    copies of a few slices at a time (so that they stay in the cache): about 6x faster than
    scipy for 5x5 on 240x240 slices. Arrays with NaN or Inf go to scipy (whose order of
    NaNs this does not reproduce)."""
    a = np.asarray(a)
    k = int(size)
    if k <= 1 or a.size == 0:
        return a.copy()
    if a.ndim < 2:
        raise ValueError(f"median_filter_2d needs at least 2 dimensions, got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.complexfloating) or (
            np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all()):
        return ndimage.median_filter(a, size=(1,) * (a.ndim - 2) + (k, k))
    H, W = a.shape[-2:]
    lo, hi = k // 2, k - k // 2 - 1  # scipy's window for origin 0: [x - k//2, x + (k-1)//2]
    flat = a.reshape(-1, H, W)
    out = np.empty_like(flat)
    ops, target = _selection_network(k * k, (k * k) // 2)
    step = max(1, _CHUNK // (H * W))
    for s in range(0, flat.shape[0], step):
        p = np.pad(flat[s:s + step], ((0, 0), (lo, hi), (lo, hi)), mode="symmetric")
        n = min(step, flat.shape[0] - s)
        planes = [np.array(p[:, dy:dy + H, dx:dx + W]) for dy in range(k) for dx in range(k)]
        spare = np.empty((n, H, W), a.dtype)
        for x, y, need_min, need_max in ops:
            px, py = planes[x], planes[y]
            if need_min and need_max:
                np.minimum(px, py, out=spare)
                np.maximum(px, py, out=py)
                planes[x], spare = spare, px
            elif need_min:
                np.minimum(px, py, out=px)
            else:
                np.maximum(px, py, out=py)
        out[s:s + n] = planes[target]
    return out.reshape(a.shape)


def _stack(a: np.ndarray, ndim: int, what: str) -> tuple[np.ndarray, bool]:
    """``a`` as a stack with ``ndim`` dims (adding a leading axis to a single item)."""
    arr = np.asarray(a)
    if arr.ndim == ndim - 1:
        return arr[None], True
    if arr.ndim != ndim:
        raise ValueError(f"{what}: expected {ndim - 1} or {ndim} dimensions, got shape {arr.shape}")
    return arr, False


def paper_anomaly_map(x: np.ndarray, x_rec: np.ndarray,
                      median_size: int = POST.median_size) -> np.ndarray:
    """``sum_c median_filter((x_c - x_rec_c)^2)``: per-channel squared error, a
    ``median_size`` x ``median_size`` median filter per channel (within each slice; borders
    reflected as in scipy's default; :func:`median_filter_2d`), then the sum over channels. ``median_size <= 1`` skips the
    filter (the detector's raw map). ``(C, H, W) -> (H, W)``, ``(N, C, H, W) -> (N, H, W)``;
    float32."""
    xs, single = _stack(x, 4, "paper_anomaly_map x")
    rs, _ = _stack(x_rec, 4, "paper_anomaly_map x_rec")
    if xs.shape != rs.shape:
        raise ValueError(f"x {xs.shape} and x_rec {rs.shape} differ in shape")
    err = (xs.astype(np.float32) - rs.astype(np.float32)) ** 2
    if median_size and median_size > 1:
        err = median_filter_2d(err, int(median_size))  # = scipy median_filter(size=(1, 1, k, k))
    out = err.sum(axis=1, dtype=np.float32)
    return out[0] if single else out


def normalize_map(a: np.ndarray, low: float = POST.low, high: float = POST.high) -> np.ndarray:
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


def remove_small_components(mask: np.ndarray, min_size: int = POST.min_size,
                            connectivity: int = POST.connectivity) -> np.ndarray:
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


def segment(a_norm: np.ndarray, threshold: float = POST.threshold, min_size: int = POST.min_size,
            connectivity: int = POST.connectivity) -> np.ndarray:
    """Binary segmentation: ``a_norm > threshold``, then components smaller than ``min_size``
    pixels removed (see :func:`remove_small_components`). ``(H, W)`` or ``(N, H, W)``; bool."""
    return remove_small_components(np.asarray(a_norm) > threshold, min_size, connectivity)


def segment_map(amap: np.ndarray, post: PostProcess = POST) -> np.ndarray:
    """The segmentation of :func:`paper_anomaly_map` maps under ``post`` (bool, per slice): the
    normalised map above ``post.threshold`` or, with ``post.abs_threshold``, the map itself above
    that; then components smaller than ``post.min_size`` removed."""
    if post.abs_threshold is not None:
        return remove_small_components(np.asarray(amap) > post.abs_threshold, post.min_size,
                                       post.connectivity)
    return segment(normalize_map(amap, post.low, post.high), post.threshold, post.min_size,
                   post.connectivity)
