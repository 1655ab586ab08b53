"""Geometry between the user's slices and the model's square input, and back (torch, batched).

Three modes, recorded in a checkpoint's ``meta["preprocess"]`` by the training data preparation so
that inference sees slices exactly as training did:

- ``"pad"`` (BraTS): centre zero-pad / centre-crop to a square ``canvas`` (256 for BraTS: 240 -> 256
  as in the paper), then resize to the model size if the canvas differs from it.
- ``"square"`` (aspect-preserving): zero-pad the shorter side to a square, then resize.
- ``"resize"`` (OCT2017 as in the paper's code): resize straight to the model size, ignoring aspect.

Resizing uses bilinear interpolation with antialiasing. :func:`from_model` inverts the mapping so
that reconstructions and anomaly maps come back at the input's size, aligned with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

MODES = ("pad", "square", "resize")


@dataclass(frozen=True)
class Geometry:
    """How a (H, W) slice maps to the model's (S, S): pads (top, bottom, left, right; negative
    values crop) to an intermediate (Hc, Wc), then a resize to (S, S)."""

    in_hw: tuple[int, int]
    pads: tuple[int, int, int, int]
    mid_hw: tuple[int, int]
    size: int


def plan(in_hw: tuple[int, int], size: int, mode: str = "pad", canvas: int | None = None) -> Geometry:
    """The geometry for slices of shape ``in_hw`` and a model of input size ``size``."""
    if mode not in MODES:
        raise ValueError(f"unknown preprocessing mode {mode!r}; choose one of {MODES}")
    H, W = int(in_hw[0]), int(in_hw[1])
    if mode == "resize":
        return Geometry((H, W), (0, 0, 0, 0), (H, W), int(size))
    if mode == "square":
        side = max(H, W)
    else:
        side = int(canvas) if canvas else max(H, W, int(size))
    ph, pw = side - H, side - W
    pads = (ph // 2, ph - ph // 2, pw // 2, pw - pw // 2)
    return Geometry((H, W), pads, (side, side), int(size))


def _pad(x: torch.Tensor, pads: tuple[int, int, int, int]) -> torch.Tensor:
    top, bottom, left, right = pads
    return F.pad(x, (left, right, top, bottom))  # negative pads crop


def _resize(x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(hw):
        return x
    return F.interpolate(x, size=hw, mode="bilinear", align_corners=False, antialias=True)


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
