"""napari layers for clinical exports: DICOM MR series and OCT volume scans.

The arrays come from the same core readers ``berdiff detect`` uses (:mod:`..core.io.dicom`,
:mod:`..core.io.oct_volume`):

* a DICOM folder (or a DICOM file: its series) -> one image layer per series, with the series'
  affine as geometry and metadata exactly like a NIfTI volume's (so the widget gives the model
  the same RAS slices as ``detect``), ``modality`` from the SeriesDescription (FLAIR, T1, T1ce,
  T2) and ``case`` = the folder, so that a 4-channel model picks the four series by itself;
  series that are not volumes are skipped with one warning naming them;
* an OCT volume -> the localizer (fundus) image and the B-scan positions on it (a shapes layer
  with each line's B-scan number; both hidden at first: they live in the en-face plane; with
  either selected, clicking a line moves the B-scan slider there: :mod:`.bscan_jump`), the
  B-scans as one ``(B-scan, depth, A-scan)`` layer scaled in mm, then its layer segmentations
  (boundary lines, one label per boundary) and pixel annotations (e.g. drusen) as Labels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.io.readers import DataError
from .layers import volume_layer_kwargs

LayerData = tuple


def _notify_warning(message: str) -> None:
    from napari.utils.notifications import show_warning

    show_warning(message)


def read_dicom_layers(path: str | Path) -> list[LayerData]:
    from ..core.io.dicom import load_series
    from ..core.io.dicom_channels import channel_of_series
    from ..core.io.dicom_scan import scan_dicom

    p = Path(path)
    folder = p.parent if p.is_file() else p
    case = folder.name
    out, skipped = [], []
    for s in scan_dicom(p):
        try:
            vol, affine, info = load_series(s)
        except DataError as err:
            skipped.append(err.reason)
            continue
        mod = channel_of_series(s.description, s.contrast_agent)
        orient, kw = volume_layer_kwargs(vol.shape, affine, info, str(folder), modality=mod,
                                         case=case, series=s.label)
        kw.update(name=f"{case} {s.label}", colormap="gray", visible=not out)
        out.append((np.ascontiguousarray(orient.to_layer(vol)), kw, "image"))
    if not out:
        raise DataError(p, "no DICOM series in it could be read: " + "; ".join(skipped))
    if skipped:
        _notify_warning(f"napari-berdiff: skipped {len(skipped)} DICOM series of {case}: "
                        + "; ".join(skipped))
    return out


def boundary_labels(layers: dict[str, np.ndarray], shape: tuple[int, int, int]) -> np.ndarray:
    """Layer boundaries (name -> (n, W) heights in pixels) drawn as one-pixel lines into a
    ``(n, H, W)`` label volume: boundary ``i`` (in the dict's order) gets label ``i + 1``."""
    n, H, W = shape
    lab = np.zeros(shape, dtype=np.uint8)
    k, x = np.meshgrid(np.arange(n), np.arange(W), indexing="ij")
    for i, h in enumerate(layers.values()):
        ok = np.isfinite(h)
        rows = np.rint(np.where(ok, h, -1)).astype(np.int64)
        ok &= (rows >= 0) & (rows < H)
        lab[k[ok], rows[ok], x[ok]] = i + 1
    return lab


def read_oct_volume_layers(path: str | Path) -> list[LayerData]:
    from ..core.io.oct_volume import load_oct_volume

    p = Path(path)
    ov = load_oct_volume(p)
    stem = p.name if p.is_dir() else p.stem
    unit = ov.unit if ov.unit in ("mm", "pixel") else None
    base = {"source": str(p), "modality": "oct", "oct_volume": True, "reader": ov.info.get("reader"),
            "spacing": list(ov.spacing), "unit": ov.unit, "laterality": ov.info.get("laterality")}
    geom = {"scale": tuple(ov.spacing), "axis_labels": ("b-scan", "depth", "a-scan")}
    if unit:
        geom["units"] = (unit,) * 3
    out: list[LayerData] = []
    if ov.localizer is not None:
        loc_geom = {"scale": tuple(ov.localizer_spacing), "axis_labels": ("y", "x")}
        loc_meta = dict(base, modality="localizer")
        out.append((ov.localizer, {"name": f"{stem} localizer", "colormap": "gray",
                                   "visible": False, "metadata": loc_meta, **loc_geom}, "image"))
        if ov.bscan_lines is not None:
            n = len(ov.bscan_lines)
            out.append(([line for line in ov.bscan_lines], {
                "name": f"{stem} B-scan positions", "shape_type": "line", "edge_color": "yellow",
                "edge_width": 1.0, "visible": False, "features": {
                    "bscan": np.arange(n),  # numbers on every 10th line and the last
                    "label": [str(k) if k % 10 == 0 or k == n - 1 else "" for k in range(n)]},
                "text": {"string": "{label}", "size": 8, "color": "yellow"},
                "metadata": dict(loc_meta, bscan_lines=True), **loc_geom}, "shapes"))
        from .bscan_jump import attach_current_viewer

        attach_current_viewer()  # a click on a line (or the localizer) jumps to that B-scan
    out.append((ov.data, {"name": stem, "colormap": "gray", "contrast_limits": (0.0, 1.0),
                          "metadata": base, **geom}, "image"))
    if ov.layers:
        names = {i + 1: name for i, name in enumerate(ov.layers)}
        out.append((boundary_labels(ov.layers, ov.data.shape), {
            "name": f"{stem} layer segmentation", "opacity": 0.8,
            "metadata": dict(base, annotation="layers", label_names=names), **geom}, "labels"))
    for name, m in ov.maps.items():
        out.append((m.astype(np.uint8), {"name": f"{stem} {name}", "opacity": 0.5,
                                         "metadata": dict(base, annotation=name), **geom},
                    "labels"))
    return out
