"""Volumes through the model's slices and back: one path for the napari widget (a layer as it is
displayed) and ``berdiff detect`` (a NIfTI volume in its file's voxel order).

A volume here is ``(C, Z, H, W)`` in its own orientation, ``Z`` its slice axis. A
:class:`SliceMap` says how its slices become the model's (an in-plane transposition and flips, so
that the model sees axial slices in RAS order as in training; ``berdiff detect`` puts the volume
in RAS order first and needs none) and which voxel slice number seeds each slice;
:func:`iter_detect_volume` normalises the volume as the model's training volumes were, runs the
chosen slices and returns the outputs in the volume's orientation. Also the intensity
normalisation and the finiteness check of stacks. Plain numpy (no torch).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

__all__ = ["SliceMap", "prepare_volume", "iter_detect_volume", "full_volume", "check_finite",
           "resolve_normalize", "normalize_stack", "NORMALIZE_MODES", "volume_to_slices",
           "slices_to_volume"]

NORMALIZE_MODES = ("auto", "percentile", "none")


@dataclass(frozen=True)
class SliceMap:
    """A volume's slice (rows, cols as stored) <-> the model's slice; and the volume's slice
    index <-> the voxel slice number the seeds follow."""

    transpose: bool = False
    flip_rows: bool = False
    flip_cols: bool = False
    flip_slices: bool = False
    n_slices: int = 1

    @classmethod
    def for_axes(cls, axes: Sequence[int], signs: Sequence[int], n_slices: int) -> "SliceMap":
        """For a volume whose axes (slice, rows, cols) run along the canonical axes ``axes``
        (0 R, 1 A, 2 S; the slice axis must be S) in the directions ``signs`` (+1 / -1): the
        model then sees its axial slices in RAS order, as the training did."""
        if int(axes[0]) != 2:
            raise ValueError("the slice axis must be the axial (S) one")
        return cls(transpose=int(axes[1]) == 1, flip_rows=signs[1] < 0, flip_cols=signs[2] < 0,
                   flip_slices=signs[0] < 0, n_slices=int(n_slices))

    def to_model(self, a: np.ndarray) -> np.ndarray:
        """(..., rows, cols) as stored -> as the model sees them."""
        axes = tuple(ax for ax, f in ((-2, self.flip_rows), (-1, self.flip_cols)) if f)
        a = np.flip(a, axes) if axes else a
        return np.swapaxes(a, -1, -2) if self.transpose else a

    def to_layer(self, m: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`to_model`: the model's (..., rows, cols) as stored."""
        m = np.swapaxes(m, -1, -2) if self.transpose else m
        axes = tuple(ax for ax, f in ((-2, self.flip_rows), (-1, self.flip_cols)) if f)
        return np.flip(m, axes) if axes else m

    def seed_index(self, layer_index: int) -> int:
        """The voxel slice number of a stored slice (seeds follow it; its own inverse)."""
        return self.n_slices - 1 - int(layer_index) if self.flip_slices else int(layer_index)

    def latent_axes(self, model_map: list[tuple[float, float]], layer_hw: tuple[int, int],
                    latent_hw: tuple[int, int]) -> list[tuple[float, float]]:
        """Per stored in-plane axis (scale, offset) of a latent grid, from the model-orientation
        maps ``image = scale * u + offset`` (rows, cols); flips and transposition applied."""
        maps = list(model_map[::-1]) if self.transpose else list(model_map)
        lat = tuple(latent_hw)[::-1] if self.transpose else tuple(latent_hw)
        out = []
        for ax, flip in enumerate((self.flip_rows, self.flip_cols)):
            r, o = maps[ax]
            if flip:  # layer = n-1 - (r*u + o), u = h-1-u'
                o = layer_hw[ax] - 1 - r * (lat[ax] - 1) - o
            out.append((r, o))
        return out


def prepare_volume(detector, volume, normalize: str = "auto") -> tuple[np.ndarray, str]:
    """``(volume, how)``: ``volume`` (C, Z, H, W), or (Z, H, W) for one channel, as float32
    normalised as the model's training volumes were ("auto": ``detector.volume_normalize``;
    "none" leaves it), and how, in words (provenance). ValueError for NaN/Inf values."""
    vol = np.asarray(volume, dtype=np.float32)
    vol = vol[None] if vol.ndim == 3 else vol
    if vol.ndim != 4:
        raise ValueError(f"expected a volume (C, Z, H, W) or (Z, H, W), got shape {np.shape(volume)}")
    check_finite(vol)  # before normalising: percentiles of NaN data would hide them
    mode = detector.volume_normalize(normalize)
    applied = resolve_normalize(mode, vol)
    how = (f"{applied} (per volume and channel, {mode!r} requested)" if applied == "percentile"
           else f"none ({mode!r} requested; the data were already in [0, 1])")
    return normalize_stack(vol, applied, channel_axis=0), how


