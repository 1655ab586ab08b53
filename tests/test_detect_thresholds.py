"""``berdiff detect``'s threshold modes and defaults: calibrated by default, the named fallback of
an uncalibrated model (said once), paper and absolute on request, the bundled model picked for the
inputs, and bad combinations refused in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_berdiff.cli import main
from napari_berdiff.cli.model_args import bundled_for
from napari_berdiff.core.inference.calibration import Calibration
from napari_berdiff.core.inference.postprocess import (normalize_map, remove_small_components,
                                                      segment)
from napari_berdiff.core.io.input_kinds import InputItem
from napari_berdiff.core.models.export import write_meta
from test_detect_cli import AFFINE, make_checkpoint, write_png

FAST = ["--L", "6", "--steps", "3", "--device", "cpu", "--no-progress", "--threads", "1"]
FALLBACK = ("berdiff detect: note: the model has no calibration (berdiff calibrate MODEL PREPARED "
            "adds one); segmenting with the paper rule: each slice's map scaled to its own "
            "1st-99th percentiles, > 0.5 (every slice gets a mask, healthy or not)")


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ck") / "plain.pt", 1, "resize")


def calibrated_copy(src, dst, values, **kw):
    cal = Calibration.from_values(values, source={"L": 6, "P": 0.5, "steps": 3}, **kw)
    write_meta(src, dst, {"calibration": cal.to_meta()})
    return dst, cal


def detect(capsys, *args):
    rc = main(["detect", *FAST, *map(str, args)])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def outputs(out, stem):
    amap = tifffile.imread(out / f"{stem}_berdiff_anomaly.tif")
    mask = np.asarray(Image.open(out / f"{stem}_berdiff_mask.png")) > 0
    prov = json.loads((out / f"{stem}_berdiff_provenance.json").read_text())
    return amap, mask, prov


def test_uncalibrated_model_falls_back_to_the_paper_rule_and_says_so_once(plain, tmp_path, capsys):
    pngs = [write_png(tmp_path / f"im{i}.png", seed=i) for i in range(2)]
    rc, _, err = detect(capsys, *pngs, "--model", plain, "--out", tmp_path / "o")
    assert rc == 0, err
    assert err.count(FALLBACK) == 1 and err.count("no calibration") == 1, err
    amap, mask, prov = outputs(tmp_path / "o", "im0")
    assert np.array_equal(mask, segment(normalize_map(amap), 0.5, 10))
    assert prov["segmentation"]["mode"] == "paper" and prov["segmentation"]["threshold"] == 0.5


def test_calibrated_threshold_is_the_default(plain, tmp_path, capsys):
    png = write_png(tmp_path / "im.png")
    # a calibration whose default threshold sits at the input's own map median: about half
    # the pixels are above it, so the test sees the rule at work
    rc, _, _ = detect(capsys, png, "--model", plain, "--out", tmp_path / "ref",
                      "--threshold-mode", "paper")
    ref, _, _ = outputs(tmp_path / "ref", "im")
    values = np.random.default_rng(0).permutation(np.repeat(ref.ravel(), 3))
    ck, cal = calibrated_copy(plain, tmp_path / "cal.pt", values, fprs=(0.5,))
    rc, _, err = detect(capsys, png, "--model", ck, "--out", tmp_path / "o")
    assert rc == 0 and "no calibration" not in err, err
    t = cal.default_threshold
    assert f"berdiff detect: note: segmenting with map > {t:.4g}, the calibrated threshold at FPR 0.5 of healthy " \
           "foreground pixels" in err
    amap, mask, prov = outputs(tmp_path / "o", "im")
    assert np.array_equal(amap, ref)
    assert np.array_equal(mask, remove_small_components(amap > t, 10))
    assert 0 < mask.sum() < mask.size
    seg = prov["segmentation"]
    assert seg["mode"] == "calibrated" and seg["threshold"] == t and seg["fpr_healthy"] == 0.5
    # --fpr picks another point of the curve; paper and absolute stay available
    rc, _, err = detect(capsys, png, "--model", ck, "--out", tmp_path / "f", "--fpr", "0.1")
    t10 = cal.threshold_at(0.1)
    assert rc == 0 and np.array_equal(outputs(tmp_path / "f", "im")[1],
                                      remove_small_components(amap > t10, 10))
    rc, _, err = detect(capsys, png, "--model", ck, "--out", tmp_path / "a",
                        "--abs-threshold", str(t10))
    _, mask_a, prov_a = outputs(tmp_path / "a", "im")
    assert rc == 0 and np.array_equal(mask_a, remove_small_components(amap > t10, 10))
    assert prov_a["segmentation"]["mode"] == "absolute"
    assert abs(prov_a["segmentation"]["fpr_healthy"] - 0.1) < 0.01
    rc, _, err = detect(capsys, png, "--model", ck, "--out", tmp_path / "p",
                        "--threshold-mode", "paper")
    assert rc == 0 and np.array_equal(outputs(tmp_path / "p", "im")[1],
                                      segment(normalize_map(amap), 0.5, 10))
    # other settings than calibrated at: said once
    rc, _, err = detect(capsys, png, "--model", ck, "--out", tmp_path / "l", "--L", "5")
    assert err.count("berdiff detect: note: the calibration was made at L=6, P=0.5, S=3; this "
                     "run uses L=5, so its threshold may not mean the calibrated FPR") == 1, err


@pytest.mark.parametrize("opts, message", [
    (["--threshold-mode", "absolute"], "--threshold-mode absolute needs --abs-threshold T"),
    (["--threshold-mode", "paper", "--abs-threshold", "0.1"],
     "--abs-threshold contradicts --threshold-mode paper"),
    (["--threshold-mode", "paper", "--fpr", "0.01"],
     "--fpr applies to --threshold-mode calibrated, not paper"),
    (["--fpr", "2"], "--fpr must lie in (0, 1), got 2.0"),
    (["--P", "1.5"], "--P must lie in [0, 1] (0: every latent bit resampled, 1: none), got 1.5"),
    (["--P", "-0.1"], "--P must lie in [0, 1] (0: every latent bit resampled, 1: none), got -0.1"),
])
def test_bad_threshold_options_fail_in_one_line(plain, tmp_path, capsys, opts, message):
    png = write_png(tmp_path / "im.png")
    rc, _, err = detect(capsys, png, "--model", plain, "--out", tmp_path / "o", *opts)
    assert rc == 2 and err == f"berdiff detect: error: {message}\n"
    assert not (tmp_path / "o").exists()


def test_fpr_without_calibration_is_refused(plain, tmp_path, capsys):
    png = write_png(tmp_path / "im.png")
    rc, _, err = detect(capsys, png, "--model", plain, "--out", tmp_path / "o", "--fpr", "0.01")
    assert rc == 2 and err == ("berdiff detect: error: --fpr needs a calibrated model "
                               "(berdiff calibrate MODEL PREPARED)\n")
    assert not (tmp_path / "o").exists()


def test_the_bundled_model_is_picked_for_the_inputs(tmp_path):
    import nibabel as nib

    case = tmp_path / "Case1"
    case.mkdir()
    v4 = tmp_path / "four.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 3, 4), np.float32), AFFINE), str(v4))
    v3 = tmp_path / "three.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 3), np.float32), AFFINE), str(v3))
    img = InputItem(tmp_path / "a.png", "image", "a")
    assert bundled_for([InputItem(case, "brats_case", "Case1")]) == ("brats", "4-channel brain inputs")
    assert bundled_for([InputItem(v4, "nifti", "four")])[0] == "brats"
    assert bundled_for([img, InputItem(tmp_path / "x", "invalid", "x")]) == ("oct", "2D images")
    from napari_berdiff.cli import CLIError

    with pytest.raises(CLIError, match=r"^cannot tell which bundled model fits .*three.nii.gz \(a "
                                       r"nifti input that is neither a 4-channel brain volume nor "
                                       r"a 2D image\); pass --bundled brats\|oct or --model CKPT$"):
        bundled_for([InputItem(v3, "nifti", "three")])
    with pytest.raises(CLIError, match="^the inputs need different models"):
        bundled_for([img, InputItem(case, "brats_case", "Case1")])


def test_detect_without_a_model_runs_the_bundled_oct_model_on_images(tmp_path, capsys):
    from napari_berdiff.weights import bundled_path

    if bundled_path("oct") is None:
        pytest.skip("the bundled OCT model is not installed")
    png = write_png(tmp_path / "im.png", h=64, w=64)
    rc, _, err = detect(capsys, png, "--out", tmp_path / "o")
    assert rc == 0, err
    assert ("berdiff detect: note: no model named; using the bundled oct model (2D images; "
            "--bundled or --model to choose)") in err.splitlines()
    prov = outputs(tmp_path / "o", "im")[2]
    assert prov["detector"]["model"] == "oct_small.pt" or "oct" in str(prov["detector"]["model"])
