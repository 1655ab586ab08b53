"""DICOM MR series (classic single-frame images) into volumes with a NIfTI-style RAS affine.

Read with pydicom (an optional extra: ``pip install napari-berdiff[dicom]``). A folder may hold
one or several series, flat or one sub-folder per series (:func:`dicom_folder_kind`); files are
grouped by SeriesInstanceUID and each series becomes one volume:

* voxel order ``(i, j, k)`` = (DICOM column, DICOM row, slice), slices sorted along the normal
  of ImageOrientationPatient, so ``vol[:, :, k]`` is the k-th slice transposed;
* affine (voxel -> RAS mm): column ``i`` = first IOP triple x PixelSpacing[1], ``j`` = second
  triple x PixelSpacing[0], ``k`` = the step between consecutive ImagePositionPatient (a gantry
  tilt stays in the affine as a shear), origin = the first slice's position, with the LPS -> RAS
  sign flips of x and y. This is the affine the NIfTI path (orientation, field of view, outputs)
  then works with, exactly as for a NIfTI file;
* values: stored pixels x RescaleSlope + RescaleIntercept (per slice), float32.

Refused, each with one line naming the series or file (nothing is resampled): files that stop
early or lack the geometry tags, series that mix orientations or image sizes (a localizer),
several slices at one position (echoes, time points), missing slices (a gap of a whole number
of steps) and uneven spacing, multi-frame (enhanced) objects, colour images and compressed pixel
data without a decoder.

Series are matched to a model's channels by SeriesDescription (:func:`channel_of_series`):
FLAIR (``flair``, ``t2f``, dark fluid, TIRM), T1ce (a T1 with ``post``, ``+c``, ``gd``, ``ce``,
``contrast``, ... or a ContrastBolusAgent), T1, T2; they must come from one study and one frame
of reference (:func:`check_one_study`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .files import DataError
from .readers import grid_difference

__all__ = ["DicomSeries", "is_dicom_file", "dicom_folder_kind", "scan_dicom", "load_series",
           "channel_of_series", "match_channels", "check_one_study", "load_dicom_input",
           "require_pydicom"]

DICOM_EXTENSIONS = (".dcm", ".dicom", ".ima")
_MAGIC_OFFSET = 128
POSITION_TOL_MM = 0.01  # slice positions / steps that differ by less are the same
SPACING_RTOL = 0.01  # steps within 1% of the median step are even
_REQUIRED = ("SeriesInstanceUID", "ImageOrientationPatient", "ImagePositionPatient",
             "PixelSpacing", "Rows", "Columns")


def require_pydicom():
    """The pydicom module, or a DataError saying how to install it (one line)."""
    try:
        import pydicom
    except ImportError:
        raise DataError(None, "reading DICOM needs pydicom: pip install 'napari-berdiff[dicom]'"
                        ) from None
    return pydicom


def is_dicom_file(path: str | Path) -> bool:
    """A ``.dcm`` / ``.dicom`` / ``.ima`` file, or a file without an alphabetic extension (scanners
    write ``IM0001`` or UID names like ``1.2.840....5``) with ``DICM`` after its 128-byte
    preamble."""
    p = Path(path)
    if p.name.startswith("."):
        return False
    if p.name.lower().endswith(DICOM_EXTENSIONS):
        return p.is_file()
    if p.suffix[1:].isalpha():  # another format's extension (.png, .json, .nii...): not opened
        return False
    try:
        with open(p, "rb") as f:
            head = f.read(_MAGIC_OFFSET + 4)
    except OSError:
        return False
    return head[_MAGIC_OFFSET:] == b"DICM"


def _dicom_files(folder: Path) -> list[Path]:
    try:
        return sorted(f for f in folder.iterdir() if f.is_file() and is_dicom_file(f))
    except OSError:
        return []


def dicom_folder_kind(folder: str | Path) -> str | None:
    """``"series"`` when the folder holds DICOM files itself, ``"study"`` when it holds none
    but each of its sub-folders with files holds DICOM files only (one series folder each, as
    scanners and PACS export), else None."""
    d = Path(folder)
    if not d.is_dir():
        return None
    try:
        if any(f.is_file() and is_dicom_file(f) for f in d.iterdir()):
            return "series"
    except OSError:
        return None
    try:
        subs = [s for s in d.iterdir() if s.is_dir() and not s.name.startswith(".")]
    except OSError:
        return None
    with_files = []
    for s in subs:
        try:
            files = [f for f in s.iterdir() if f.is_file() and not f.name.startswith(".")]
        except OSError:
            return None
        if files:
            with_files.append(files)
    if with_files and all(all(is_dicom_file(f) for f in files) for files in with_files):
        return "study"
    return None


@dataclass
class DicomSeries:
    """One series: its files and headers in slice order once checked, or ``problem`` (why it is
    not a volume)."""

    uid: str
    files: list[Path] = field(default_factory=list)
    headers: list[Any] = field(default_factory=list)
    problem: str | None = None

    def _tag(self, key: str, default=None):
        return getattr(self.headers[0], key, default) if self.headers else default

    @property
    def description(self) -> str:
        return str(self._tag("SeriesDescription", "") or self._tag("ProtocolName", "") or "").strip()

    @property
    def number(self) -> int | None:
        n = self._tag("SeriesNumber")
        try:
            return None if n in (None, "") else int(n)
        except (TypeError, ValueError):
            return None

    @property
    def label(self) -> str:
        """``"5 T1 POST"`` (number and description) for messages and layer names."""
        parts = [str(self.number) if self.number is not None else "", self.description]
        return " ".join(p for p in parts if p) or self.uid[-12:]

    @property
    def contrast_agent(self) -> bool:
        return bool(str(self._tag("ContrastBolusAgent", "") or "").strip())

    @property
    def study_uid(self) -> str:
        return str(self._tag("StudyInstanceUID", "") or "").strip()

    @property
    def frame_uid(self) -> str:
        return str(self._tag("FrameOfReferenceUID", "") or "").strip()

    @property
    def frame_label(self) -> str:
        uid = self.frame_uid
        return f"FrameOfReferenceUID {'...' + uid[-12:] if len(uid) > 15 else uid}"

    @property
    def study_label(self) -> str:
        """``"study ...1234.5678 of 2024-05-06"``: the end of the StudyInstanceUID and the date."""
        date = str(self._tag("StudyDate", "") or "").strip()
        if len(date) == 8 and date.isdigit():
            date = f"{date[:4]}-{date[4:6]}-{date[6:]}"
        uid = self.study_uid or "(no StudyInstanceUID)"
        return f"study {'...' + uid[-12:] if len(uid) > 15 else uid}" + (f" of {date}" if date else "")


def _read_header(pydicom, f: Path):
    try:
        return pydicom.dcmread(str(f), stop_before_pixels=True, force=True)
    except Exception as e:  # InvalidDicomError, EOFError, struct errors, ...
        raise DataError(f, f"{f.name} is not a readable DICOM file ({type(e).__name__}: "
                           f"{_short(e)}); remove it or export the series again") from e


def _short(e: Exception, n: int = 140) -> str:
    s = " ".join(str(e).split())
    return s if len(s) <= n else s[: n - 3] + "..."


def scan_dicom(path: str | Path) -> list[DicomSeries]:
    """The series under ``path``: a series or study folder (see :func:`dicom_folder_kind`), or
    one DICOM file (then only the series it belongs to, from the files beside it). A file
    that cannot be read, or that stops before its series and geometry tags, raises DataError
    naming it (it could belong to any series). Each series is checked (:func:`_check_series`)."""
    pydicom = require_pydicom()
    p = Path(path)
    if p.is_file():
        files, only = _dicom_files(p.parent), p
    elif dicom_folder_kind(p) == "study":
        files, only = sorted(f for s in sorted(p.iterdir()) if s.is_dir() and not s.name.startswith(".")
                             for f in _dicom_files(s)), None
    else:
        files, only = _dicom_files(p), None
    if not files:
        raise DataError(p, f"no DICOM files in {p.name}")
    groups: dict[str, DicomSeries] = {}
    for f in files:
        ds = _read_header(pydicom, f)
        missing = [k for k in ("SeriesInstanceUID",) if not getattr(ds, k, None)]
        if missing:
            raise DataError(f, f"{f.name} has no {missing[0]}: a truncated file or not an image; "
                               "remove it or export the series again")
        s = groups.setdefault(str(ds.SeriesInstanceUID), DicomSeries(str(ds.SeriesInstanceUID)))
        s.files.append(f)
        s.headers.append(ds)
    series = list(groups.values())
    if only is not None:
        uid = str(_read_header(pydicom, only).SeriesInstanceUID)
        series = [s for s in series if s.uid == uid]
    for s in series:
        s.problem = _check_series(s)
    series.sort(key=lambda s: (s.number if s.number is not None else 1 << 30, s.description))
    return series


def _f(seq) -> np.ndarray:
    return np.asarray([float(v) for v in seq], dtype=np.float64)


def _check_series(s: DicomSeries) -> str | None:
    """Why ``s`` is not a volume (one clause), or None; sorts its files into slice order."""
    for f, ds in zip(s.files, s.headers):
        missing = [k for k in _REQUIRED if getattr(ds, k, None) in (None, "")]
        if missing:
            return (f"{f.name} has no {', '.join(missing)}: a truncated file, or a series that is "
                    "not a stack of slices")
        if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
            return ("it is a multi-frame (enhanced) DICOM object, which is not supported: export "
                    "classic single-frame images")
        if int(getattr(ds, "SamplesPerPixel", 1) or 1) != 1:
            return "it holds colour images, not MR magnitude slices"
    iops = np.array([_f(ds.ImageOrientationPatient) for ds in s.headers])
    if iops.shape[1] != 6 or np.abs(iops - iops[0]).max() > 1e-4:
        n = len({tuple(np.round(v, 3)) for v in iops}) if iops.shape[1] == 6 else 0
        return (f"its slices have {n or 'several'} orientations (a localizer, or several stacks "
                "in one series): not one volume")
    sizes = {(int(ds.Rows), int(ds.Columns)) for ds in s.headers}
    if len(sizes) > 1:
        return f"its slices differ in size ({', '.join(f'{r}x{c}' for r, c in sorted(sizes))})"
    spacings = np.array([_f(ds.PixelSpacing) for ds in s.headers])
    if spacings.shape[1] != 2 or np.abs(spacings - spacings[0]).max() > 1e-4 or spacings.min() <= 0:
        return "its slices differ in pixel spacing"
    normal = np.cross(iops[0, :3], iops[0, 3:])
    pos = np.array([_f(ds.ImagePositionPatient) for ds in s.headers])
    d = pos @ normal
    order = np.argsort(d, kind="stable")
    s.files = [s.files[i] for i in order]
    s.headers = [s.headers[i] for i in order]
    pos, d = pos[order], d[order]
    return _spacing_problem(pos, d)


def _spacing_problem(pos: np.ndarray, d: np.ndarray) -> str | None:
    if len(d) < 2:
        return None
    steps = np.diff(d)
    dup = int(np.count_nonzero(steps < POSITION_TOL_MM))
    if dup:
        return (f"{dup + 1} or more of its slices share a position (several echoes, time points "
                "or repeats in one series): not one volume")
    med = float(np.median(steps))
    tol = max(POSITION_TOL_MM, SPACING_RTOL * med)
    bad = np.flatnonzero(np.abs(steps - med) > tol)
    if bad.size:
        i = int(bad[0])
        ratio = steps[i] / med
        where = f"between slices {i + 1} and {i + 2} ({steps[i]:.3g} mm apart, the others {med:.3g} mm)"
        if ratio > 1.5 and abs(ratio - round(ratio)) * med <= tol:
            return (f"{int(round(ratio)) - 1} slice(s) missing {where}; refused, not "
                    "interpolated: export the complete series")
        return f"uneven slice spacing {where}; refused, not resampled"
    vec = np.diff(pos, axis=0)
    if np.abs(vec - vec.mean(axis=0)).max() > tol:
        return "its slice positions do not lie on one line: refused, not resampled"
    return None


def series_affine(s: DicomSeries) -> np.ndarray:
    """The RAS affine (voxel (column, row, slice) -> mm) of a checked series."""
    ds0 = s.headers[0]
    iop = _f(ds0.ImageOrientationPatient)
    dr, dc = _f(ds0.PixelSpacing)
    pos = np.array([_f(ds.ImagePositionPatient) for ds in s.headers])
    if len(pos) > 1:
        step = (pos[-1] - pos[0]) / (len(pos) - 1)
    else:
        thick = float(getattr(ds0, "SpacingBetweenSlices", 0) or getattr(ds0, "SliceThickness", 0)
                      or 1.0)
        step = np.cross(iop[:3], iop[3:]) * thick
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = iop[:3] * dc, iop[3:] * dr, step, pos[0]
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def load_series(s: DicomSeries) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """``(volume (X, Y, Z) float32, RAS affine, info)`` of one series; DataError when the series
    was refused or a file's pixel data cannot be decoded (truncated, or compressed without a
    decoder)."""
    pydicom = require_pydicom()
    folder = s.files[0].parent if s.files else None
    if s.problem:
        raise DataError(folder, f"DICOM series '{s.label}': {s.problem}")
    rows, cols = int(s.headers[0].Rows), int(s.headers[0].Columns)
    vol = np.empty((cols, rows, len(s.files)), dtype=np.float32)
    for k, f in enumerate(s.files):
        try:
            ds = pydicom.dcmread(str(f), force=True)
            arr = np.asarray(ds.pixel_array)
        except Exception as e:
            raise DataError(f, f"cannot read the pixels of {f.name} in DICOM series '{s.label}' "
                               f"(truncated, or compressed without a decoder: {type(e).__name__}: "
                               f"{_short(e)})") from e
        if arr.shape != (rows, cols):
            raise DataError(f, f"{f.name} in DICOM series '{s.label}' holds pixels of shape "
                               f"{arr.shape}, not {rows}x{cols}")
        slope = float(getattr(ds, "RescaleSlope", 1) or 1)
        inter = float(getattr(ds, "RescaleIntercept", 0) or 0)
        vol[:, :, k] = (arr.astype(np.float64) * slope + inter).T
    affine = series_affine(s)
    from nibabel.affines import voxel_sizes

    info = {"path": str(folder), "shape": [int(v) for v in vol.shape],
            "zooms": [float(z) for z in voxel_sizes(affine)], "dtype": "float32",
            "units": ["mm", "sec"], "descrip": s.label, "nan_count": 0,
            "series_description": s.description, "series_number": s.number,
            "series_uid": s.uid, "modality": str(getattr(s.headers[0], "Modality", "")),
            "files": len(s.files)}
    return vol, affine, info


# ----------------------------------------------------------------------------- channels

_POST_TOKENS = {"post", "postcontrast", "contrast", "gd", "gad", "gado", "gadolinium", "ce", "km",
                "+c", "+gd", "+km", "t1ce", "t1c", "t1gd", "t1post", "t1wce", "t1wpost"}


def _tokens(text: str) -> list[str]:
    return re.findall(r"\+?[a-z0-9]+", (text or "").lower())


def channel_of_series(description: str, contrast_agent: bool = False) -> str | None:
    """The BraTS channel (``flair``, ``t1``, ``t1ce``, ``t2``) a SeriesDescription names, or
    None. FLAIR wins over T2 (a FLAIR is T2-weighted; also ``t2f``, TIRM, dark fluid); a T1
    (``t1*``, MPRAGE, SPGR) with a contrast marker (``post``, ``+c``, ``c+``, ``gd``, ``ce``,
    ``contrast``, ``km``, ``t1ce``...) or a ContrastBolusAgent in its header is T1ce; T2* is
    not T2."""
    low = (description or "").lower()
    toks = _tokens(low)
    if any("flair" in t or t in ("t2f", "tirm", "darkfluid") for t in toks) or "dark fluid" in low:
        return "flair"
    if any(t.startswith("t1") or t in ("mprage", "spgr", "bravo") for t in toks):
        post = contrast_agent or "c+" in low or any(t in _POST_TOKENS for t in toks)
        return "t1ce" if post else "t1"
    if "t2*" in low or any(t in ("t2star", "t2s", "swi", "gre") for t in toks):
        return None
    if any(t.startswith("t2") for t in toks):
        return "t2"
    return None


def match_channels(series: Sequence[DicomSeries], channel_names: Sequence[str] | None,
                   n_channels: int, where: Path) -> list[DicomSeries]:
    """The series for each of the model's channels, in order; DataError naming what is missing
    or ambiguous. A one-channel model takes the series named like its channel, else the only
    usable one."""
    ok = [s for s in series if not s.problem]
    names = [str(n).lower() for n in (channel_names or [])]
    found = "; ".join(f"'{s.label}'" + (f" (refused: {s.problem})" if s.problem else "")
                      for s in series) or "none"
    by_channel: dict[str, list[DicomSeries]] = {}
    for s in ok:
        ch = channel_of_series(s.description, s.contrast_agent)
        if ch is not None:
            by_channel.setdefault(ch, []).append(s)
    if n_channels == 1 and len(ok) == 1 and not (len(names) == 1 and by_channel.get(names[0])):
        return ok
    if n_channels == 1 and len(ok) != 1 and not (len(names) == 1 and by_channel.get(names[0])):
        raise DataError(where, f"{where.name} holds {len(ok)} usable DICOM series ({found}); "
                               "the one-channel model takes one: give one series folder")
    if len(names) != n_channels:
        raise DataError(where, f"{where.name}: the model's {n_channels} channels have no names "
                               f"to match DICOM series by (found {found})")
    missing = [n for n in names if not by_channel.get(n)]
    if missing:
        titles = ", ".join(_title(n) for n in missing)
        raise DataError(where, f"{where.name}: no DICOM series for {titles} (matched by "
                               f"SeriesDescription; found {found})")
    twice = [n for n in names if len(by_channel[n]) > 1]
    if twice:
        n = twice[0]
        labels = ", ".join(f"'{s.label}'" for s in by_channel[n])
        raise DataError(where, f"{where.name}: {len(by_channel[n])} DICOM series could be "
                               f"{_title(n)} ({labels}); keep one in the folder")
    return [by_channel[n][0] for n in names]


def check_one_study(chosen: Sequence[DicomSeries], where: Path) -> None:
    """DataError naming two of the channels' series when they come from different studies
    (StudyInstanceUID) or different frames of reference (FrameOfReferenceUID: positions not in
    one patient coordinate system), where every series has the tag."""
    for key, what, label, advice in (
            ("study_uid", "different studies", "study_label",
             "the model's channels must be series of one study: give a folder of one study"),
            ("frame_uid", "different frames of reference", "frame_label",
             "their positions are not in one patient coordinate system: register them onto one "
             "grid first")):
        values = [getattr(s, key) for s in chosen]
        if len(chosen) < 2 or not all(values) or len(set(values)) == 1:
            continue
        a = chosen[0]
        b = next(s for s in chosen if getattr(s, key) != getattr(a, key))
        names = [f"'{s.label}' ({getattr(s, label)})" for s in (a, b)]
        raise DataError(where, f"{where.name}: DICOM series {names[0]} and {names[1]} come from "
                               f"{what}; {advice}")


def _title(name: str) -> str:
    return {"flair": "FLAIR", "t1": "T1", "t1ce": "T1ce", "t2": "T2"}.get(name, name)


def load_dicom_input(path: str | Path, channel_names: Sequence[str] | None, n_channels: int
                     ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """A DICOM folder (or file) as a model input: ``(volume (C, X, Y, Z) float32, affine of the
    first channel's series, info)``. The channels' series must share one voxel grid."""
    p = Path(path)
    chosen = match_channels(scan_dicom(p), channel_names, n_channels, p)
    check_one_study(chosen, p)
    vols, ref = [], None
    for s in chosen:
        vol, affine, info = load_series(s)
        if ref is None:
            ref = (s, vol.shape, affine, info)
        else:
            what = (f"shapes {vol.shape} vs {ref[1]}" if vol.shape != ref[1]
                    else grid_difference(affine, ref[2]))
            if what:
                raise DataError(p, f"DICOM series '{s.label}' and '{ref[0].label}' are not on "
                                   f"the same voxel grid ({what}); resample them onto one grid "
                                   "first")
        vols.append(vol)
    info = dict(ref[3], series=[{"label": s.label, "uid": s.uid} for s in chosen])
    return np.stack(vols), ref[2], info
