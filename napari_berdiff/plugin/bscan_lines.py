"""Which B-scan line of an OCT localizer a point picks (pure numpy, no Qt or napari).

The B-scan positions layer holds one line ``(start, end)`` per B-scan in localizer pixels
``(row, col)``; a click picks the line nearest to it (distance to the segment, not to the infinite
line), when it lies within :func:`pick_tolerance` of it.
"""

from __future__ import annotations

import numpy as np

__all__ = ["segment_distances", "pick_tolerance", "nearest_line"]

MIN_TOLERANCE_PX = 5.0  # a click this close to a line always picks it


def segment_distances(lines, point) -> np.ndarray:
    """Distance of ``point`` (2,) to each segment of ``lines`` (n, 2, 2) (start, end)."""
    lines = np.asarray(lines, np.float64).reshape(-1, 2, 2)
    p = np.asarray(point, np.float64)[-2:]
    a, b = lines[:, 0], lines[:, 1]
    ab = b - a
    length2 = np.einsum("ij,ij->i", ab, ab)
    t = np.einsum("ij,ij->i", p - a, ab) / np.where(length2 > 0, length2, 1.0)
    t = np.clip(np.where(length2 > 0, t, 0.0), 0.0, 1.0)
    return np.linalg.norm(a + t[:, None] * ab - p, axis=1)


def pick_tolerance(lines, minimum: float = MIN_TOLERANCE_PX) -> float:
    """How far from a line a click still picks it: the median distance between the midpoints
    of consecutive lines (so any click inside the raster picks the nearest B-scan), at least
    ``minimum`` pixels."""
    lines = np.asarray(lines, np.float64).reshape(-1, 2, 2)
    if len(lines) < 2:
        return float(minimum)
    mid = lines.mean(axis=1)
    gap = float(np.median(np.linalg.norm(np.diff(mid, axis=0), axis=1)))
    return max(float(minimum), gap)


def nearest_line(lines, point, max_distance: float | None = None) -> int | None:
    """Index of the line of ``lines`` (n, 2, 2) nearest to ``point`` (row, col), or None when
    there is none or the nearest lies farther than ``max_distance``. Ties go to the lower
    index."""
    if len(lines) == 0:
        return None
    d = segment_distances(lines, point)
    k = int(np.argmin(d))
    if max_distance is not None and not d[k] <= max_distance:
        return None
    return k
