"""`berdiff synth-brats` / `berdiff synth-oct` as a user calls them, and the OCT prepare step on
their output (healthy test images through --normal-test-fraction)."""

import json

import nibabel as nib
import numpy as np

from tests.test_cli import berdiff


def test_synth_oct_writes_the_oct2017_layout_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "oct"
    berdiff("synth-oct", str(out), "--normal", "4", "--drusen", "2", "--seed", "3")
    assert len(list((out / "NORMAL").glob("*.jpeg"))) == 4
    drusen = sorted((out / "DRUSEN").glob("*.jpeg"))
    masks = sorted((out / "DRUSEN_masks").glob("*.png"))
    assert len(drusen) == 2 and [m.stem for m in masks] == [d.stem for d in drusen]
    before = (out / "NORMAL" / "NORMAL-1000001-1.jpeg").read_bytes()
    again = berdiff("synth-oct", str(out), "--normal", "4", "--seed", "4", check=False)
    assert again.returncode == 2 and "--overwrite" in again.stderr and "Traceback" not in again.stderr
    assert (out / "NORMAL" / "NORMAL-1000001-1.jpeg").read_bytes() == before
    empty = berdiff("synth-oct", str(tmp_path / "none"), check=False)
    assert empty.returncode == 2 and "nothing to write" in empty.stderr


def test_prepare_oct_holds_out_healthy_test_images(tmp_path):
    src = tmp_path / "oct"
    berdiff("synth-oct", str(src), "--normal", "12", "--drusen", "4", "--seed", "5")
    prep = tmp_path / "prep"
    berdiff("prepare-oct", str(src), str(prep), "--image-size", "32", "--val-fraction", "0.2",
            "--normal-test-fraction", "0.5", "--quiet")
    meta = json.loads((prep / "meta.json").read_text())
    counts = meta["counts"]
    assert counts["test"]["healthy"] >= 2 and counts["train"]["healthy"] >= 2
    assert counts["test"]["diseased"] + counts["val"]["diseased"] == 4


def test_synth_brats_writes_a_case_that_prepare_reads(tmp_path):
    out = tmp_path / "brats"
    berdiff("synth-brats", str(out), "--tumour", "1", "--seed", "2", "--quiet")
    case = out / "BraTS20_Training_001"
    flair = nib.load(case / "BraTS20_Training_001_flair.nii.gz")
    seg = np.asarray(nib.load(case / "BraTS20_Training_001_seg.nii.gz").dataobj)
    assert flair.shape == (240, 240, 155) and set(np.unique(seg)) <= {0, 1, 2, 4} and seg.any()
    manifest = json.loads((out / "synth_manifest.json").read_text())
    assert [c["kind"] for c in manifest["cases"]] == ["tumour"]
