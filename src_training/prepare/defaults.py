"""The defaults of the dataset preparation, in one place: the prepare functions' signatures and
the ``prepare-*`` command-line flags both read them. Pure Python (the CLI imports it to build its
parser)."""

from __future__ import annotations

from dataclasses import dataclass

# shared by every kind
IMAGE_SIZE = 256  # model input size (prepare_folder requires it; its CLI flag defaults to this)
SEED = 0  # seed of the split
WORKERS = 0  # worker processes (0: none)
NAN_POLICY = "raise"  # NIfTI NaN/Inf values: refuse ("raise") or replace by 0 ("zero")


@dataclass(frozen=True)
class BratsDefaults:
    split: tuple[float, float, float] = (0.7, 0.1, 0.2)  # train / val / test fractions of cases
    drop_bottom: int = 80  # axial slices left out at the bottom ...
    drop_top: int = 26  # ... and at the top of each volume


@dataclass(frozen=True)
class OctDefaults:
    val_fraction: float = 0.1
    max_per_class: int | None = None
    normal_test_fraction: float = 0.0


@dataclass(frozen=True)
class FolderDefaults:
    channels: int = 1
    val_fraction: float = 0.0
    drop_bottom: int = 0
    drop_top: int = 0


BRATS = BratsDefaults()
OCT = OctDefaults()
FOLDER = FolderDefaults()
