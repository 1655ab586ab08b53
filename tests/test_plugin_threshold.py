"""The widget's segmentation rule (issue 15): the model's calibrated threshold by default, the
named fallback of an uncalibrated model (said once), the paper rule on request, and the threshold
slider re-segmenting the kept maps without sampling again, its healthy FPR beside it."""

from __future__ import annotations

import numpy as np
import pytest

from _plugin_helpers import add_small_case, new_widget, run_and_wait, tiny_checkpoint
from napari_berdiff.core.inference.calibration import Calibration, foreground, resolve_rule
from napari_berdiff.core.inference.postprocess import paper_anomaly_map
from napari_berdiff.core.models.export import write_meta
from napari_berdiff.plugin.segmenter import slider_range, widget_rule
from napari_berdiff.plugin.status import threshold_text

CAL = Calibration.from_values(np.linspace(0.0, 0.5, 100_000), source={"L": 20, "P": 0.5, "steps": 3})


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    d = tmp_path_factory.mktemp("cal")
    plain = tiny_checkpoint(d / "plain.pt", channels=4)
    return write_meta(plain, d / "calibrated.pt", {"calibration": CAL.to_meta()})


def expected(w, k, rule, z):
    """The segmentation of slice ``z`` by ``rule``, from the run's arrays (not the widget's)."""
    out = w.outcome
    i = out.slices.index(z)
    amap = paper_anomaly_map(out.input[i], out.reconstruction[k, i])
    return rule.apply(amap, 10, 2, within=foreground(out.input[i])).astype(np.uint8), amap


def test_threshold_text_and_rules_are_plain_functions():
    paper = resolve_rule(None, "paper")
    assert threshold_text(paper) == ("paper rule, each slice's map scaled to its own 1-99th "
                                      "percentiles, > 0.5")
    fallback = widget_rule(None, "calibrated")
    assert fallback.mode == "paper" and fallback.note
    assert threshold_text(fallback).startswith("no calibration in this model: paper rule")
    meta = {"calibration": CAL.to_meta()}
    rule = widget_rule(meta, "calibrated", CAL.default_threshold)
    assert rule.mode == "calibrated" and rule.value == CAL.default_threshold
    assert threshold_text(rule, CAL.default_threshold) == (
        f"map > {CAL.default_threshold:.4g} (calibrated): FPR 0.1% of healthy calibration pixels")
    moved = widget_rule(meta, "calibrated", 0.25)
    assert moved.mode == "absolute" and moved.value == 0.25
    assert moved.fpr == pytest.approx(0.5, abs=0.01)
    assert threshold_text(moved, CAL.default_threshold).endswith(
        f"FPR {100 * moved.fpr:.3g}% of healthy calibration pixels")
    assert widget_rule(meta, "paper", 0.25).mode == "paper"
    hi, step = slider_range(CAL)
    assert hi >= 1.25 * CAL.max_value and hi >= 2 * CAL.default_threshold and step == hi / 1000
    assert slider_range(CAL, 9.0)[0] == pytest.approx(9.9)


def test_calibrated_default_and_the_slider_resegments_without_sampling(make_napari_viewer, qtbot,
                                                                      calibrated, monkeypatch):
    from napari_berdiff.core.inference.detector import Detector

    calls = []
    orig = Detector.iter_detect
    monkeypatch.setattr(Detector, "iter_detect",
                        lambda self, *a, **k: calls.append(1) or orig(self, *a, **k))
    viewer = make_napari_viewer()
    add_small_case(viewer)
    w = new_widget(viewer, calibrated, sweep="0.3", scope="current slice")
    c = w.c
    assert c.seg_mode.value == "calibrated" and c.seg_threshold.enabled
    assert c.seg_threshold.value == pytest.approx(CAL.default_threshold, abs=1e-6)
    assert c.seg_info.value == threshold_text(widget_rule({"calibration": CAL.to_meta()},
                                                          "calibrated"), CAL.default_threshold)
    z = int(viewer.dims.current_step[0])
    run_and_wait(qtbot, w)
    assert "Note" not in c.status.value  # a calibrated model: no fallback
    seg = viewer.layers["case segmentation"]
    k = w.shown
    want, amap = expected(w, k, w.thresh.rule(), z)
    np.testing.assert_array_equal(seg.data[z], want)
    assert seg.metadata["postprocess"]["mode"] == "calibrated"
    # the slider: a lower threshold segments more, from the kept maps, with no new run
    fg = foreground(w.outcome.input[0])
    c.seg_threshold.value = float(np.percentile(amap[fg], 40))
    t = c.seg_threshold.value
    moved = resolve_rule({"calibration": CAL.to_meta()}, "absolute", abs_threshold=t)
    want2, _ = expected(w, k, moved, z)
    assert want2.sum() > want.sum()
    np.testing.assert_array_equal(seg.data[z], want2)
    assert seg.metadata["postprocess"]["mode"] == "absolute"
    assert seg.metadata["postprocess"]["threshold"] == pytest.approx(t)
    assert c.seg_info.value == f"map > {t:.4g}: FPR {100 * CAL.fpr_at(t):.3g}% of healthy calibration pixels"
    # another swept P is segmented at the slider's threshold too
    c.P.value = 0.3
    k3 = w.outcome.index_of(0.3)
    np.testing.assert_array_equal(seg.data[z], expected(w, k3, moved, z)[0])
    # the paper rule on request; the slider is then off
    c.seg_mode.value = "paper"
    assert not c.seg_threshold.enabled
    np.testing.assert_array_equal(seg.data[z], expected(w, k3, resolve_rule(None, "paper"), z)[0])
    qtbot.wait(600)  # longer than the live re-run's debounce
    assert len(calls) == 1 and w.n_runs == 1


