"""What kind of file a path is, and the one error type for bad input data.

Every failure a user can cause in the readers raises :class:`DataError` naming the file.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["DataError", "subfolders", "NIFTI_EXTENSIONS", "IMAGE_EXTENSIONS", "is_nifti", "is_image",
           "is_mask_folder", "check_file", "strip_extension"]

NIFTI_EXTENSIONS: tuple[str, ...] = (".nii.gz", ".nii")
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


class DataError(ValueError):
    """A user-facing data problem; ``str(err)`` always names the file (``err.path``)."""

    def __init__(self, path: str | Path | None, message: str):
        self.path = Path(path) if path is not None else None
        self.reason = message
        where = f" [file: {self.path}]" if self.path is not None else ""
        super().__init__(f"{message}{where}")

    def __reduce__(self):  # picklable across worker processes
        return (type(self), (self.path, self.reason))


def is_nifti(path: str | Path) -> bool:
    return str(path).lower().endswith(NIFTI_EXTENSIONS)


def is_mask_folder(path: str | Path) -> bool:
    """A folder of ground-truth masks in an OCT2017-style tree (``<CLASS>_masks/`` beside
    ``<CLASS>/``): labels, not B-scans."""
    return Path(path).name.lower().endswith("_masks")


def is_image(path: str | Path) -> bool:
    return str(path).lower().endswith(IMAGE_EXTENSIONS)


def check_file(path: str | Path, what: str) -> Path:
    """``path`` as a Path; DataError when it is missing or not a file."""
    p = Path(path)
    if not p.exists():
        raise DataError(p, f"{what} not found: {p.name}")
    if not p.is_file():
        raise DataError(p, f"{what} is not a file: {p.name}")
    return p




def subfolders(folder: str | Path) -> list[Path]:
    """The folder's sub-folders, hidden ones (``.name``) left out, sorted; OSError as iterdir."""
    return sorted(d for d in Path(folder).iterdir() if d.is_dir() and not d.name.startswith("."))


def strip_extension(name: str) -> str:
    """``name`` without its NIfTI (``.nii.gz``, ``.nii``) or other extension."""
    low = name.lower()
    for ext in NIFTI_EXTENSIONS:
        if low.endswith(ext):
            return name[: -len(ext)]
    return Path(name).stem
