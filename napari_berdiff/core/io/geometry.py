"""In-plane geometry: centred pad/crop and resize of the last two axes, invertible.

Functions work on the last two axes of an array of any rank and return a :class:`Transform2D`
whose ``undo`` maps a result back onto the input grid and whose ``apply`` repeats the transform
on another array (conventions: docs/design-notes.md, "Geometry").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

__all__ = [
    "Transform2D",
    "Step",
    "as_shape2d",
    "plan_pad_or_crop",
    "plan_resize",
    "plan_fit_square",
    "pad_or_crop_2d",
    "resize_2d",
]


def as_shape2d(size: int | Sequence[int]) -> tuple[int, int]:
    """``256 -> (256, 256)``; ``(h, w) -> (h, w)``; positive integers only."""
    if np.isscalar(size):
        shape = (int(size), int(size))  # type: ignore[arg-type]
    else:
        shape = tuple(int(s) for s in size)  # type: ignore[union-attr]
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"expected a positive size or (height, width), got {size!r}")
    return shape  # type: ignore[return-value]


@dataclass(frozen=True)
class Step:
    """One step: ``kind`` is ``"padcrop"`` or ``"resize"``.

    For ``"padcrop"``, ``offsets[axis] = (before, after)`` in pixels: positive pads with zeros,
    negative crops. For ``"resize"`` the offsets are unused.
    """

    kind: str
    in_shape: tuple[int, int]
    out_shape: tuple[int, int]
    offsets: tuple[tuple[int, int], tuple[int, int]] = ((0, 0), (0, 0))

    def inverse(self) -> "Step":
        inv = tuple((-b, -a) for b, a in self.offsets)
        return Step(self.kind, self.out_shape, self.in_shape, inv)  # type: ignore[arg-type]

    def run(self, arr: np.ndarray, order: int) -> np.ndarray:
        if tuple(arr.shape[-2:]) != self.in_shape:
            raise ValueError(f"expected an array ending in {self.in_shape}, got shape {arr.shape}")
        if self.kind == "padcrop":
            return _padcrop(arr, self.offsets)
        if self.kind == "resize":
            return _resize(arr, self.out_shape, order)
        raise ValueError(f"unknown step kind {self.kind!r}")


@dataclass(frozen=True)
class Transform2D:
    """A sequence of in-plane steps from ``in_shape`` to ``out_shape`` (the last two axes)."""

    in_shape: tuple[int, int]
    out_shape: tuple[int, int]
    steps: tuple[Step, ...] = ()

    @classmethod
    def identity(cls, shape: Sequence[int]) -> "Transform2D":
        s = as_shape2d(shape)
        return cls(s, s, ())

    @property
    def is_identity(self) -> bool:
        return not self.steps

    def then(self, other: "Transform2D") -> "Transform2D":
        if other.in_shape != self.out_shape:
            raise ValueError(f"cannot chain {self.out_shape} -> {other.in_shape}")
        return Transform2D(self.in_shape, other.out_shape, self.steps + other.steps)

    def apply(self, arr: np.ndarray, order: int = 1) -> np.ndarray:
        """Transform ``arr[..., H_in, W_in]`` to ``[..., H_out, W_out]``; ``order=0`` for labels."""
        arr = np.asarray(arr)
        if tuple(arr.shape[-2:]) != self.in_shape:
            raise ValueError(f"expected an array ending in {self.in_shape}, got shape {arr.shape}")
        for step in self.steps:
            arr = step.run(arr, order)
        return arr

    def undo(self, arr: np.ndarray, order: int = 1) -> np.ndarray:
        """Map ``arr[..., H_out, W_out]`` back to the input grid ``[..., H_in, W_in]``."""
        arr = np.asarray(arr)
        if tuple(arr.shape[-2:]) != self.out_shape:
            raise ValueError(f"expected an array ending in {self.out_shape}, got shape {arr.shape}")
        for step in reversed(self.steps):
            arr = step.inverse().run(arr, order)
        return arr

    def inverse(self) -> "Transform2D":
        return Transform2D(self.out_shape, self.in_shape,
                           tuple(s.inverse() for s in reversed(self.steps)))

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly description (``Transform2D.from_dict`` rebuilds it)."""
        return {
            "in_shape": list(self.in_shape),
            "out_shape": list(self.out_shape),
            "steps": [
                {"kind": s.kind, "in_shape": list(s.in_shape), "out_shape": list(s.out_shape),
                 "offsets": [list(o) for o in s.offsets]}
                for s in self.steps
            ],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Transform2D":
        steps = tuple(
            Step(s["kind"], as_shape2d(s["in_shape"]), as_shape2d(s["out_shape"]),
                 tuple(tuple(int(v) for v in o) for o in s["offsets"]))  # type: ignore[arg-type]
            for s in d["steps"]
        )
        return cls(as_shape2d(d["in_shape"]), as_shape2d(d["out_shape"]), steps)


# ----------------------------------------------------------------------------- plans


def _centred_offsets(n: int, target: int) -> tuple[int, int]:
    d = target - n
    if d >= 0:
        return d // 2, d - d // 2
    c = -d
    return -(c // 2), -(c - c // 2)


def plan_pad_or_crop(in_shape: Sequence[int], size: int | Sequence[int]) -> Transform2D:
    """Centred zero-pad / centre-crop of ``in_shape`` to ``size`` (e.g. 240 -> 256 pads 8 + 8)."""
    src, dst = as_shape2d(in_shape), as_shape2d(size)
    if src == dst:
        return Transform2D.identity(src)
    offs = (_centred_offsets(src[0], dst[0]), _centred_offsets(src[1], dst[1]))
    return Transform2D(src, dst, (Step("padcrop", src, dst, offs),))


def plan_resize(in_shape: Sequence[int], size: int | Sequence[int],
                keep_aspect: bool = False) -> Transform2D:
    """Resize to ``size``; with ``keep_aspect``, fit inside ``size`` then zero-pad (centred)."""
    src, dst = as_shape2d(in_shape), as_shape2d(size)
    if src == dst:
        return Transform2D.identity(src)
    if not keep_aspect:
        return Transform2D(src, dst, (Step("resize", src, dst),))
    scale = min(dst[0] / src[0], dst[1] / src[1])
    fit = (min(dst[0], max(1, round(src[0] * scale))), min(dst[1], max(1, round(src[1] * scale))))
    first = (Transform2D.identity(src) if fit == src
             else Transform2D(src, fit, (Step("resize", src, fit),)))
    return first.then(plan_pad_or_crop(fit, dst))


def plan_fit_square(in_shape: Sequence[int], size: int) -> Transform2D:
    """The BraTS rule: zero-pad (centred) to ``size`` when the slice fits; otherwise zero-pad to a
    square of side ``max(H, W)`` first, then resize (anti-aliased) down to ``size``."""
    src = as_shape2d(in_shape)
    dst = as_shape2d(size)
    side = max(src)
    if side <= min(dst):
        return plan_pad_or_crop(src, dst)
    return plan_pad_or_crop(src, side).then(plan_resize((side, side), dst))


# ----------------------------------------------------------------------------- arrays


def pad_or_crop_2d(img: np.ndarray, size: int | Sequence[int]) -> tuple[np.ndarray, Transform2D]:
    """Centred zero-pad / centre-crop of the last two axes to ``size``.

    Returns ``(out, transform)``; ``transform.undo(result)`` maps back to the input grid.
    """
    img = np.asarray(img)
    if img.ndim < 2:
        raise ValueError(f"expected at least 2 dimensions, got shape {img.shape}")
    tf = plan_pad_or_crop(img.shape[-2:], size)
    return tf.apply(img), tf


def resize_2d(img: np.ndarray, size: int | Sequence[int], keep_aspect: bool = False,
              order: int = 1) -> tuple[np.ndarray, Transform2D]:
    """Anti-aliased resize of the last two axes to ``size``.

    With ``keep_aspect=True`` the image is scaled to fit inside ``size`` (aspect preserved) and
    zero-padded (centred) to it, e.g. 496x512 -> 248x256 -> 256x256. Returns ``(out, transform)``.
    """
    img = np.asarray(img)
    if img.ndim < 2:
        raise ValueError(f"expected at least 2 dimensions, got shape {img.shape}")
    tf = plan_resize(img.shape[-2:], size, keep_aspect=keep_aspect)
    return tf.apply(img, order=order), tf


def _padcrop(arr: np.ndarray, offsets) -> np.ndarray:
    sl = [slice(None)] * arr.ndim
    pad = [(0, 0)] * arr.ndim
    for k, (before, after) in enumerate(offsets):
        ax = arr.ndim - 2 + k
        n = arr.shape[ax]
        start = -before if before < 0 else 0
        stop = n + after if after < 0 else n
        sl[ax] = slice(start, stop)
        pad[ax] = (max(before, 0), max(after, 0))
    out = arr[tuple(sl)]
    if any(p != (0, 0) for p in pad):
        out = np.pad(out, pad, mode="constant", constant_values=0)
    else:
        out = out.copy()
    return out


def _resize(arr: np.ndarray, out_shape: tuple[int, int], order: int) -> np.ndarray:
    from skimage.transform import resize

    h, w = arr.shape[-2:]
    lead = arr.shape[:-2]
    flat = arr.reshape((-1, h, w))
    src_dtype = arr.dtype
    discrete = order == 0 and (src_dtype == bool or np.issubdtype(src_dtype, np.integer))
    if discrete:
        work_dtype, out_dtype = np.float32, src_dtype
    else:
        out_dtype = np.float64 if src_dtype == np.float64 else np.float32
        work_dtype = out_dtype
    anti_alias = order > 0 and (out_shape[0] < h or out_shape[1] < w)
    out = np.empty((flat.shape[0],) + tuple(out_shape), dtype=out_dtype)
    for i in range(flat.shape[0]):
        r = resize(flat[i].astype(work_dtype), out_shape, order=order, mode="reflect",
                   anti_aliasing=anti_alias, preserve_range=True)
        out[i] = np.rint(r) if discrete else r
    return out.reshape(lead + tuple(out_shape))
