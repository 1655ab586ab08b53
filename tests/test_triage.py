"""Triage scores (per slice, per input), the ranked run summary of `berdiff detect`, the
out-of-distribution warning and re-segmenting kept maps at any threshold."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from napari_berdiff.cli import main
from napari_berdiff.core.inference.calibration import Calibration
from napari_berdiff.core.inference.postprocess import paper_anomaly_map, remove_small_components
from napari_berdiff.core.inference.triage import (KeptMaps, input_scores, rank_inputs,
                                                  slice_scores, triage_input)
from napari_berdiff.core.models.export import write_meta
from test_detect_cli import make_checkpoint, write_png

FAST = ["--L", "6", "--steps", "3", "--device", "cpu", "--no-progress", "--threads", "1"]


def test_peak_ignores_a_few_pixels_but_not_a_lesion():
    rng = np.random.default_rng(0)
    base = 0.01 * rng.random((3, 128, 128)).astype(np.float32)
    maps = base.copy()
    maps[1, 5, 7] = maps[1, 90, 3] = maps[1, 60, 60] = 5.0  # three outlying pixels
    maps[2, 40:50, 40:50] = 1.0  # a 100-pixel lesion
    fg = np.ones(maps.shape, bool)
    per = slice_scores(maps, [0.1, 0.2, 0.3], fg, calibrated=0.5, min_size=10)
    assert per["peak"][1] < 0.011 and per["peak"][2] == pytest.approx(1.0)
    assert list(per["area"]) == [0, 0, 100]  # the outliers are below min_size
    assert list(per["foreground"]) == [128 * 128] * 3
    uncal = slice_scores(maps, [0.1, 0.2, 0.3], fg, calibrated=None)
    assert np.isnan(uncal["area"]).all()
    inp = input_scores(per, [10, 11, 12], ran=np.array([True, True, False]))
    assert inp["peak_slice"] == 12 and inp["peak"] == pytest.approx(1.0)
    assert inp["area"] == 100 and inp["area_fraction"] == pytest.approx(100 / (3 * 128 * 128))
    assert inp["masked_fraction"] == pytest.approx(0.15)  # the skipped slice does not count


def test_ranking_by_peak_then_area():
    rows = [{"input": "a", "peak": 0.2, "area": 5.0}, {"input": "b", "peak": 0.9, "area": 0.0},
            {"input": "c", "peak": 0.2, "area": 50.0}, {"input": "d", "peak": float("nan"),
                                                         "area": float("nan")}]
    ranked = rank_inputs(rows)
    assert [r["input"] for r in ranked] == ["b", "c", "a", "d"]
    assert [r["rank"] for r in ranked] == [1, 2, 3, 4]


def test_an_input_far_from_the_calibration_is_flagged():
    cal = Calibration.from_values(np.random.default_rng(1).random(10_000) * 0.01,
                                  healthy={"median_error": {"p99": 0.002}})
    x = np.ones((2, 1, 32, 32), np.float32)
    quiet = np.full((2, 32, 32), 0.001, np.float32)
    loud = np.full((2, 32, 32), 0.5, np.float32)
    assert triage_input(quiet, x, [0, 0], [0, 1], calibration=cal)[1]["warning"] is None
    _, out = triage_input(loud, x, [0, 0], [0, 1], calibration=cal)
    assert out["median_error"] == pytest.approx(0.5)
    assert out["warning"] == ("far from the model's training data: its median reconstruction "
                              "error 0.5 is 250x that of healthy calibration slices (99th "
                              "percentile 0.002); its maps and masks mean little")


def test_kept_maps_resegment_without_sampling_again():
    rng = np.random.default_rng(2)
    x = rng.random((2, 4, 40, 40)).astype(np.float32)
    rec = np.clip(x + 0.1 * rng.standard_normal(x.shape), 0, 1).astype(np.float32)
    cal = Calibration.from_values(rng.random(10_000))
    kept = KeptMaps(x, rec, calibration=cal)
    ref = paper_anomaly_map(x, rec)
    for t in (0.02, 0.05, 0.1):
        assert np.array_equal(kept.segment(1, t), remove_small_components(ref[1] > t, 10))
    assert np.array_equal(kept.map(0), ref[0]) and kept.fpr(0.5) == pytest.approx(0.5, abs=0.03)
    assert KeptMaps(x, rec).fpr(0.5) is None
    with pytest.raises(ValueError, match="need \\(N, C, H, W\\) inputs and reconstructions"):
        KeptMaps(x, rec[:1])


def test_kept_maps_take_given_maps_and_stay_within_the_foreground():
    rng = np.random.default_rng(4)
    x = rng.random((2, 1, 30, 30)).astype(np.float32)
    rec = np.zeros_like(x)
    given = rng.random((2, 30, 30)).astype(np.float32)  # not the maps of x and rec: used as given
    within = np.zeros((2, 30, 30), bool)
    within[:, 5:25, 5:25] = True
    kept = KeptMaps(x, rec, maps=given, within=within)
    assert kept.map(1) is given[1] or np.array_equal(kept.map(1), given[1])
    seg = kept.segment(1, 0.3)
    assert np.array_equal(seg, remove_small_components((given[1] > 0.3) & within[1], 10))
    assert seg.any() and not seg[~within[1]].any()
    with pytest.raises(ValueError, match="within must be \\(N, H, W\\)"):
        KeptMaps(x, rec, within=within[:1])


def test_detect_writes_scores_and_a_ranked_summary(tmp_path, capsys):
    plain = make_checkpoint(tmp_path / "plain.pt", 1, "resize")
    pngs = [write_png(tmp_path / f"im{i}.png", seed=i) for i in range(3)]
    cal = Calibration.from_values(np.random.default_rng(3).random(20_000) * 0.05,
                                  source={"L": 6, "P": 0.5, "steps": 3},
                                  healthy={"median_error": {"p99": 1e-4}})
    ck = write_meta(plain, tmp_path / "cal.pt", {"calibration": cal.to_meta()})
    out = tmp_path / "o"
    rc = main(["detect", *FAST, *map(str, pngs), "--model", str(ck), "--out", str(out)])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    rows = list(csv.DictReader((out / "berdiff_summary.csv").open()))
    assert [int(r["rank"]) for r in rows] == [1, 2, 3]
    peaks = [float(r["peak"]) for r in rows]
    assert peaks == sorted(peaks, reverse=True)
    for r in rows:  # the summary agrees with each input's per-slice scores
        stem = r["outputs"].replace("_berdiff_*", "")
        (s,) = list(csv.DictReader((out / f"{stem}_berdiff_scores.csv").open()))
        assert float(s["peak"]) == pytest.approx(float(r["peak"]))
        assert float(s["area_calibrated"]) == float(r["area"])
        assert int(s["foreground_pixels"]) > 0
        prov = json.loads((out / f"{stem}_berdiff_provenance.json").read_text())
        assert prov["triage"]["peak"] == pytest.approx(float(r["peak"]))
    top = [ln for ln in cap.out.splitlines() if ln.lstrip().startswith(("1.", "2.", "3."))]
    assert len(top) == 3 and top[0].strip().startswith(f"1. {rows[0]['input']}: peak ")
    assert f"most anomalous first (by peak then area; all 3 in {out / 'berdiff_summary.csv'}):" \
        in cap.out
    # random noise is nothing like the (tiny) healthy errors of this calibration: warned per input
    assert cap.err.count("berdiff detect: warning: ") == 3
    assert "far from the model's training data" in cap.err
    # a second run (another input) into the same folder: the summary then ranks all four
    other = write_png(tmp_path / "new.png", seed=9)
    rc = main(["detect", *FAST, str(other), "--model", str(ck), "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    rows2 = list(csv.DictReader((out / "berdiff_summary.csv").open()))
    assert len(rows2) == 4 and {r["input"] for r in rows} < {r["input"] for r in rows2}
    peaks = [float(r["peak"]) for r in rows2]
    assert peaks == sorted(peaks, reverse=True)
