"""Which clinical exports a path is, and how ``berdiff detect`` reads them (the same core readers
the napari reader uses): DICOM series folders and files (:mod:`.dicom`). Cheap to call on every
folder and file of a search: nothing is imported from pydicom until a file is read.

Kinds: ``"dicom"`` (a folder holding DICOM files, a study folder of series folders, or one DICOM
file: its series).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .dicom import dicom_folder_kind, is_dicom_file
from .readers import DataError, is_image, is_nifti

__all__ = ["CLINICAL_KINDS", "folder_input_kind", "file_input_kind", "unsupported_reason",
           "load_clinical", "model_order"]

CLINICAL_KINDS = ("dicom",)


def folder_input_kind(folder: str | Path) -> str | None:
    """``"dicom"`` for a DICOM series or study folder, else None."""
    d = Path(folder)
    return "dicom" if dicom_folder_kind(d) else None


def file_input_kind(path: str | Path) -> str | None:
    """``"dicom"`` for a DICOM file, else None (NIfTI and images are not clinical kinds)."""
    p = Path(path)
    if is_nifti(p) or is_image(p):
        return None
    return "dicom" if is_dicom_file(p) else None


def unsupported_reason(path: str | Path) -> str | None:
    """The one line for a known export napari-berdiff does not read, or None."""
    return None


def load_clinical(kind: str, path: Path, channels: int, names: Sequence[str] | None
                  ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """``(data (C, X, Y, Z) float32, affine, info)`` of a DICOM input."""
    if kind == "dicom":
        from .dicom import load_dicom_input

        return load_dicom_input(path, names, channels)
    raise DataError(path, f"unsupported input {path}")


def model_order(kind: str, affine) -> tuple[np.ndarray, dict]:
    """How the model sees a volume input: ``(ornt for orientation.to_canonical, provenance)``.
    Volumes from NIfTI, BraTS and DICOM: the closest RAS order, axial slices from the feet up."""
    from .orientation import axcodes, orientation_of

    ornt = orientation_of(affine)
    return ornt, {"file_voxel_order": axcodes(ornt), "model_voxel_order": "RAS",
                  "slices": "axial, numbered from the feet up (--slices counts them so)"}
