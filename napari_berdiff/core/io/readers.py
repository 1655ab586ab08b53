"""Readers for NIfTI volumes and BraTS cases, into plain numpy arrays.

Pure numpy / nibabel. Every failure a user can cause raises :class:`DataError` naming the file.
Channel order and array order: docs/design-notes.md ("Readers"). 2D images: :mod:`.images`;
normalisation: :mod:`.intensity`.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from .files import NIFTI_EXTENSIONS, DataError, check_file, is_nifti

__all__ = [
    "BRATS_MODALITIES",
    "BRATS_NAMING",
    "BRATS_CASE_SUFFIXES",
    "NAN_POLICIES",
    "brats_modality_of",
    "load_nifti",
    "find_brats_case",
    "load_brats_case",
    "grid_difference",
]

BRATS_MODALITIES: tuple[str, ...] = ("flair", "t1", "t1ce", "t2")
NAN_POLICIES = ("raise", "zero")


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
    if nan_policy not in NAN_POLICIES:
        raise ValueError(f"nan_policy must be one of {NAN_POLICIES}, got {nan_policy!r}")
    p = check_file(path, "NIfTI file")
    img, data = _read_nifti(p)
    if ndim is not None:
        while data.ndim > ndim and data.shape[-1] == 1:
            data = data[..., 0]
        if data.ndim != ndim:
            raise DataError(p, f"{p.name} has shape {tuple(data.shape)}: expected a {ndim}D image")
    data, n_bad = _apply_nan_policy(data, nan_policy, p)
    affine = img.affine
    affine = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
    return data, affine, _header_dict(img.header, p, data.shape, n_bad)


def _read_nifti(p: Path):
    """``(nibabel image, voxel data float32)`` of the file ``p``; DataError when unreadable."""
    import nibabel as nib

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
    return img, np.asarray(data, dtype=np.float32)


def _apply_nan_policy(data: np.ndarray, nan_policy: str, p: Path) -> tuple[np.ndarray, int]:
    """``(data, number of NaN/Inf values)``: refused (``"raise"``) or replaced by 0."""
    finite = np.isfinite(data)
    n_bad = int(data.size - np.count_nonzero(finite))
    if n_bad:
        n_nan = int(np.count_nonzero(np.isnan(data)))
        if nan_policy == "raise":
            raise DataError(p, f"{p.name} contains {n_bad} non-finite values (NaN: {n_nan}, "
                               f"Inf: {n_bad - n_nan}) out of {data.size}; replace them with 0 by "
                               "nan_policy='zero' (berdiff detect --nan-policy zero)")
        data = np.where(finite, data, np.float32(0))
    return data, n_bad


def _header_dict(hdr, p: Path, shape: tuple[int, ...], n_bad: int) -> dict[str, Any]:
    """The header dict :func:`load_nifti` returns."""
    try:
        units = tuple(hdr.get_xyzt_units())
    except Exception:
        units = ("unknown", "unknown")
    try:
        descrip = hdr["descrip"].item().decode("latin-1", "replace").strip("\x00 ")
    except Exception:
        descrip = ""
    return {
        "path": str(p),
        "shape": tuple(int(s) for s in shape),
        "zooms": tuple(float(z) for z in hdr.get_zooms()),
        "dtype": str(hdr.get_data_dtype()),
        "units": units,
        "descrip": descrip,
        "nan_count": n_bad,
        "nibabel": hdr,
    }


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
    found, naming = _scan_case_folder(root)
    out: dict[str, Path] = {}
    for mod in BRATS_MODALITIES + ("seg",):
        files = found.get(mod, [])
        if not files:
            if mod != "seg" or require_seg:
                expected = _expected_file(root, mod, naming)
                raise DataError(expected, f"missing BraTS modality '{mod}': expected "
                                          f"{expected.name} in {root}")
            continue
        if len(files) > 1:
            names = ", ".join(f.name for f in files)
            raise DataError(files[0], f"ambiguous BraTS modality '{mod}' in {root}: {names}")
        out[mod] = files[0]
    return out


def _scan_case_folder(root: Path) -> tuple[dict[str, list[Path]], tuple[str, str, str, str]]:
    """``(files per modality, naming)`` of the BraTS files in ``root``; ``naming`` is the
    folder's most common ``(case prefix, separator, style "2020"/"2023", extension)``. A lone
    other NIfTI file with "seg" in its name is taken as the segmentation when none is named so."""
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
    return found, (prefix, sep, style, ext)


def _expected_file(root: Path, mod: str, naming: tuple[str, str, str, str]) -> Path:
    """The file modality ``mod`` would have in ``root`` in the folder's ``naming``."""
    prefix, sep, style, ext = naming
    token = sep + (_BRATS2023_TOKENS[mod] if style == "2023" else mod)
    return root / f"{prefix}{token}{ext}"


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
