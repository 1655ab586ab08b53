"""Calibrated thresholds: the curve and its lookups, the threshold rules, calibrate() on a tiny
model and a tiny prepared BraTS tree, and `berdiff calibrate` / `berdiff inspect` as a user calls
them."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path
import sys

import numpy as np
import pytest

from napari_berdiff.core.evaluation.calibrate import calibrate
from napari_berdiff.core.inference.calibration import (Calibration, DEFAULT_FPR, foreground,
                                                       resolve_rule)
from napari_berdiff.core.inference.detector import Detector
from napari_berdiff.core.inference.postprocess import paper_anomaly_map
from napari_berdiff.core.models.checkpoint import file_sha256, load_checkpoint
from src_training.train.datasets import load_eval_split
from test_evaluate import checkpoint, prepared  # noqa: F401 (module-scoped fixtures)


def berdiff(*args):
    return subprocess.run([sys.executable, "-m", "napari_berdiff.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=600)


# -- the curve ----------------------------------------------------------------------------------
def test_thresholds_keep_the_share_of_healthy_pixels_asked_for():
    v = np.random.default_rng(0).lognormal(-4, 1.0, 200_000)
    cal = Calibration.from_values(v, fprs=(1e-3, 1e-2))
    for f in (1e-3, 1e-2):
        assert abs(np.mean(v > cal.thresholds[f]) - f) < 0.1 * f
    assert cal.default_fpr == 1e-3 and cal.default_threshold == cal.thresholds[1e-3]
    # any FPR inside the curve maps to a threshold and back
    for f in (0.3, 0.05, 2e-3, 3e-4, 5e-5):
        t = cal.threshold_at(f)
        assert abs(np.mean(v > t) - f) < 0.15 * f, f
        assert abs(math.log10(cal.fpr_at(t)) - math.log10(f)) < 0.02
    assert cal.fpr_at(v.max()) == 0.0 and cal.fpr_at(0.0) == 1.0
    assert 0.0 < cal.fpr_at(0.5 * (v.max() + cal.curve_threshold[-1])) < cal.curve_fpr[-1]
    with pytest.raises(ValueError, match="outside the calibrated range"):
        cal.threshold_at(1e-9)


def test_calibration_round_trips_through_json_meta():
    v = np.random.default_rng(1).random(50_000)
    cal = Calibration.from_values(v, fprs=(1e-2, 1e-3), default_fpr=1e-3,
                                  source={"L": 200, "P": 0.5, "steps": 20})
    meta = json.loads(json.dumps({"calibration": cal.to_meta()}))
    back = Calibration.from_meta(meta)
    assert back == cal
    assert Calibration.from_meta({}) is None
    bad = json.loads(json.dumps(meta))
    bad["calibration"]["curve"]["threshold"].reverse()
    with pytest.raises(ValueError, match="^malformed calibration: the curve is not a decreasing"):
        Calibration.from_meta(bad)
    with pytest.raises(ValueError, match="needs at least 1000 healthy foreground pixels"):
        Calibration.from_values(np.arange(500.0), fprs=(1e-3,))


def test_setting_and_distribution_notes():
    cal = Calibration.from_values(np.random.default_rng(2).random(20_000), source={
        "L": 200, "P": 0.5, "steps": 20}, healthy={"median_error": {"p99": 0.01}})
    assert cal.setting_note(200, 0.5, 20) is None
    assert cal.setting_note(100, 0.5, 20) == (
        "the calibration was made at L=200, P=0.5, S=20; this run uses L=100, so its threshold "
        "may not mean the calibrated FPR")
    assert cal.ood_note(0.03) is None
    assert cal.ood_note(0.5) == (
        "far from the model's training data: its median reconstruction error 0.5 is 50x that of "
        "healthy calibration slices (99th percentile 0.01); its maps and masks mean little")


# -- rules --------------------------------------------------------------------------------------
def test_threshold_rules_and_the_fallback_of_an_uncalibrated_model():
    v = np.random.default_rng(3).random(100_000)
    meta = {"calibration": Calibration.from_values(v).to_meta()}
    rule = resolve_rule(meta)
    assert rule.mode == "calibrated" and rule.fpr == DEFAULT_FPR and rule.note is None
    assert rule.value == pytest.approx(np.quantile(v, 1 - DEFAULT_FPR))
    assert resolve_rule(meta, fpr=0.01).value == pytest.approx(np.quantile(v, 0.99), rel=1e-3)
    ab = resolve_rule(meta, "absolute", abs_threshold=0.9)
    assert ab.value == 0.9 and abs(ab.fpr - 0.1) < 0.01 and "FPR" in ab.description
    fb = resolve_rule({})
    assert fb.mode == "paper" and fb.value == 0.5
    assert fb.note == ("the model has no calibration (berdiff calibrate MODEL PREPARED adds one); "
                       "segmenting with the paper rule: each slice's map scaled to its own "
                       "1st-99th percentiles, > 0.5 (every slice gets a mask, healthy or not)")
    assert resolve_rule({}, "paper").note is None
    with pytest.raises(ValueError, match=r"needs a threshold \(--abs-threshold T\)"):
        resolve_rule(meta, "absolute")
    with pytest.raises(ValueError, match="contradicts the 'paper' threshold mode"):
        resolve_rule(meta, "paper", abs_threshold=0.2)
    with pytest.raises(ValueError, match="--fpr needs a calibrated model"):
        resolve_rule({}, fpr=0.01)
    # applying: a map with one bright square and noise below the threshold
    amap = np.zeros((2, 32, 32), np.float32)
    amap[0, 4:12, 4:12] = 2.0
    seg = rule.apply(amap, min_size=10)
    assert seg[0].sum() == 64 and seg[1].sum() == 0
    assert fb.apply(amap + 1e-3 * np.random.default_rng(4).random(amap.shape), min_size=0)[1].any()


def test_foreground_fills_holes():
    x = np.zeros((1, 2, 20, 20), np.float32)
    x[0, 0, 2:18, 2:18] = 1
    x[0, :, 8:12, 8:12] = 0  # a dark lesion inside
    fg = foreground(x)
    assert fg.shape == (1, 20, 20) and fg.sum() == 16 * 16


# -- calibrate() and the command ----------------------------------------------------------------
def test_calibrate_holds_its_fpr_on_the_healthy_slices(prepared, checkpoint, one_thread):  # noqa: F811
    det = Detector.from_checkpoint(checkpoint, device="cpu")
    val = load_eval_split(prepared, "val")
    ticks = []
    cal = calibrate(det, val, L=10, P=0.5, steps=5, seed=0, batch_size=8, fprs=(0.01, 0.05),
                    progress=lambda d, t: ticks.append((d, t)))
    assert ticks and ticks[-1][0] <= ticks[-1][1]
    s = cal.source
    assert (s["L"], s["P"], s["steps"], s["seed"]) == (10, 0.5, 5, 0)
    assert s["n_slices"] == len(val) and s["n_healthy_slices"] == int(val.healthy.sum())
    assert s["model_hash"] == det.model_hash
    # recompute the healthy foreground pixels the same way: the stored thresholds keep the FPR
    res = det.detect(val.images, L=10, P=[0.5], steps=5, seed=0, normalize="none")
    maps = paper_anomaly_map(val.images, res.reconstruction[0])
    fg = foreground(val.images)
    h = np.asarray(val.healthy, bool)
    pix = np.concatenate([maps[i][fg[i]] for i in np.flatnonzero(h)])
    assert s["n_pixels"] == pix.size
    for f in (0.01, 0.05):
        assert abs(np.mean(pix > cal.thresholds[f]) - f) < 0.2 * f + 2 / pix.size
    d = cal.dice_optimal  # the tree has labelled tumour slices in its validation split
    assert d is not None and 0.0 <= d["dice"] <= 1.0 and d["n_diseased"] == int((~h).sum())
    assert cal.healthy["median_error"]["n"] == int(h.sum())


def test_calibrate_command_writes_a_new_file_and_inspect_shows_it(prepared, checkpoint,  # noqa: F811
                                                                  tmp_path):
    before = file_sha256(checkpoint)
    out = tmp_path / "cal.pt"
    args = ("--L", 10, "--steps", 5, "--device", "cpu", "--threads", 1, "--no-progress")
    r = berdiff("calibrate", checkpoint, prepared, "--out", out, "--fpr", 0.01, 0.05, *args)
    assert r.returncode == 0, r.stderr
    assert "threshold" in r.stdout and f"wrote {out}" in r.stdout
    assert file_sha256(checkpoint) == before  # the input is never changed
    cal = Calibration.from_meta(load_checkpoint(out).meta)
    assert cal.default_fpr == 0.01 and set(cal.thresholds) == {0.01, 0.05}
    assert cal.source["prepared"] == str(prepared.resolve())
    assert cal.source["model_sha256"] == before
    info = json.loads(berdiff("inspect", out).stdout)
    assert info["calibration"]["default"]["fpr"] == 0.01
    assert info["calibration"]["weights_match"] is True
    assert info["meta"]["calibration"] == "(summarised under 'calibration')"
    plain = json.loads(berdiff("inspect", checkpoint).stdout)
    assert plain["calibration"].startswith("none: berdiff detect falls back to the paper rule")
    # never over an existing file without --overwrite; MODEL itself only with --in-place
    r = berdiff("calibrate", checkpoint, prepared, "--out", out, *args)
    assert r.returncode == 2 and r.stderr.strip() == (
        f"berdiff calibrate: error: {out} exists; pass --overwrite to replace it")
    r = berdiff("calibrate", checkpoint, prepared, "--out", checkpoint, *args)
    assert r.returncode == 2 and r.stderr.strip() == (
        "berdiff calibrate: error: --out is MODEL itself; pass --in-place to replace it")
    r = berdiff("calibrate", checkpoint, prepared, "--out", tmp_path / "x.pt", "--fpr", 0, *args)
    assert r.returncode == 2 and r.stderr.strip() == (
        "berdiff calibrate: error: --fpr must lie in (0, 1), got 0.0")
    r = berdiff("calibrate", checkpoint, tmp_path / "nowhere", "--out", tmp_path / "x.pt", *args)
    assert r.returncode == 2 and "not found; make one first with" in r.stderr
    assert not (tmp_path / "x.pt").exists()
    # in place: the file is replaced by its calibrated version
    copy = tmp_path / "copy.pt"
    copy.write_bytes(checkpoint.read_bytes())
    r = berdiff("calibrate", copy, prepared, "--in-place", *args)
    assert r.returncode == 0, r.stderr
    assert Calibration.from_meta(load_checkpoint(copy).meta).default_fpr == DEFAULT_FPR
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


def test_evaluate_reports_the_image_auroc_of_each_triage_score(prepared, checkpoint,  # noqa: F811
                                                               tmp_path, one_thread):
    from napari_berdiff.core.evaluation.evaluate import evaluate
    from napari_berdiff.core.evaluation.metrics import image_auroc
    from napari_berdiff.core.evaluation.report import markdown_table
    from napari_berdiff.core.inference.triage import peak
    from napari_berdiff.core.models.export import write_meta

    test, val = load_eval_split(prepared, "test"), load_eval_split(prepared, "val")
    det = Detector.from_checkpoint(checkpoint, device="cpu")
    cal = calibrate(det, val, L=10, P=0.5, steps=5, seed=0, batch_size=8, fprs=(0.02,))
    ck = write_meta(checkpoint, tmp_path / "cal.pt", {"calibration": cal.to_meta()})
    det = Detector.from_checkpoint(ck, device="cpu")
    res = evaluate(det, test, None, L=10, P=0.5, steps=5, seed=0, batch_size=6, timing_slices=0,
                   baselines=("ae_only",))
    rows = {r["method"]: r for r in res["methods"]}
    ps = res["per_slice"]
    healthy = np.asarray(test.healthy, bool)
    # the per-slice peaks and calibrated areas, recomputed from an independent run
    out = det.detect(test.images, L=10, P=[0.5], steps=5, seed=0, normalize="none",
                     skip_empty=False)
    maps = paper_anomaly_map(test.images, out.reconstruction[0])
    np.testing.assert_allclose(ps["masked_peak"], [peak(m) for m in maps], rtol=1e-5)
    area = [(m > cal.default_threshold).sum() for m in maps]
    assert all(a <= b for a, b in zip(ps["masked_area_calibrated"], area))  # minus small parts
    assert rows["masked"]["image_auroc_peak"] == pytest.approx(
        image_auroc(ps["masked_peak"], ~healthy))
    assert rows["masked"]["image_auroc_area_calibrated"] == pytest.approx(
        image_auroc(ps["masked_area_calibrated"], ~healthy))
    assert 0.0 <= rows["ae_only"]["image_auroc_peak"] <= 1.0
    assert math.isnan(rows["ae_only"]["image_auroc_area_calibrated"])
    assert res["config"]["calibrated_threshold"] == cal.default_threshold
    md = markdown_table(res)
    assert f"| area (calibrated; threshold {cal.default_threshold:.4g}) | peak |" in md


def test_calibrate_on_the_raw_inputs_as_detect_runs_them(prepared, checkpoint, one_thread):  # noqa: F811
    from napari_berdiff.core.inference.batch_detect import DetectSettings, detect_item
    from napari_berdiff.core.io.input_kinds import InputItem

    det = Detector.from_checkpoint(checkpoint, device="cpu")
    val = load_eval_split(prepared, "val")
    raw = Path(json.loads((prepared / "meta.json").read_text())["source"])
    cal = calibrate(det, val, L=10, P=0.5, steps=5, seed=0, batch_size=8, fprs=(0.01,),
                    source_root=raw)
    assert cal.source["geometry"].startswith("deployment") and cal.source["raw_data"] == str(raw)
    idx = sorted(set(int(i) for i in val.slice_index))
    assert cal.slice_range == {"first": idx[0], "last": idx[-1], "depth": 112}
    assert cal.slice_range_for(112) == (idx[0], idx[-1]) and cal.slice_range_for(100) is None
    # the healthy pixels, recomputed case by case through detect's own path at full resolution
    s = DetectSettings(L=10, P=0.5, steps=5, seed=0)
    pix = []
    for case in sorted(set(val.source)):
        rows = np.flatnonzero(val.source == case)
        order = rows[np.argsort(val.slice_index[rows])]
        d = detect_item(det, InputItem(raw / case, "brats_case", case), s, batch_size=8,
                        slices=[int(i) for i in val.slice_index[order]])
        fg = foreground(d.res.input)
        pix += [d.amap[j][fg[j]] for j, r in enumerate(order) if val.healthy[r]]
    pix = np.concatenate(pix)
    assert d.amap.shape[-2:] == (28, 26)  # the raw slices, not the prepared 32 x 32
    assert cal.n_pixels == pix.size
    assert abs(np.mean(pix > cal.default_threshold) - 0.01) < 0.2 * 0.01 + 2 / pix.size


def test_detect_runs_the_calibrated_slice_range_and_segments_the_foreground(
        prepared, checkpoint, tmp_path, capsys):  # noqa: F811
    import csv

    from napari_berdiff.cli import main
    from napari_berdiff.core.models.export import write_meta

    v = np.random.default_rng(0).random(50_000) * 1e-3  # a threshold far below the tiny model's map
    cal = Calibration.from_values(v, source={"L": 6, "P": 0.5, "steps": 3},
                                  slice_range={"first": 82, "last": 85, "depth": 112})
    ck = write_meta(checkpoint, tmp_path / "cal.pt", {"calibration": cal.to_meta()})
    raw = Path(json.loads((prepared / "meta.json").read_text())["source"])
    case = sorted(raw.iterdir())[0]
    fast = ["--L", "6", "--steps", "3", "--device", "cpu", "--no-progress", "--threads", "1"]
    assert main(["detect", *fast, str(case), "--model", str(ck), "--out", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err
    assert ("berdiff detect: note: volumes of 112 slices run axial slices 82..85 only, the range "
            "the model was calibrated on (--slices or --all-slices for others)") in err
    rows = list(csv.DictReader((tmp_path / "o" / f"{case.name}_berdiff_scores.csv").open()))
    assert [int(r["slice"]) for r in rows] == [82, 83, 84, 85]
    import nibabel as nib
    from napari_berdiff.core.io.readers import load_brats_case

    mask = np.asarray(nib.load(str(tmp_path / "o" / f"{case.name}_berdiff_mask.nii.gz")).dataobj)
    vol, _, _ = load_brats_case(case)
    fg = (vol > 0).any(axis=0)
    assert mask[..., 82:86].any() and not mask[~fg].any()  # only inside the brain
    assert not mask[..., :82].any() and not mask[..., 86:].any()
    assert main(["detect", *fast, str(case), "--model", str(ck), "--out", str(tmp_path / "a"),
                 "--all-slices"]) == 0
    rows = list(csv.DictReader((tmp_path / "a" / f"{case.name}_berdiff_scores.csv").open()))
    assert len(rows) == 112
