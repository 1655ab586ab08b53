"""Reading 2D images (PNG, JPEG, TIFF, BMP) as float32 in [0, 1].

Scaling by bit depth and the refusal of multi-page TIFFs: docs/design-notes.md ("Readers").
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from .files import DataError, check_file

__all__ = ["load_image_2d", "image_bit_depth", "to_unit_range"]

_GRAY_WEIGHTS = np.array([0.2125, 0.7154, 0.0721], dtype=np.float64)  # as skimage.color.rgb2gray


def load_image_2d(path: str | Path, *, gray: bool = True) -> np.ndarray:
    """Read a PNG / JPEG / TIFF / BMP image as float32 in [0, 1].

    Scaling (:func:`image_bit_depth`): 8-bit images are divided by 255. Wider unsigned integer
    images (and signed ones without negative values) are divided by ``2**b - 1`` for the
    smallest ``b`` of 8, 10, 12, 14, 16 bits that holds their maximum, so that 10-, 12- or
    14-bit data stored in 16-bit files is not read as a near-black image (a 16-bit file whose
    values stay <= 1023 is read as 10-bit data: / 1023; one with values above 16383 as 16-bit:
    / 65535). Float images already within [0, 1] are kept; other floats and signed integers with
    negative values are min-max scaled. With ``gray=True`` (default) RGB(A) is converted to gray
    with the ITU-R 709 weights (alpha dropped) and the result is ``(H, W)``; with ``gray=False``
    colour images are ``(H, W, 3)`` and gray ones ``(H, W)``.

    A TIFF must hold one image: multi-page TIFFs (stacks, e.g. OCT volumes) and TIFFs with
    separate colour planes are refused with a :class:`DataError` rather than read as colour.
    """
    p = check_file(path, "image file")
    if p.name.lower().endswith((".tif", ".tiff")):
        arr = _read_tiff(p)
    else:
        try:
            from skimage import io as skio

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                arr = np.asarray(skio.imread(str(p)))
        except Exception as e:
            raise _unreadable(p, e) from e
    if arr.dtype == object or arr.size == 0:
        raise DataError(p, f"cannot read {p.name} as an image (no pixel data)")
    while arr.ndim > 2 and arr.shape[0] == 1:
        arr = arr[0]
    colour = arr.ndim == 3 and arr.shape[-1] in (3, 4)
    if arr.ndim == 3 and arr.shape[-1] == 2:  # gray + alpha
        arr, colour = arr[..., 0], False
    if not (arr.ndim == 2 or colour):
        raise DataError(p, f"{p.name} has shape {arr.shape}: expected a single 2D image")
    x = to_unit_range(arr, p)
    if colour:
        x = x[..., :3]
        if gray:
            x = x @ _GRAY_WEIGHTS
    return np.clip(x, 0.0, 1.0).astype(np.float32)


def _multi_page_error(p: Path, n: int, shape) -> DataError:
    size = "x".join(str(int(s)) for s in shape)
    return DataError(p, f"{p.name} is a multi-page TIFF ({n} pages of {size}): expected a single "
                        "2D image; save each page (B-scan, slice) as its own file")


def _read_tiff(p: Path) -> np.ndarray:
    """One TIFF image with tifffile, telling pages from colour samples (skimage's imread turns a
    3- or 4-page stack into an RGB(A) image). Falls back to Pillow for compressions tifffile
    cannot decode without imagecodecs (LZW, JPEG)."""
    import tifffile

    try:
        with tifffile.TiffFile(str(p)) as tif:
            pages, n_main = tif.pages, 0
            for page in pages:  # full-resolution pages; stop at the second
                if not getattr(page, "is_reduced", False):
                    n_main += 1
                    if n_main > 1:
                        break
            series = tif.series[0]
            shape, axes = tuple(series.shape), series.axes
            if n_main > 1:
                yx = [s for s, a in zip(shape, axes) if a in "YX"]
                raise _multi_page_error(p, len(pages), yx or pages[0].shape)
            kept = [(s, a) for s, a in zip(shape, axes) if s > 1]
            if kept and kept[0][1] == "S":
                size = "x".join(str(s) for s, _ in kept[1:])
                raise DataError(p, f"{p.name} holds {kept[0][0]} planes of {size} stored "
                                   "separately (a planar TIFF, as tifffile.imwrite makes of a "
                                   "(3, H, W) stack): expected a single 2D image; save each "
                                   "plane as its own file, or colour as interleaved RGB")
            others = [a for _, a in kept if a not in "YXS"]
            if others:
                yx = [s for s, a in kept if a in "YX"]
                n = int(np.prod([s for s, a in kept if a not in "YXS"]))
                raise _multi_page_error(p, n, yx)
            return np.asarray(series.asarray())
    except DataError:
        raise
    except Exception as first:  # not a TIFF tifffile can decode: try Pillow
        return _read_with_pillow(p, first)


def _read_with_pillow(p: Path, first: Exception) -> np.ndarray:
    try:
        from PIL import Image

        with Image.open(str(p)) as im:
            n = int(getattr(im, "n_frames", 1))
            if n > 1:
                raise _multi_page_error(p, n, im.size[::-1])
            if im.mode == "P":
                im = im.convert("RGBA")
            return np.asarray(im)
    except DataError:
        raise
    except Exception:
        raise _unreadable(p, first) from first


def _unreadable(p: Path, e: Exception) -> DataError:
    reason = " ".join(str(e).split())  # one line (imageio's messages span several)
    if "backend" in reason.lower() or "pip install" in reason:
        # imageio found no plugin for the bytes: a corrupt or mislabelled file, not a missing
        # package (its advice to install one would mislead)
        reason = "no image format recognised in the file"
    elif len(reason) > 160:
        reason = reason[:157] + "..."
    return DataError(p, f"cannot read {p.name} as an image (corrupt or not an image: "
                        f"{type(e).__name__}: {reason})")


_BIT_DEPTHS = (8, 10, 12, 14, 16)


def image_bit_depth(arr: np.ndarray) -> int:
    """The bit depth an integer image is scaled by in :func:`load_image_2d`: 8 for 8-bit arrays,
    else the smallest of 8, 10, 12, 14, 16 bits that holds the maximum value (beyond 16 bits: the
    dtype's width)."""
    dt = np.dtype(arr.dtype)
    if dt.itemsize == 1:
        return 8
    top = int(arr.max()) if arr.size else 0
    for bits in _BIT_DEPTHS:
        if top < 2 ** bits:
            return bits
    return 8 * dt.itemsize - (1 if np.issubdtype(dt, np.signedinteger) else 0)


def to_unit_range(arr: np.ndarray, p: Path) -> np.ndarray:
    """Integer, boolean or float pixel values of the file ``p`` as float64 in [0, 1]."""
    if arr.dtype == bool:
        return arr.astype(np.float64)
    if np.issubdtype(arr.dtype, np.integer) and (
            np.issubdtype(arr.dtype, np.unsignedinteger) or arr.size == 0 or arr.min() >= 0):
        return arr.astype(np.float64) / float(2 ** image_bit_depth(arr) - 1)
    x = arr.astype(np.float64)
    if not np.all(np.isfinite(x)):
        raise DataError(p, f"{p.name} contains non-finite pixel values")
    if np.issubdtype(arr.dtype, np.floating) and x.min() >= 0.0 and x.max() <= 1.0:
        return x
    lo, hi = float(x.min()), float(x.max())  # signed integers with negatives / other floats
    return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
