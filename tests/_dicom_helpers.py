"""Writing DICOM MR series with pydicom's own writer, from a volume and its NIfTI affine.

``write_series(folder, vol, affine)`` writes one classic single-frame MR image per slice
(``vol[:, :, k]``: DICOM rows are the volume's second voxel axis, columns its first), with
ImagePositionPatient / ImageOrientationPatient / PixelSpacing derived from the RAS affine
(DICOM is LPS), int16 pixels and a RescaleSlope / RescaleIntercept that map them back to the
volume's values. ``transpose=True`` stores rows and columns the other way round and
``reverse=True`` numbers the slices from the other end, so the DICOM voxel order differs from
the NIfTI one while every voxel keeps its place in the patient.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
SLOPE, INTERCEPT = 0.5, -100.0


def _ds(x: float) -> str:
    from pydicom.valuerep import format_number_as_ds

    return format_number_as_ds(float(x))


def stored_volume(shape, seed=0) -> np.ndarray:
    """A volume whose values are exactly ``int16 * SLOPE + INTERCEPT`` (float32)."""
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 2000, size=shape).astype(np.int16)
    return (raw.astype(np.float32) * SLOPE + INTERCEPT).astype(np.float32)


def oblique_affine(deg=(20.0, -10.0, 5.0), zooms=(1.2, 0.9, 2.5), origin=(-30.0, 12.0, -40.0)):
    """A RAS affine rotated about all three axes (an oblique acquisition)."""
    a, b, c = np.deg2rad(deg)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    A = np.eye(4)
    A[:3, :3] = rz @ ry @ rx @ np.diag(zooms)
    A[:3, 3] = origin
    return A


def write_series(folder, vol, affine, description="T2 TSE AX", *, series_number=1,
                 transpose=False, reverse=False, study_uid=None, series_uid=None, frame_uid=None,
                 shuffle_names=True, seed=0, extra=None, prefix="IM") -> list[Path]:
    """Write ``vol`` (X, Y, Z; values ``int16 * SLOPE + INTERCEPT``) as a DICOM MR series (new
    Study-, Series- and FrameOfReferenceUIDs unless given)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vol = np.asarray(vol, np.float32)
    M = LPS @ np.asarray(affine, float)  # voxel -> LPS
    if transpose:  # rows along the first voxel axis, columns along the second
        vol = np.swapaxes(vol, 0, 1)
        M = M[:, [1, 0, 2, 3]]
    nz = vol.shape[2]
    if reverse:
        vol = vol[:, :, ::-1]
        flip = np.eye(4)
        flip[2, 2], flip[2, 3] = -1.0, nz - 1
        M = M @ flip
    col_step, row_step = M[:3, 0], M[:3, 1]  # along a row (column index), down a column
    dc, dr = np.linalg.norm(col_step), np.linalg.norm(row_step)
    iop = list(col_step / dc) + list(row_step / dr)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    frame_uid = frame_uid or generate_uid()
    rng = np.random.default_rng(seed)
    names = rng.permutation(nz) if shuffle_names else np.arange(nz)
    paths = []
    for k in range(nz):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"{prefix}{int(names[k]):05d}"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.Modality = "MR"
        ds.PatientName, ds.PatientID = "Test^Synthetic", "SYN001"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.SeriesDescription = description
        ds.SeriesNumber, ds.InstanceNumber = series_number, k + 1
        ds.ImageOrientationPatient = [_ds(v) for v in iop]
        ds.ImagePositionPatient = [_ds(v) for v in M @ np.array([0.0, 0.0, k, 1.0])][:3]
        ds.PixelSpacing = [_ds(dr), _ds(dc)]
        ds.SliceThickness = _ds(np.linalg.norm(M[:3, 2]))
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        sl = vol[:, :, k].T  # (rows, columns)
        ds.Rows, ds.Columns = sl.shape
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = _ds(SLOPE), _ds(INTERCEPT)
        raw = np.rint((sl - INTERCEPT) / SLOPE).astype(np.int16)
        ds.PixelData = np.ascontiguousarray(raw).tobytes()
        for key, value in (extra or {}).items():
            setattr(ds, key, value)
        ds.save_as(str(path), enforce_file_format=True)
        paths.append(path)
    return paths


def read_back(paths):
    """The files' datasets (for tests that edit a header)."""
    import pydicom

    return [pydicom.dcmread(str(p)) for p in paths]
