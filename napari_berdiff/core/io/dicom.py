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

The pieces, by role: :mod:`.dicom_series` (a series and its headers), :mod:`.dicom_scan` (which
files are DICOM, grouping them into series), :mod:`.dicom_geometry` (the checks above and the
affine), :mod:`.dicom_channels` (matching series to channels); this module reads the pixels
(:func:`load_series`, :func:`load_dicom_input`) and gives every public name of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .dicom_channels import channel_of_series, check_one_study, match_channels
from .dicom_geometry import series_affine
from .dicom_scan import DICOM_EXTENSIONS, dicom_folder_kind, is_dicom_file, scan_dicom
from .dicom_series import DicomSeries, require_pydicom, short_reason
from .files import DataError
from .readers import grid_difference

# the package's DICOM API, whichever module of it holds each name
__all__ = ["DicomSeries", "DICOM_EXTENSIONS", "is_dicom_file", "dicom_folder_kind", "scan_dicom",
           "series_affine", "load_series", "channel_of_series", "match_channels",
           "check_one_study", "load_dicom_input", "require_pydicom"]


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
                               f"{short_reason(e)})") from e
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
