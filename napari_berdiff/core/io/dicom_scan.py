"""Finding DICOM files and grouping them into series: which files and folders are DICOM
(:func:`is_dicom_file`, :func:`dicom_folder_kind`: a series folder, or a study folder of series
folders) and :func:`scan_dicom`, the series under a path (grouped by SeriesInstanceUID, each
checked by :func:`.dicom_geometry.check_series`)."""

from __future__ import annotations

from pathlib import Path

from .dicom_geometry import check_series
from .dicom_series import DicomSeries, require_pydicom, short_reason
from .files import DataError, subfolders

__all__ = ["DICOM_EXTENSIONS", "is_dicom_file", "dicom_folder_kind", "scan_dicom"]

DICOM_EXTENSIONS = (".dcm", ".dicom", ".ima")
_MAGIC_OFFSET = 128


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
        subs = subfolders(d)
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


def _read_header(pydicom, f: Path):
    try:
        return pydicom.dcmread(str(f), stop_before_pixels=True, force=True)
    except Exception as e:  # InvalidDicomError, EOFError, struct errors, ...
        raise DataError(f, f"{f.name} is not a readable DICOM file ({type(e).__name__}: "
                           f"{short_reason(e)}); remove it or export the series again") from e


def scan_dicom(path: str | Path) -> list[DicomSeries]:
    """The series under ``path``: a series or study folder (see :func:`dicom_folder_kind`), or
    one DICOM file (then only the series it belongs to, from the files beside it). A file
    that cannot be read, or that stops before its series and geometry tags, raises DataError
    naming it (it could belong to any series). Each series is checked
    (:func:`.dicom_geometry.check_series`)."""
    pydicom = require_pydicom()
    p = Path(path)
    if p.is_file():
        files, only = _dicom_files(p.parent), p
    elif dicom_folder_kind(p) == "study":
        files, only = sorted(f for s in subfolders(p) for f in _dicom_files(s)), None
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
        s.problem = check_series(s)
    series.sort(key=lambda s: (s.number if s.number is not None else 1 << 30, s.description))
    return series
