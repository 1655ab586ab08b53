"""Small models bundled with the package, trained by ``src_training`` on our synthetic data.

Each entry names a checkpoint file in this folder; the command that trained it is recorded in
``napari_berdiff/weights/TRAINING.md`` and in the checkpoint's ``meta["trained_with"]``.
A missing file (not trained yet, or stripped from a wheel) is reported as unavailable, never
downloaded.
"""

from __future__ import annotations

from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parent

# modality -> (file name, description)
BUNDLED: dict[str, tuple[str, str]] = {
    "brats": ("brats_small.pt", "4-channel brain MRI (FLAIR, T1, T1ce, T2), small config, 128x128"),
    "oct": ("oct_small.pt", "1-channel retinal OCT B-scans, small config, 128x128"),
}


def bundled_path(modality: str) -> Path | None:
    """Path of the bundled checkpoint for ``modality`` ("brats" or "oct"), or None if absent."""
    if modality not in BUNDLED:
        raise ValueError(f"no bundled model for {modality!r}; choose one of {sorted(BUNDLED)}")
    path = WEIGHTS_DIR / BUNDLED[modality][0]
    return path if path.is_file() else None


def available() -> dict[str, Path]:
    """The bundled checkpoints present in this installation, by modality."""
    return {m: p for m in BUNDLED if (p := bundled_path(m)) is not None}
