"""napari layers for clinical exports: DICOM MR series.

The arrays come from the same core reader ``berdiff detect`` uses (:mod:`..core.io.dicom`):

* a DICOM folder (or a DICOM file: its series) -> one image layer per series, with the series'
  affine as geometry and metadata exactly like a NIfTI volume's (so the widget gives the model
  the same RAS slices as ``detect``), ``modality`` from the SeriesDescription (FLAIR, T1, T1ce,
  T2) and ``case`` = the folder, so that a 4-channel model picks the four series by itself;
  series that are not volumes are skipped with one warning naming them.
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
    from ..core.io.dicom import channel_of_series, load_series, scan_dicom

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