def test_uncalibrated_model_falls_back_to_the_paper_rule_and_says_so_once(make_napari_viewer,
                                                                          qtbot, ckpt4):
    viewer = make_napari_viewer()
    add_small_case(viewer)
    w = new_widget(viewer, ckpt4, sweep="", scope="current slice")
    assert not w.c.seg_threshold.enabled
    assert w.c.seg_info.value.startswith("no calibration in this model: paper rule")
    run_and_wait(qtbot, w)
    note = ("Note: the model has no calibration (berdiff calibrate MODEL PREPARED adds one); "
            "segmenting with the paper rule: each slice's map scaled to its own 1st-99th "
            "percentiles, > 0.5 (every slice gets a mask, healthy or not)")
    assert w.c.status.value.endswith(note), w.c.status.value
    z = int(viewer.dims.current_step[0])
    np.testing.assert_array_equal(viewer.layers["case segmentation"].data[z],
                                  expected(w, w.shown, resolve_rule(None, "paper"), z)[0])
    run_and_wait(qtbot, w)
    assert "Note" not in w.c.status.value  # once per model


def test_score_choice_and_the_jump_to_the_most_anomalous_slice(make_napari_viewer, qtbot,
                                                               calibrated):
    from napari_berdiff.core.inference.triage import peak

    viewer = make_napari_viewer()
    layers = add_small_case(viewer)
    w = new_widget(viewer, calibrated, sweep="", scope="all slices")
    run_and_wait(qtbot, w)
    plot, out, k = w.plot, w.outcome, w.shown
    assert plot.score == "masked_fraction"
    np.testing.assert_allclose(plot._line.get_ydata(), out.masked_fraction[k])
    maps = paper_anomaly_map(out.input, out.reconstruction[k])
    plot.set_score("peak")
    peaks = [float(peak(m)) for m in maps]
    np.testing.assert_allclose(plot._line.get_ydata(), peaks, rtol=1e-5)
    assert plot.ax.get_ylabel() == "robust peak (99.9th pct of the map)"
    # the jump: from another slice to the one with the highest peak
    most = out.slices[int(np.argmax(peaks))]
    src = layers[0]
    start = out.slices[int(np.argmin(peaks))]
    viewer.dims.set_point(0, src.data_to_world((start, 0, 0))[0])
    assert start != most and plot.jump_button.isEnabled()
    plot.jump_button.click()
    assert int(round(src.world_to_data(viewer.dims.point)[0])) == most
    # the area: the segmented pixels per slice, following the threshold slider
    plot.set_score("area")
    seg = viewer.layers["case segmentation"].data
    np.testing.assert_array_equal(plot._line.get_ydata(), seg[out.slices].reshape(len(out.slices), -1).sum(1))
    assert plot.ax.get_ylabel() == f"segmented area (px, map > {w.c.seg_threshold.value:.4g})"
    before = plot._line.get_ydata().copy()
    w.c.seg_threshold.value = float(np.percentile(maps, 30))
    after = plot._line.get_ydata()
    assert after.sum() > before.sum()
    seg = viewer.layers["case segmentation"].data
    np.testing.assert_array_equal(after, seg[out.slices].reshape(len(out.slices), -1).sum(1))
