"""OCT volume scans from device exports, through eyepy (an optional extra:
``pip install napari-berdiff[oct]``).

Read: Heidelberg Heyex VOL (``.vol``), E2E (``.e2e``, its first volume) and XML exports (the
``.xml`` with its B-scan and localizer images, or the folder holding them), Topcon FDA (``.fda``;
eyepy reads it through oct-converter, which must be installed as well) and volumes saved by eyepy
(``EyeVolume.save``, ``.eye``). Everything comes back as an :class:`OctVolume`: the B-scans
``(n, H, W)`` in [0, 1] in the order eyepy gives them, the spacing (between B-scans, depth,
lateral; mm), the localizer (fundus) image with the B-scan positions on it, the layer
segmentations (boundary heights per B-scan and A-scan) and the pixel annotations (e.g. drusen).

Each B-scan is one model input, as displayed (rows = depth, columns = A-scans): exactly what a
single B-scan image gives. For ``berdiff detect`` the volume is the NIfTI-style array
``(A-scan, depth, B-scan)`` with :func:`oct_affine` (A-scans to the patient's left, depth
posterior, B-scans superior, so a NIfTI viewer shows B-scans on the slider with depth down) and
:data:`OCT_MODEL_ORNT`, which puts depth on the model's rows and A-scans on its columns.

Bad input, one line each and nothing read: a file that stops early or is not what its extension
says, B-scans of different sizes, an XML export whose images are missing, exports of devices eyepy
does not read (:data:`UNSUPPORTED_OCT`), a missing eyepy.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .files import DataError
from .images import to_unit_range

__all__ = ["OctVolume", "OCT_VOLUME_EXTENSIONS", "UNSUPPORTED_OCT", "OCT_MODEL_ORNT",
           "oct_volume_kind", "heyex_xml_in", "load_oct_volume", "oct_affine", "oct_nifti_order"]

OCT_VOLUME_EXTENSIONS = (".vol", ".e2e", ".fda", ".eye")
# exports eyepy does not read: extension -> what they are
UNSUPPORTED_OCT = {".img": "a Zeiss Cirrus export", ".fds": "a Topcon FDS file",
                   ".oct": "a Bioptigen or Optovue file", ".octv": "an Optovue file",
                   ".sdb": "a Heidelberg database file (export as E2E, VOL or XML)"}
_VOL_MAGIC = b"HSF-OCT-"
FORMAT_NAMES = {"vol": "a Heidelberg VOL", "e2e": "a Heidelberg E2E", "xml": "a Heyex XML export",
                "fda": "a Topcon FDA", "eye": "an eyepy .eye"}
# voxel axis -> model axis: (A-scan, depth, B-scan) -> rows depth, columns A-scan, slices B-scan
OCT_MODEL_ORNT = np.array([[1, 1], [0, 1], [2, 1]])


def _require_eyepy():
    try:
        import eyepy
    except ImportError:
        raise DataError(None, "reading OCT volumes needs eyepy: pip install 'napari-berdiff[oct]'"
                        ) from None
    return eyepy


def _is_heyex_xml(f: Path) -> bool:
    try:
        with open(f, "rb") as fh:
            head = fh.read(4096)
    except OSError:
        return False
    return b"<HEDX" in head


def heyex_xml_in(folder: str | Path) -> Path | None:
    """The Heyex XML of an XML export folder (the XML beside its images), or None."""
    try:
        xmls = [f for f in Path(folder).iterdir()
                if f.is_file() and f.suffix.lower() == ".xml" and not f.name.startswith(".")]
    except OSError:
        return None
    xmls = [f for f in sorted(xmls) if _is_heyex_xml(f)]
    return xmls[0] if len(xmls) == 1 else None


def oct_volume_kind(path: str | Path) -> str | None:
    """``"vol"``, ``"e2e"``, ``"fda"``, ``"eye"``, ``"xml"`` (a Heyex XML or its folder),
    ``"unsupported"`` (an OCT export eyepy does not read) or None (not an OCT volume)."""
    p = Path(path)
    if p.is_dir():
        return "xml" if heyex_xml_in(p) is not None else None
    ext = p.suffix.lower()
    if ext in OCT_VOLUME_EXTENSIONS:
        return ext[1:]
    if ext == ".xml":
        return "xml" if _is_heyex_xml(p) else None
    return "unsupported" if ext in UNSUPPORTED_OCT else None


@dataclass
class OctVolume:
    """An OCT volume scan: ``data`` (n, H, W) float32 in [0, 1]; ``spacing`` (between B-scans,
    depth, lateral) in ``unit`` (mm, or pixel when the file has no scale); ``localizer`` (h, w)
    float32 in [0, 1] or None, with ``localizer_spacing`` (row, col) and ``bscan_lines``
    (n, 2, 2): each B-scan's start and end as (row, col) localizer pixels; ``layers``: boundary
    name -> (n, W) heights in pixels (NaN where missing); ``maps``: annotation name ->
    (n, H, W) bool."""

    data: np.ndarray
    spacing: tuple[float, float, float]
    unit: str = "mm"
    localizer: np.ndarray | None = None
    localizer_spacing: tuple[float, float] = (1.0, 1.0)
    bscan_lines: np.ndarray | None = None
    layers: dict[str, np.ndarray] = field(default_factory=dict)
    maps: dict[str, np.ndarray] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


def _check_file(p: Path, kind: str) -> None:
    if not p.exists():
        raise DataError(p, f"OCT file not found: {p.name}")
    if kind == "vol":
        with open(p, "rb") as f:
            if f.read(len(_VOL_MAGIC)) != _VOL_MAGIC:
                raise DataError(p, f"{p.name} is not a Heidelberg VOL file (no HSF-OCT header): "
                                   "an export of another vendor? Supported: Heidelberg VOL, E2E, "
                                   "XML; Topcon FDA; eyepy .eye")


def _xml_images(xml: Path) -> tuple[list[Path], Path | None]:
    """The B-scan image files an XML export lists (in order) and its localizer image."""
    try:
        root = ET.parse(str(xml)).getroot()
    except (ET.ParseError, OSError) as e:
        raise DataError(xml, f"{xml.name} is not a readable Heyex XML file (truncated? {e})") from e
    body = root[0] if len(root) else root
    bscans, loc = [], None
    for img in body.findall(".//ImageType/.."):
        kind = (img.findtext("./ImageType/Type") or "").strip().upper()
        url = img.findtext("./ImageData/ExamURL")
        if not url:
            continue
        f = xml.parent / url.replace("\\", "/").split("/")[-1]
        if kind == "OCT":
            bscans.append(f)
        elif kind == "LOCALIZER":
            loc = f
    return bscans, loc


def _check_xml_export(xml: Path) -> None:
    """B-scan images present, readable and of one size (before eyepy stacks them)."""
    from PIL import Image

    bscans, loc = _xml_images(xml)
    if not bscans:
        raise DataError(xml, f"{xml.name} lists no OCT B-scans")
    missing = [f.name for f in bscans + ([loc] if loc else []) if not f.is_file()]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise DataError(xml, f"the XML export {xml.name} lists {missing[0]}{more}, which is not "
                             "in its folder")
    sizes = {}
    for f in bscans:
        try:
            with Image.open(f) as im:
                sizes.setdefault(im.size, []).append(f.name)
        except Exception as e:
            raise DataError(f, f"cannot read the B-scan image {f.name} ({type(e).__name__})") from e
    if len(sizes) > 1:
        (common, _), *rest = sorted(sizes.items(), key=lambda kv: -len(kv[1]))
        (size, names) = rest[0]
        raise DataError(xml, f"the B-scans of {xml.name} differ in size: {names[0]} is "
                             f"{size[0]}x{size[1]}, most are {common[0]}x{common[1]} (W x H); "
                             "a volume needs B-scans of one size")


def _import(p: Path, kind: str):
    eyepy = _require_eyepy()
    if kind == "eye":
        return eyepy.EyeVolume.load(p)
    if kind == "xml":
        return eyepy.import_heyex_xml(p)
    if kind == "vol":
        return eyepy.import_heyex_vol(p)
    if kind == "e2e":
        return eyepy.import_heyex_e2e(p)
    if kind == "fda":
        try:
            return eyepy.import_topcon_fda(p)
        except ImportError:
            raise DataError(p, "reading Topcon FDA needs oct-converter as well: "
                               "pip install oct-converter") from None
    raise DataError(p, f"not an OCT volume eyepy reads: {p.name}")


def load_oct_volume(path: str | Path) -> OctVolume:
    """Read an OCT volume export (see the module docstring); DataError naming the file when it
    cannot."""
    p = Path(path)
    kind = oct_volume_kind(p)
    if kind is None or kind == "unsupported":
        what = UNSUPPORTED_OCT.get(p.suffix.lower(), "not an OCT volume export")
        raise DataError(p, f"{p.name} is {what}, which napari-berdiff cannot read (eyepy reads "
                           "Heidelberg VOL, E2E and XML exports, Topcon FDA and .eye files)")
    if p.is_dir():
        p = heyex_xml_in(p)
    _check_file(p, kind)
    if kind == "xml":
        _check_xml_export(p)
    try:
        ev = _import(p, kind)
        raw = np.asarray(ev.data)
    except DataError:
        raise
    except Exception as e:  # construct StreamError, zipfile.BadZipFile, ValueError, KeyError...
        reason = " ".join(str(e).split())[:160]
        raise DataError(p, f"cannot read {p.name} as {FORMAT_NAMES[kind]} file (truncated or "
                           f"corrupt: {type(e).__name__}: {reason})") from e
    if raw.ndim != 3 or min(raw.shape) < 1:
        raise DataError(p, f"{p.name} holds an array of shape {raw.shape}, not B-scans")
    return _from_eyevolume(ev, raw, p, kind)


def _from_eyevolume(ev, raw: np.ndarray, p: Path, kind: str) -> OctVolume:
    data = to_unit_range(np.nan_to_num(raw.astype(np.float64) if raw.dtype.kind == "f" else raw),
                          p).astype(np.float32)
    unit = str(ev.scale_unit or "pixel")
    spacing = tuple(float(v) if v and np.isfinite(v) else 1.0
                    for v in (ev.scale_z, ev.scale_y, ev.scale_x))
    if unit.lower() in ("µm", "um"):
        spacing, unit = tuple(v / 1000.0 for v in spacing), "mm"
    out = OctVolume(np.clip(data, 0.0, 1.0), spacing, unit,  # type: ignore[arg-type]
                    info={"path": str(p), "reader": f"eyepy {kind}", "laterality":
                          str(ev.meta.get("laterality", "") or "")})
    loc = getattr(ev, "localizer", None)
    if loc is not None:
        out.localizer = np.clip(to_unit_range(np.asarray(loc.data), p), 0, 1).astype(np.float32)
        out.localizer_spacing = (float(loc.scale_y), float(loc.scale_x))
        out.bscan_lines = _bscan_lines(ev, loc)
    for name, ann in ev.layers.items():
        h = np.asarray(ann.data, dtype=np.float32)
        if h.shape == (data.shape[0], data.shape[2]) and np.isfinite(h).any():
            out.layers[str(name)] = h
    for name, ann in ev.volume_maps.items():
        m = np.asarray(ann.data)
        if m.shape == data.shape:
            out.maps[str(name)] = m.astype(bool)
    return out


def _bscan_lines(ev, loc) -> np.ndarray | None:
    """Each B-scan's start and end on the localizer, (row, col) pixels; as eyepy draws them."""
    scale = np.array([float(loc.scale_x), float(loc.scale_y)])
    offset = np.array([15.0, 15.0]) if str(loc.scale_unit) == "°" else np.zeros(2)
    lines = []
    try:
        for m in ev.meta["bscan_meta"]:
            xy = [(np.asarray(m[k], float) + offset) / scale for k in ("start_pos", "end_pos")]
            lines.append([[xy[0][1], xy[0][0]], [xy[1][1], xy[1][0]]])
    except (KeyError, TypeError, ValueError):
        return None
    arr = np.asarray(lines, dtype=np.float64)
    return arr if arr.shape == (len(ev), 2, 2) and np.all(np.isfinite(arr)) else None


def oct_affine(spacing: tuple[float, float, float]) -> np.ndarray:
    """The NIfTI affine of the ``(A-scan, depth, B-scan)`` array of a volume with ``spacing``
    (between B-scans, depth, lateral): A-scans to the left, depth posterior, B-scans superior."""
    sz, sy, sx = (float(v) for v in spacing)
    return np.diag([-sx, -sy, sz, 1.0])


def oct_nifti_order(data: np.ndarray) -> np.ndarray:
    """``(..., n, H, W)`` B-scans -> the ``(..., W, H, n)`` array :func:`oct_affine` describes, and
    back (the axis reversal is its own inverse)."""
    nd = data.ndim
    return np.moveaxis(data, (nd - 3, nd - 2, nd - 1), (nd - 1, nd - 2, nd - 3))
