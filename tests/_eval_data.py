"""A tiny prepared BraTS-style tree with tumours and cavities, for the evaluation and diagnosis
tests."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

from napari_berdiff.core.io.readers import BRATS_MODALITIES

Z_KEEP = 6
TUMOUR = (82, 83, 84)


def write_case(root: Path, cid: str, kind: str, seed: int, shape=(28, 26, 80 + Z_KEEP + 26)):
    folder = root / cid
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    x, y, z = shape
    xx, yy = np.mgrid[:x, :y]
    brain = ((xx - x / 2) / (0.42 * x)) ** 2 + ((yy - y / 2) / (0.42 * y)) ** 2 < 1
    seg = np.zeros(shape, np.uint8)
    for s in TUMOUR:
        seg[10:17, 9:16, s] = 2
    for c, mod in enumerate(BRATS_MODALITIES):
        vol = np.zeros(shape, np.int16)
        vol[brain] = 200 * (c + 1) + rng.integers(0, 60, (int(brain.sum()), z))
        vol[seg > 0] += 500 if kind == "tumour" else -150
        nib.save(nib.Nifti1Image(vol, np.eye(4)), str(folder / f"{cid}_{mod}.nii.gz"))
    nib.save(nib.Nifti1Image(seg, np.eye(4)), str(folder / f"{cid}_seg.nii.gz"))
    (folder / f"{cid}_synth.json").write_text(json.dumps({"kind": kind}))


def prepared_brats32(tmp_path_factory) -> Path:
    """Six cases (tumours and cavities) prepared at 32x32 with a fixed split."""
    from src_training.prepare.prepare import prepare_brats

    root = tmp_path_factory.mktemp("brats") / "src"
    for i in range(1, 7):
        write_case(root, f"BraTS20_Training_{i:03d}", "tumour" if i % 2 else "cavity", seed=i)
    out = tmp_path_factory.mktemp("prep") / "brats32"
    prepare_brats(root, out, image_size=32, seed=0, show_progress=False)
    return out
