"""Geometry between the user's slices and the model's square input, and back (torch, batched).

The modes ``"pad"``, ``"square"`` and ``"resize"`` come from a checkpoint's ``meta["preprocess"]``;
downsizing matches the training preparation (``core.io.geometry``) exactly, and :func:`from_model`
maps results back to the input's size (docs/design-notes.md, "Geometry").
Also the field of view a model was trained on, in mm (:func:`field_of_view`, :func:`canvas_for`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

MODES = ("pad", "square", "resize")
BRATS_SIDE = 240  # BraTS slices: 240 x 240 voxels of 1 mm


@dataclass(frozen=True)
class Geometry:
    """How a (H, W) slice maps to the model's (S, S): pads (top, bottom, left, right; negative
    values crop) to an intermediate (Hc, Wc), then a resize to (S, S)."""

    in_hw: tuple[int, int]
    pads: tuple[int, int, int, int]
    mid_hw: tuple[int, int]
    size: int


def plan(in_hw: tuple[int, int], size: int, mode: str = "pad",
         canvas: int | tuple[int, int] | None = None) -> Geometry:
    """The geometry for slices of shape ``in_hw`` and a model of input size ``size``; ``canvas``
    (pad mode) is a square side or a (rows, cols) pair (a field of view in mm at a voxel size
    that differs between rows and columns)."""
    if mode not in MODES:
        raise ValueError(f"unknown preprocessing mode {mode!r}; choose one of {MODES}")
    H, W = int(in_hw[0]), int(in_hw[1])
    if mode == "resize":
        return Geometry((H, W), (0, 0, 0, 0), (H, W), int(size))
    if mode == "square":
        side_h = side_w = max(H, W)
    elif canvas:
        side_h, side_w = (int(canvas), int(canvas)) if np.isscalar(canvas) else (int(canvas[0]), int(canvas[1]))
    else:
        side_h = side_w = max(H, W, int(size))
    ph, pw = side_h - H, side_w - W
    pads = (ph // 2, ph - ph // 2, pw // 2, pw - pw // 2)
    return Geometry((H, W), pads, (side_h, side_w), int(size))


def _pad(x: torch.Tensor, pads: tuple[int, int, int, int]) -> torch.Tensor:
    top, bottom, left, right = pads
    return F.pad(x, (left, right, top, bottom))  # negative pads crop


def _gaussian_kernel(sigma: float, like: torch.Tensor) -> torch.Tensor:
    radius = int(4.0 * sigma + 0.5)  # scipy.ndimage.gaussian_filter's truncate=4
    xs = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (xs / sigma) ** 2)
    return (k / k.sum()).to(dtype=like.dtype, device=like.device)


def _blur_axis(x: torch.Tensor, sigma: float, axis: int) -> torch.Tensor:
    """Separable Gaussian along the last (axis=-1) or second-to-last (axis=-2) axis of (N, C, H, W),
    mirror edges (scipy ``mode="mirror"`` = torch ``"reflect"``)."""
    if sigma <= 0:
        return x
    k = _gaussian_kernel(sigma, x)
    r = (k.numel() - 1) // 2
    if axis == -2:
        x = x.transpose(-1, -2)
    n = x.shape[-1]
    flat = x.reshape(-1, 1, n)
    # torch's reflect padding needs pad < size; slices that small (a kernel wider than the slice)
    # repeat their edge values instead
    flat = F.pad(flat, (r, r), mode="reflect" if r < n else "replicate")
    out = F.conv1d(flat, k.view(1, 1, -1)).reshape(x.shape)
    return out.transpose(-1, -2) if axis == -2 else out


def _resize(x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(hw):
        return x
    (H, W), (h, w) = x.shape[-2:], hw
    if h < H or w < W:  # anti-aliasing as skimage.transform.resize does when shrinking
        x = _blur_axis(x, max(0.0, (H / h - 1) / 2), -2)
        x = _blur_axis(x, max(0.0, (W / w - 1) / 2), -1)
    return F.interpolate(x, size=hw, mode="bilinear", align_corners=False)


def to_model(x: torch.Tensor, geom: Geometry) -> torch.Tensor:
    """(N, C, H, W) slices -> (N, C, S, S) model input."""
    if tuple(x.shape[-2:]) != geom.in_hw:
        raise ValueError(f"slices are {tuple(x.shape[-2:])}, geometry planned for {geom.in_hw}")
    return _resize(_pad(x, geom.pads), (geom.size, geom.size))


def from_model(y: torch.Tensor, geom: Geometry) -> torch.Tensor:
    """(N, C, S, S) model-space maps -> (N, C, H, W) at the input's size (inverse of to_model;
    regions that were cropped away come back as zeros)."""
    y = _resize(y, geom.mid_hw)
    top, bottom, left, right = geom.pads
    return _pad(y, (-top, -bottom, -left, -right))


def field_of_view(meta: dict, image_size: int) -> tuple[int | None, float | None]:
    """(side in pixels, pixel size in mm) of the field of view a pad-mode model was trained on:
    recorded in ``meta["preprocess"]`` (``canvas``, ``spacing_mm``) or, for BraTS-style models,
    240 x 240 slices at 1 mm. (None, None) where the model has no field of view in mm."""
    pre = (meta or {}).get("preprocess") or {}
    side, spacing = pre.get("canvas"), pre.get("spacing_mm")
    if pre.get("mode", "pad") != "pad":
        return None, None
    if (meta or {}).get("modality") == "brats":
        side, spacing = side or max(BRATS_SIDE, int(image_size)), spacing or 1.0
    if side is None or spacing is None:
        return None, None
    return int(side), float(spacing)


def canvas_for(meta: dict, image_size: int, spacing: Sequence[float] | None = None):
    """The pad/crop canvas (pixels; an int, or (rows, cols)) for slices whose pixels are
    ``spacing`` = (row, col) mm: the model's field of view in mm in the slice's own pixels, so
    a cropped, padded or finer volume keeps the anatomy's training scale. Without a spacing (or
    a field of view): the canvas the checkpoint records, None for the plain rule (pad to the
    larger side; slices already at the model's size pass unchanged)."""
    recorded = ((meta or {}).get("preprocess") or {}).get("canvas")
    side, mm = field_of_view(meta, image_size)
    if spacing is None or side is None:
        return recorded
    sp = [float(v) for v in spacing]
    if len(sp) != 2 or not all(np.isfinite(sp)) or min(sp) <= 0:
        raise ValueError(f"spacing must be two positive pixel sizes in mm, got {spacing}")
    rows, cols = (max(1, int(round(side * mm / v))) for v in sp)
    return rows if rows == cols else (rows, cols)
