"""The geometry of a DICOM series: whether its slices make one volume (:func:`check_series`:
one orientation, size and pixel spacing, positions evenly spaced on one line; it sorts the files
into slice order) and its RAS affine (:func:`series_affine`; see :mod:`.dicom`)."""

from __future__ import annotations

import numpy as np

from .dicom_series import DicomSeries

__all__ = ["POSITION_TOL_MM", "SPACING_RTOL", "check_series", "series_affine"]

POSITION_TOL_MM = 0.01  # slice positions / steps that differ by less are the same
SPACING_RTOL = 0.01  # steps within 1% of the median step are even
_REQUIRED = ("SeriesInstanceUID", "ImageOrientationPatient", "ImagePositionPatient",
             "PixelSpacing", "Rows", "Columns")


def _f(seq) -> np.ndarray:
    return np.asarray([float(v) for v in seq], dtype=np.float64)


def check_series(s: DicomSeries) -> str | None:
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
