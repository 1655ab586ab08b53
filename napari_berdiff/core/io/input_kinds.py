"""Which clinical exports a path is, and how ``berdiff detect`` reads them (the same core readers
the napari reader uses): DICOM series folders and files (:mod:`.dicom`) and OCT volume exports
(:mod:`.oct_volume`). Cheap to call on every folder and file of a search: nothing is imported
from pydicom or eyepy until a file is read.

Kinds: ``"dicom"`` (a folder holding DICOM files, a study folder of series folders, or one DICOM
file: its series) and ``"oct_volume"`` (a VOL / E2E / FDA / .eye file, a Heyex XML or its
export folder).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .dicom_scan import dicom_folder_kind, is_dicom_file
from .oct_volume import OCT_MODEL_ORNT, UNSUPPORTED_OCT, oct_volume_kind
from .files import DataError, is_image, is_nifti

__all__ = ["InputItem", "CLINICAL_KINDS", "folder_input_kind", "file_input_kind", "unsupported_reason",
           "load_clinical", "model_order"]

CLINICAL_KINDS = ("dicom", "oct_volume")


@dataclass
class InputItem:
    """One unit of work: ``kind`` is ``brats_case``, ``nifti``, ``image``, ``dicom`` (a DICOM
    folder or file), ``oct_volume`` (an OCT volume export) or ``invalid``;
    ``name`` is the output stem (a relative path, ``/``-separated, for inputs found in folders)."""

    path: Path
    kind: str
    name: str = ""
    error: str | None = None
    info: dict | None = None  # what the reader found (DICOM series per channel, OCT spacing)
    # annotations that came with the input once read: name -> (n, H, W) bool per B-scan (OCT)
    annotations: dict | None = field(default=None, repr=False)

    @property
    def is_2d(self) -> bool:
        return self.kind == "image"


def folder_input_kind(folder: str | Path) -> str | None:
    """``"oct_volume"`` for a Heyex XML export folder, ``"dicom"`` for a DICOM series or study
    folder, else None."""
    d = Path(folder)
    if oct_volume_kind(d) == "xml":
        return "oct_volume"
    return "dicom" if dicom_folder_kind(d) else None


def file_input_kind(path: str | Path) -> str | None:
    """``"oct_volume"`` or ``"dicom"`` for a file of these kinds, else None (NIfTI and images
    are not clinical kinds)."""
    p = Path(path)
    if is_nifti(p) or is_image(p):
        return None
    kind = oct_volume_kind(p)
    if kind is not None and kind != "unsupported":
        return "oct_volume"
    return "dicom" if is_dicom_file(p) else None


def unsupported_reason(path: str | Path) -> str | None:
    """The one line for an OCT export of a vendor eyepy does not read, or None."""
    p = Path(path)
    what = UNSUPPORTED_OCT.get(p.suffix.lower())
    if what is None:
        return None
    return (f"{p.name} is {what}, which napari-berdiff cannot read (eyepy reads Heidelberg VOL, "
            "E2E and XML exports, Topcon FDA and .eye files)")


def load_clinical(kind: str, path: Path, channels: int, names: Sequence[str] | None
                  ) -> tuple[np.ndarray, np.ndarray, dict[str, Any], dict[str, np.ndarray]]:
    """``(data (C, X, Y, Z) float32, affine, info, annotations)`` of a DICOM or OCT volume
    input; ``annotations``: an OCT volume's pixel annotations (name -> (n, H, W) bool, the
    B-scans as displayed), else empty."""
    if kind == "dicom":
        from .dicom import load_dicom_input

        return (*load_dicom_input(path, names, channels), {})
    if kind == "oct_volume":
        from .oct_volume import load_oct_volume, oct_affine, oct_nifti_order

        if channels != 1:
            raise DataError(path, f"{path.name} is an OCT volume (one channel) but the model "
                                  f"expects {channels} channels")
        ov = load_oct_volume(path)
        info = dict(ov.info, spacing=list(ov.spacing), unit=ov.unit, n_bscans=int(len(ov.data)))
        return oct_nifti_order(ov.data)[None], oct_affine(ov.spacing), info, dict(ov.maps)
    raise DataError(path, f"unsupported input {path}")


def model_order(kind: str, affine) -> tuple[np.ndarray, dict]:
    """How the model sees a volume input: ``(ornt for orientation.to_canonical, provenance)``.
    Volumes from NIfTI, BraTS and DICOM: the closest RAS order, axial slices from the feet up.
    OCT volumes: each B-scan as displayed (rows = depth, columns = A-scans)."""
    from .orientation import axcodes, orientation_of

    if kind == "oct_volume":
        return OCT_MODEL_ORNT.copy(), {
            "file_voxel_order": "A-scan, depth, B-scan (NIfTI axes; LPS)",
            "model_voxel_order": "depth, A-scan, B-scan",
            "slices": "B-scans in the file's order (--slices counts them so)"}
    ornt = orientation_of(affine)
    return ornt, {"file_voxel_order": axcodes(ornt), "model_voxel_order": "RAS",
                  "slices": "axial, numbered from the feet up (--slices counts them so)"}
