"""Readers for NIfTI volumes, BraTS cases and 2D images, into plain numpy arrays.

Pure numpy / nibabel / scikit-image. Every failure a user can cause raises :class:`DataError`
naming the file. Channel order, array order and :func:`normalize_volume`: docs/design-notes.md
("Readers") and docs/method.md §9.
"""

from __future__ import annotations

import re
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from .geometry import (Transform2D, pad_or_crop_2d, plan_fit_square, plan_pad_or_crop,
                       plan_resize, resize_2d)

__all__ = [
    "DataError",
    "BRATS_MODALITIES",
    "BRATS_NAMING",
    "BRATS_CASE_SUFFIXES",
    "brats_modality_of",
    "IMAGE_EXTENSIONS",
    "NIFTI_EXTENSIONS",
    "load_nifti",
    "find_brats_case",
    "load_brats_case",
    "grid_difference",
    "load_image_2d",
    "image_bit_depth",
    "normalize_volume",
    "is_nifti",
    "is_image",
    # re-exported from .geometry
    "Transform2D",
    "pad_or_crop_2d",
    "resize_2d",
    "plan_pad_or_crop",
    "plan_resize",
    "plan_fit_square",
]

BRATS_MODALITIES: tuple[str, ...] = ("flair", "t1", "t1ce", "t2")
NIFTI_EXTENSIONS: tuple[str, ...] = (".nii.gz", ".nii")
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
NAN_POLICIES = ("raise", "zero")


class DataError(ValueError):
    """A user-facing data problem; ``str(err)`` always names the file (``err.path``)."""

    def __init__(self, path: str | Path | None, message: str):
        self.path = Path(path) if path is not None else None
        self.reason = message
        where = f" [file: {self.path}]" if self.path is not None else ""
        super().__init__(f"{message}{where}")

    def __reduce__(self):  # picklable across worker processes
        return (type(self), (self.path, self.reason))


def is_nifti(path: str | Path) -> bool:
    return str(path).lower().endswith(NIFTI_EXTENSIONS)


def is_mask_folder(path: str | Path) -> bool:
    """A folder of ground-truth masks in an OCT2017-style tree (``<CLASS>_masks/`` beside
    ``<CLASS>/``): labels, not B-scans."""
    return Path(path).name.lower().endswith("_masks")


def is_image(path: str | Path) -> bool:
    return str(path).lower().endswith(IMAGE_EXTENSIONS)