def iter_detect_volume(detector, volume, slices: Sequence[int] | None = None,
                       slice_map: SliceMap | None = None, *, normalize: str = "auto", **kwargs):
    """Detect on slices of ``volume`` (C, Z, H, W), or (Z, H, W) for one channel, normalised by
    :func:`prepare_volume`; a generator (as :meth:`Detector.iter_detect`, whose keywords pass
    through) returning a ``DetectionResult`` in the volume's orientation (``slices``: its slice
    indices, ``input``: the normalised slices). ``slice_map``: how its slices become the model's
    (default: as they are). ``spacing``: the model slices' (row, col) pixel size in mm."""
    vol, how = prepare_volume(detector, volume, normalize)
    Z = vol.shape[1]
    idx = list(range(Z)) if slices is None else [int(i) for i in slices]
    if idx and (min(idx) < 0 or max(idx) >= Z):
        raise ValueError(f"slice indices must lie in 0..{Z - 1}")
    sm = slice_map or SliceMap(n_slices=Z)
    x = np.ascontiguousarray(np.moveaxis(vol[:, idx], 1, 0))  # (N, C, H, W) as stored
    res = yield from detector.iter_detect(np.ascontiguousarray(sm.to_model(x)), normalize="none",
                                          indices=[sm.seed_index(i) for i in idx], **kwargs)

    def back(a):
        return None if a is None else np.ascontiguousarray(sm.to_layer(a))

    spread = getattr(res, "spread", None)  # K-sample results (.uncertainty)
    extra = {} if spread is None else {"spread": back(spread)}
    return replace(res, reconstruction=back(res.reconstruction), anomaly_map=back(res.anomaly_map),
                   mask_history=back(res.mask_history), input=x, slices=idx,
                   provenance={**res.provenance, "normalize": how}, **extra)


def full_volume(values: np.ndarray, slices: Sequence[int], n_slices: int, dtype=None) -> np.ndarray:
    """``(n_slices, ...)`` zeros with ``values`` ``(N, ...)`` at ``slices`` (outputs of some
    slices placed back into their volume)."""
    values = np.asarray(values)
    out = np.zeros((int(n_slices),) + values.shape[1:], dtype or values.dtype)
    out[list(slices)] = values
    return out


def check_finite(arr: np.ndarray) -> None:
    """ValueError when ``arr`` holds NaN or Inf (saying how many)."""
    bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
    if bad:
        raise ValueError(f"the input contains {bad} NaN/Inf value(s); fix or mask them first")


def resolve_normalize(mode: str, x: np.ndarray) -> str:
    """What :func:`normalize_stack` does with ``mode`` on ``x``: "percentile" or "none"."""
    if mode not in NORMALIZE_MODES:
        raise ValueError(f"normalize must be one of {NORMALIZE_MODES}, got {mode!r}")
    if mode == "percentile" or (mode == "auto" and (float(x.min()) < 0.0 or float(x.max()) > 1.0)):
        return "percentile"
    return "none"


def normalize_stack(x: np.ndarray, mode: str = "auto", channel_axis: int = 1) -> np.ndarray:
    """Per-channel intensity normalisation of a stack or volume: ``"percentile"`` is the training
    preparation's robust per-volume normalisation
    (:func:`napari_berdiff.core.io.intensity.normalize_volume`), ``"auto"`` applies it only when
    the data are not already within [0, 1], ``"none"`` leaves the data as they are."""
    if resolve_normalize(mode, x) == "none":
        return x
    from ..io.intensity import normalize_volume

    return normalize_volume(x, channel_axis=channel_axis)


def as_channels_first(volume) -> np.ndarray:
    v = np.asarray(volume, dtype=np.float32)
    return v[None] if v.ndim == 3 else v


def volume_to_slices(volume, slice_axis: int = -1, slices: Sequence[int] | None = None):
    """(C, X, Y, Z) or (X, Y, Z) -> ((n, C, h, w) stack, slice indices) along a spatial axis."""
    v = as_channels_first(volume)
    if v.ndim != 4:
        raise ValueError(f"expected a volume (C, X, Y, Z) or (X, Y, Z), got shape {np.shape(volume)}")
    stack = np.moveaxis(v, slice_axis % 3 + 1, 0)  # (Z, C, X, Y)
    idx = list(range(stack.shape[0])) if slices is None else [int(i) for i in slices]
    if idx and (min(idx) < 0 or max(idx) >= stack.shape[0]):
        raise ValueError(f"slice indices must lie in 0..{stack.shape[0] - 1}")
    return np.ascontiguousarray(stack[idx]), idx


def slices_to_volume(arr: np.ndarray, slice_axis: int = -1) -> np.ndarray:
    """Inverse of :func:`volume_to_slices` for outputs shaped (..., N, H, W): returns
    (..., X, Y, Z) with the slice axis put back at ``slice_axis`` of the three spatial axes.
    (Move a channel axis in front of N first, e.g. (K, N, C, H, W) -> (K, C, N, H, W).)"""
    n_axis = arr.ndim - 3
    return np.moveaxis(arr, n_axis, n_axis + slice_axis % 3)
