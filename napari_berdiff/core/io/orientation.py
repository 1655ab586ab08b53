"""Volumes in the orientation the models see: the closest canonical RAS voxel order.

Detection reorders every volume to RAS (axis permutations and flips from the affine, no
resampling) and puts the results back into the file's own voxel order, so outputs keep the
source's shape and affine (docs/design-notes.md, "Orientation").
"""

from __future__ import annotations

import numpy as np

CANONICAL = ("R", "A", "S")


def orientation_of(affine) -> np.ndarray:
    """(3, 2) array: voxel axis ``v`` runs along canonical axis ``ornt[v, 0]`` (0 = R, 1 = A,
    2 = S) in direction ``ornt[v, 1]`` (+1 or -1)."""
    from nibabel.orientations import io_orientation

    A = np.asarray(affine, dtype=np.float64)
    if A.shape != (4, 4) or not np.all(np.isfinite(A)):
        raise ValueError("the affine must be a finite 4x4 matrix")
    ornt = io_orientation(A)
    if np.isnan(ornt).any():  # a degenerate (singular) affine: keep the voxel order
        return np.array([[0, 1], [1, 1], [2, 1]], dtype=int)
    return ornt.astype(int)


def is_canonical(ornt: np.ndarray) -> bool:
    return bool(np.array_equal(ornt, [[0, 1], [1, 1], [2, 1]]))


def _voxel_axes(ornt: np.ndarray) -> list[int]:
    """The voxel axis that runs along each canonical axis R, A, S."""
    return [int(np.flatnonzero(ornt[:, 0] == c)[0]) for c in range(3)]


def to_canonical(arr: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """``(..., X, Y, Z)`` in voxel order -> ``(..., R, A, S)`` (a view where possible)."""
    lead = arr.ndim - 3
    src = _voxel_axes(ornt)
    out = np.transpose(arr, tuple(range(lead)) + tuple(lead + v for v in src))
    flips = tuple(lead + c for c, v in enumerate(src) if ornt[v, 1] < 0)
    return np.flip(out, flips) if flips else out


def from_canonical(arr: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """The inverse of :func:`to_canonical`: ``(..., R, A, S)`` -> the file's voxel order."""
    lead = arr.ndim - 3
    src = _voxel_axes(ornt)
    flips = tuple(lead + c for c, v in enumerate(src) if ornt[v, 1] < 0)
    out = np.flip(arr, flips) if flips else arr
    inv = np.argsort(src)  # canonical position of each voxel axis
    return np.transpose(out, tuple(range(lead)) + tuple(lead + int(c) for c in inv))


def canonical_zooms(affine, ornt: np.ndarray | None = None) -> tuple[float, float, float]:
    """Voxel sizes (mm) along the canonical axes R, A, S."""
    from nibabel.affines import voxel_sizes

    A = np.asarray(affine, dtype=np.float64)
    zooms = voxel_sizes(A)  # per voxel axis
    ornt = orientation_of(A) if ornt is None else ornt
    return tuple(float(zooms[v]) for v in _voxel_axes(ornt))


def axcodes(ornt: np.ndarray) -> str:
    """``"LPS"``-style letters of a voxel order (for messages and provenance)."""
    names = (("L", "R"), ("P", "A"), ("I", "S"))
    return "".join(names[int(c)][int(d) > 0] for c, d in ornt)