def _check_file(path: str | Path, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise DataError(p, f"{what} not found: {p.name}")
    if not p.is_file():
        raise DataError(p, f"{what} is not a file: {p.name}")
    return p


# ----------------------------------------------------------------------------- NIfTI


def load_nifti(path: str | Path, *, nan_policy: str = "raise",
               ndim: int | None = None) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Read a NIfTI file into ``(data float32, affine (4, 4) float64, header dict)``.

    ``nan_policy``: ``"raise"`` (default) refuses NaN/Inf values with a :class:`DataError` that
    counts them; ``"zero"`` replaces them with 0. ``ndim``: require this many dimensions
    (trailing singleton axes beyond it are squeezed, so ``(X, Y, Z, 1)`` passes as 3D).
    The header dict has ``path``, ``shape``, ``zooms``, ``dtype`` (on disk), ``units``,
    ``descrip``, ``nan_count`` and ``nibabel`` (the raw nibabel header).
    """
    import nibabel as nib

    if nan_policy not in NAN_POLICIES:
        raise ValueError(f"nan_policy must be one of {NAN_POLICIES}, got {nan_policy!r}")
    p = _check_file(path, "NIfTI file")
    try:
        img = nib.load(str(p))
    except Exception as e:  # ImageFileError, BadGzipFile, OSError, EOFError, ...
        raise DataError(p, f"cannot read {p.name} as NIfTI (corrupt or not a NIfTI file: "
                           f"{type(e).__name__}: {e})") from e
    try:
        data = img.get_fdata(dtype=np.float32, caching="unchanged")
    except Exception as e:  # truncated gzip -> EOFError / zlib.error; short file -> ValueError
        raise DataError(p, f"cannot read the voxel data of {p.name} (truncated or corrupt file: "
                           f"{type(e).__name__}: {e})") from e
    data = np.asarray(data, dtype=np.float32)
    if ndim is not None:
        while data.ndim > ndim and data.shape[-1] == 1:
            data = data[..., 0]
        if data.ndim != ndim:
            raise DataError(p, f"{p.name} has shape {tuple(data.shape)}: expected a {ndim}D image")
    finite = np.isfinite(data)
    n_bad = int(data.size - np.count_nonzero(finite))
    if n_bad:
        n_nan = int(np.count_nonzero(np.isnan(data)))
        if nan_policy == "raise":
            raise DataError(p, f"{p.name} contains {n_bad} non-finite values (NaN: {n_nan}, "
                               f"Inf: {n_bad - n_nan}) out of {data.size}; replace them with 0 by "
                               "nan_policy='zero' (berdiff detect --nan-policy zero)")
        data = np.where(finite, data, np.float32(0))
    affine = img.affine
    affine = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
    hdr = img.header
    try:
        units = tuple(hdr.get_xyzt_units())
    except Exception:
        units = ("unknown", "unknown")
    try:
        descrip = hdr["descrip"].item().decode("latin-1", "replace").strip("\x00 ")
    except Exception:
        descrip = ""
    header = {
        "path": str(p),
        "shape": tuple(int(s) for s in data.shape),
        "zooms": tuple(float(z) for z in hdr.get_zooms()),
        "dtype": str(hdr.get_data_dtype()),
        "units": units,
        "descrip": descrip,
        "nan_count": n_bad,
        "nibabel": hdr,
    }
    return data, affine, header


# ----------------------------------------------------------------------------- BraTS

# File-name tokens of each modality: BraTS2020/2021 (``_flair``, ``_t1``, ``_t1ce``, ``_t2``,
# ``_seg``), BraTS2023+ (``-t2f``, ``-t1n``, ``-t1c``, ``-t2w``, ``-seg``) and the TCIA ``_t1Gd``.
BRATS_NAMING: dict[str, tuple[str, ...]] = {
    "flair": ("flair", "t2f"),
    "t1": ("t1", "t1n"),
    "t1ce": ("t1ce", "t1gd", "t1c"),
    "t2": ("t2", "t2w"),
    "seg": ("seg",),
}
# tokens that may follow a "-" as well as a "_" (BraTS2023 style); the older, shorter tokens
# (``t1``, ``t2``) only after "_", so that e.g. ``scan-t1.nii.gz`` does not look like a BraTS case
_DASH_TOKENS: tuple[str, ...] = ("t2f", "t1n", "t1c", "t2w", "seg")
_BRATS2023_TOKENS = {"flair": "t2f", "t1": "t1n", "t1ce": "t1c", "t2": "t2w", "seg": "seg"}
_TOKEN_TO_MOD = {tok: mod for mod, toks in BRATS_NAMING.items() for tok in toks}


def _alternation(tokens) -> str:
    return "|".join(sorted(tokens, key=len, reverse=True))


_BRATS_RE = re.compile(
    rf"^(?P<case>.+?)(?:_(?P<tok>{_alternation(_TOKEN_TO_MOD)})"
    rf"|-(?P<dtok>{_alternation(_DASH_TOKENS)}))(?P<ext>\.nii(?:\.gz)?)$", re.IGNORECASE)

#: Lower-case endings of the image files of a BraTS case (not the segmentation); a folder holding
#: a file that ends so is a BraTS case folder (``name.lower().endswith(BRATS_CASE_SUFFIXES)``).
BRATS_CASE_SUFFIXES: tuple[str, ...] = tuple(
    f"{sep}{tok}{ext}" for mod in BRATS_MODALITIES for tok in BRATS_NAMING[mod]
    for sep in (("_", "-") if tok in _DASH_TOKENS else ("_",)) for ext in NIFTI_EXTENSIONS)


def brats_modality_of(name: str) -> str | None:
    """The modality (``flair``, ``t1``, ``t1ce``, ``t2`` or ``seg``) a BraTS file name denotes,
    in any of the supported namings, or None."""
    m = _BRATS_RE.match(Path(name).name)
    return None if m is None else _TOKEN_TO_MOD[(m["tok"] or m["dtok"]).lower()]


def find_brats_case(folder: str | Path, *, require_seg: bool = False) -> dict[str, Path]:
    """Locate a BraTS case's files: ``{"flair", "t1", "t1ce", "t2"[, "seg"]} -> path``.

    Accepts ``.nii.gz`` or ``.nii`` files named (case-insensitively)

    * BraTS2020/2021: ``<case>_flair``, ``_t1``, ``_t1ce``, ``_t2``, ``_seg``
      (``BraTS20_Training_NNN_*``, ``BraTS2021_NNNNN_*``); ``_t1Gd`` / ``_t1c`` for T1ce;
    * BraTS2023 and later: ``<case>-t2f`` (FLAIR), ``-t1n`` (T1), ``-t1c`` (T1ce, post-contrast),
      ``-t2w`` (T2), ``-seg`` (``BraTS-GLI-00000-000-*``; ``_`` instead of ``-`` works too).

    A segmentation under another name containing "seg" (as in BraTS2020 case 355) is found too.
    A missing modality raises :class:`DataError` naming the expected file (in the naming the
    folder uses).
    """
    root = Path(folder)
    if not root.is_dir():
        raise DataError(root, f"BraTS case folder not found: {root}")
    found: dict[str, list[Path]] = {}
    prefixes: Counter[str] = Counter()
    exts: Counter[str] = Counter()
    styles: Counter[str] = Counter()
    leftovers = []
    for f in sorted(root.iterdir()):
        if not f.is_file():
            continue
        m = _BRATS_RE.match(f.name)
        if m is None:
            if is_nifti(f):
                leftovers.append(f)
            continue
        tok = (m["tok"] or m["dtok"]).lower()
        mod = _TOKEN_TO_MOD[tok]
        found.setdefault(mod, []).append(f)
        prefixes[m["case"]] += 1
        exts[m["ext"].lower()] += 1
        if mod != "seg":
            new = tok == _BRATS2023_TOKENS[mod]
            styles[("-" if m["dtok"] else "_", "2023" if new else "2020")] += 1
    if "seg" not in found:
        segs = [f for f in leftovers if "seg" in f.name.lower()]
        if len(segs) == 1:
            found["seg"] = segs
    prefix = prefixes.most_common(1)[0][0] if prefixes else root.name
    ext = exts.most_common(1)[0][0] if exts else ".nii.gz"
    sep, style = styles.most_common(1)[0][0] if styles else ("_", "2020")
    out: dict[str, Path] = {}
    for mod in BRATS_MODALITIES + ("seg",):
        files = found.get(mod, [])
        if not files:
            if mod != "seg" or require_seg:
                token = sep + (_BRATS2023_TOKENS[mod] if style == "2023" else mod)
                expected = root / f"{prefix}{token}{ext}"
                raise DataError(expected, f"missing BraTS modality '{mod}': expected "
                                          f"{expected.name} in {root}")
            continue
        if len(files) > 1:
            names = ", ".join(f.name for f in files)
            raise DataError(files[0], f"ambiguous BraTS modality '{mod}' in {root}: {names}")
        out[mod] = files[0]
    return out


#: Largest difference between the affines of one case's files that still counts as the same grid
#: (``np.allclose(a, b, rtol=AFFINE_RTOL, atol=AFFINE_ATOL)``; millimetres).
AFFINE_ATOL = 1e-3
AFFINE_RTOL = 1e-4


def grid_difference(affine: np.ndarray, ref_affine: np.ndarray) -> str | None:
    """How two NIfTI affines differ as voxel grids (for messages), or None when they are the same
    grid within ``AFFINE_RTOL`` / ``AFFINE_ATOL``."""
    affine, ref_affine = np.asarray(affine, float), np.asarray(ref_affine, float)
    if affine.shape == ref_affine.shape and np.allclose(affine, ref_affine, rtol=AFFINE_RTOL,
                                                        atol=AFFINE_ATOL):
        return None
    if affine.shape != ref_affine.shape:
        return f"affines of shape {affine.shape} vs {ref_affine.shape}"
    from nibabel.affines import voxel_sizes

    zooms, ref_zooms = voxel_sizes(affine), voxel_sizes(ref_affine)
    if not np.allclose(zooms, ref_zooms, rtol=AFFINE_RTOL, atol=AFFINE_ATOL):
        return (f"voxel sizes {'x'.join(f'{z:g}' for z in zooms)} mm vs "
                f"{'x'.join(f'{z:g}' for z in ref_zooms)} mm")
    return f"affines differ by up to {float(np.abs(affine - ref_affine).max()):.4g} mm"


def _check_same_grid(path: Path, affine: np.ndarray, ref: Path, ref_affine: np.ndarray) -> None:
    what = grid_difference(affine, ref_affine)
    if what:
        raise DataError(path, f"{path.name} and {ref.name} are not on the same voxel grid "
                              f"({what}); resample the case's files onto one grid first")


def load_brats_case(folder: str | Path, *, nan_policy: str = "raise", require_seg: bool = False,
                    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Load a BraTS case folder: ``(volume (4, X, Y, Z) float32, seg (X, Y, Z) uint8 | None,
    affine)``, channels in :data:`BRATS_MODALITIES` order, raw intensities (not normalised).

    All files must share the array shape and the affine (within :data:`AFFINE_ATOL` mm /
    :data:`AFFINE_RTOL` relative), else :class:`DataError` names the two files. The segmentation
    keeps the raw labels of the file (BraTS2020/2021: 1 necrotic core, 2 oedema, 4 enhancing
    tumour; BraTS2023: 1, 2, 3 = enhancing tumour); ``seg > 0`` is the whole-tumour mask
    in either naming.
    """
    files = find_brats_case(folder, require_seg=require_seg)
    vol = None
    affine = None
    ref = None
    for c, mod in enumerate(BRATS_MODALITIES):
        data, aff, _ = load_nifti(files[mod], nan_policy=nan_policy, ndim=3)
        if vol is None:
            vol = np.empty((len(BRATS_MODALITIES),) + data.shape, dtype=np.float32)
            affine, ref = aff, files[mod]
        elif data.shape != vol.shape[1:]:
            raise DataError(files[mod], f"{files[mod].name} has shape {data.shape}, but "
                                        f"{ref.name} has {vol.shape[1:]}")
        else:
            _check_same_grid(files[mod], aff, ref, affine)
        vol[c] = data
    seg = None
    if "seg" in files:
        s, s_aff, _ = load_nifti(files["seg"], nan_policy=nan_policy, ndim=3)
        if s.shape != vol.shape[1:]:
            raise DataError(files["seg"], f"{files['seg'].name} has shape {s.shape}, but "
                                          f"{ref.name} has {vol.shape[1:]}")
        _check_same_grid(files["seg"], s_aff, ref, affine)
        r = np.rint(s)
        if np.any(np.abs(s - r) > 1e-3) or r.min() < 0 or r.max() > 255:
            raise DataError(files["seg"], f"{files['seg'].name} is not a label image "
                                          "(expected integers 0..255)")
        seg = r.astype(np.uint8)
    return vol, seg, affine


# ----------------------------------------------------------------------------- 2D images

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
    p = _check_file(path, "image file")
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
    x = _to_unit_range(arr, p)
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


def _to_unit_range(arr: np.ndarray, p: Path) -> np.ndarray:
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


# ----------------------------------------------------------------------------- normalisation


def normalize_volume(vol: np.ndarray, low: float = 0.5, high: float = 99.5, *,
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
