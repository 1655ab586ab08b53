"""The napari widget in a real viewer under Xvfb, with tiny random models (32x32 images)."""

from __future__ import annotations

import threading
import warnings
from types import SimpleNamespace

import numpy as np
import pytest

from _plugin_helpers import add_small_case, configure, run_and_wait, tiny_checkpoint
from napari_berdiff.plugin.widget import BerdiffWidget
from napari_berdiff.core.inference.detector import Detector

pytestmark = pytest.mark.gui
TIMEOUT = 120_000


@pytest.fixture
def count_calls(monkeypatch):
    """Count Detector.iter_detect calls and network evaluations (threads included)."""
    calls = SimpleNamespace(detect=0, evals=0, threads=set())
    orig_iter, orig_flip = Detector.iter_detect, Detector._flip_model

    def iter_detect(self, *a, **k):
        calls.detect += 1
        return orig_iter(self, *a, **k)

    def flip(self, z, t):
        calls.evals += 1
        calls.threads.add(threading.get_ident())
        return orig_flip(self, z, t)

    monkeypatch.setattr(Detector, "iter_detect", iter_detect)
    monkeypatch.setattr(Detector, "_flip_model", flip)
    return calls


def _configure(w, ckpt, L=20, steps=4, sweep="0.3, 0.7", P=0.5, scope="current slice"):
    configure(w, ckpt, L=L, steps=steps, sweep=sweep, P=P, scope=scope)


def _run_and_wait(qtbot, w):
    worker = run_and_wait(qtbot, w)
    assert all(w.outcome.seg_ready)
    return worker


def _outputs(viewer, base):
    return {ly.name[len(base) + 1:]: ly for ly in viewer.layers if ly.name.startswith(base + " ")
            and "provenance" in ly.metadata}


def test_end_to_end_through_the_manifest(make_napari_viewer, qtbot, ckpt4, tmp_path):
    viewer = make_napari_viewer()
    layers = viewer.open_sample("napari-berdiff", "brats_quick")
    flair = layers[0]
    assert [ly.name for ly in layers][:4] == [f"synth07 {m}" for m in ("FLAIR", "T1", "T1ce", "T2")]
    dock, w = viewer.window.add_plugin_dock_widget("napari-berdiff", "Anomaly detection")
    assert isinstance(w, BerdiffWidget)
    # no bundled model in a fresh checkout: a clear message, Run disabled; a file is then chosen
    if w.checkpoint is None:
        assert "not in this installation" in w.c.model_info.value
    _configure(w, ckpt4)
    assert [cb.value.name for cb in w.inputs.combos] == [ly.name for ly in layers[:4]]  # auto-picked
    z = 25
    viewer.dims.set_point(0, flair.data_to_world((z, 0, 0))[0])
    _run_and_wait(qtbot, w)
    out = _outputs(viewer, "synth07")
    assert set(out) >= {"reconstruction FLAIR", "reconstruction T2", "anomaly map", "segmentation",
                        "mask evolution"}
    for name in ("reconstruction FLAIR", "anomaly map", "segmentation"):
        ly = out[name]
        assert ly.data.shape == flair.data.shape
        np.testing.assert_allclose(ly.scale, flair.scale)
        np.testing.assert_allclose(ly.translate, flair.translate)
        np.testing.assert_allclose(ly.metadata["affine"], flair.metadata["affine"])
    amap = out["anomaly map"]
    assert amap.colormap.name == "inferno" and amap.blending == "additive"
    assert np.any(amap.data[z] > 0) and not np.any(amap.data[z + 1])  # only the current slice
    prov = amap.metadata["provenance"]
    assert prov["L"] == 20 and prov["steps"] == 4 and prov["P_shown"] == 0.5 and prov["seed"] == 0
    assert prov["device"] == "cpu" and len(prov["model_hash"]) == 12 and prov["time"]
    assert type(out["segmentation"]).__name__ == "Labels"
    mask = out["mask evolution"]
    assert mask.data.shape == (flair.data.shape[0], 8, 8) and mask.metadata["steps"] == 4
    # the latent grid covers the image: 240 px -> 8 cells of 30 px, centred on their pixels
    np.testing.assert_allclose(mask.scale[1:], np.asarray(flair.scale[1:]) * 30)
    np.testing.assert_allclose(mask.data_to_world((z, 0, 0)), flair.data_to_world((z, 14.5, 14.5)))
    # the widget gives exactly what the library gives for the same slice and seed
    from napari_berdiff.plugin.layers import Orientation

    o = Orientation.from_dict(flair.metadata["orientation"])
    vol = np.stack([o.from_layer(np.asarray(ly.data)) for ly in layers[:4]])
    det = Detector.from_checkpoint(str(ckpt4), device="cpu")
    ref = det.detect_volume(vol, slices=[z], L=20, P=[0.3, 0.5, 0.7], steps=4, seed=0)
    expect = np.zeros(vol.shape[1:], np.float32)
    expect[..., z] = ref.anomaly_map[1, 0]
    np.testing.assert_allclose(amap.data, o.to_layer(expect), atol=1e-5)
    assert "berdiff: scores per slice" in viewer.window.dock_widgets
    # saved through the manifest's writer: the source volume's voxel order and affine
    import nibabel as nib

    (path, side) = amap.save(str(tmp_path / "amap.nii.gz"), plugin="napari-berdiff")
    img = nib.load(path)
    np.testing.assert_allclose(img.affine, flair.metadata["affine"])
    np.testing.assert_allclose(np.asarray(img.dataobj)[..., z], ref.anomaly_map[1, 0], atol=1e-5)
    assert '"L": 20' in open(side).read()


def test_cancel_leaves_no_partial_layers_and_a_second_run_works(make_napari_viewer, qtbot, ckpt4, count_calls):
    viewer = make_napari_viewer()
    add_small_case(viewer)
    w = BerdiffWidget(viewer)
    _configure(w, ckpt4, L=1000, steps=400, sweep="0.1:0.9:0.1", scope="all slices")
    n_layers = len(viewer.layers)
    worker = w.run()
    qtbot.waitUntil(lambda: count_calls.evals >= 3, timeout=TIMEOUT)
    w.cancel()
    at_cancel = count_calls.evals
    qtbot.waitUntil(lambda: not w.is_busy(), timeout=TIMEOUT)
    assert count_calls.evals - at_cancel <= 1  # stops within one step
    assert count_calls.evals < 50
    assert len(viewer.layers) == n_layers and w.outcome is None
    assert w.c.status.value == "cancelled"
    assert not worker.is_running
    _configure(w, ckpt4, L=10, steps=2, sweep="", scope="current slice")
    _run_and_wait(qtbot, w)
    assert len(viewer.layers) == n_layers + 4 + 3  # 4 reconstructions, map, segmentation, mask
    assert threading.get_ident() not in count_calls.threads  # the network ran off the GUI thread


def test_worker_touches_no_napari_object(make_napari_viewer_proxy, qtbot, ckpt4):
    viewer = make_napari_viewer_proxy()
    add_small_case(viewer)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        w = BerdiffWidget(viewer)
        _configure(w, ckpt4, scope="all slices")
        errors = []
        w.run().errored.connect(errors.append)
        qtbot.waitUntil(lambda: not w.is_busy(), timeout=TIMEOUT)
    assert not errors, errors
    assert w.outcome is not None, w.c.status.value
    assert "case anomaly map" in viewer.layers
    private = [str(x.message) for x in seen if "Private attribute access" in str(x.message)]
    assert not private, private


def test_p_slider_swaps_outputs_from_the_sweep_without_a_new_run(make_napari_viewer, qtbot, ckpt4, count_calls):
    viewer = make_napari_viewer()
    add_small_case(viewer)
    w = BerdiffWidget(viewer)
    _configure(w, ckpt4, sweep="0.3, 0.6", P=0.5, scope="all slices")
    _run_and_wait(qtbot, w)
    assert count_calls.detect == 1 and w.outcome.thresholds == [0.3, 0.5, 0.6]
    amap = viewer.layers["case anomaly map"]
    seg = viewer.layers["case segmentation"]
    for P, k in ((0.3, 0), (0.6, 2), (0.5, 1)):
        w.c.P.value = P
        np.testing.assert_array_equal(amap.data, w.outcome.anomaly_map[k])
        np.testing.assert_array_equal(seg.data, w.outcome.segmentation[k])
        assert amap.metadata["provenance"]["P_shown"] == P
    qtbot.wait(700)  # longer than the debounce: still no new run
    assert count_calls.detect == 1 and w.n_runs == 1 and not w.is_busy()
    # P outside the sweep: one (debounced) new run that adds it
    w.c.P.value = 0.44
    w.c.P.value = 0.45
    qtbot.waitUntil(lambda: w.n_runs == 2, timeout=5000)
    qtbot.waitUntil(lambda: not w.is_busy() and w.outcome is not None and 0.45 in w.outcome.thresholds,
                    timeout=TIMEOUT)
    assert count_calls.detect == 2
    # moving L re-runs, cancelling a run in flight
    w.c.L.value = 400
    w.c.steps.value = 200
    qtbot.waitUntil(lambda: w.n_runs == 3, timeout=5000)
    w.c.L.value = 30
    w.c.steps.value = 3
    qtbot.waitUntil(lambda: w.n_runs == 4, timeout=5000)
    qtbot.waitUntil(lambda: not w.is_busy(), timeout=TIMEOUT)
    assert w.outcome.provenance["L"] == 30
    assert viewer.layers["case anomaly map"].metadata["provenance"]["L"] == 30


def test_score_plot_follows_and_moves_the_current_slice(make_napari_viewer, qtbot, ckpt4):
    viewer = make_napari_viewer()
    layers = add_small_case(viewer)
    w = BerdiffWidget(viewer)
    _configure(w, ckpt4, sweep="", scope="all slices")
    _run_and_wait(qtbot, w)
    plot = w.plot
    assert list(plot.slices) == list(range(6))
    np.testing.assert_allclose(plot.ax.lines[-2].get_ydata(), w.outcome.masked_fraction[0])
    src = layers[0]
    viewer.dims.set_point(viewer.dims.ndim - 3, src.data_to_world((4, 0, 0))[0])
    assert plot.cursor.get_xdata()[0] == 4
    plot._on_click(SimpleNamespace(xdata=1.8))
    assert int(round(src.world_to_data(viewer.dims.point)[0])) == 2
    assert plot.cursor.get_xdata()[0] == 2


def test_screenshot_shows_the_anomaly_overlay(make_napari_viewer, qtbot, ckpt4):
    viewer = make_napari_viewer(show=True)
    add_small_case(viewer)
    w = BerdiffWidget(viewer)
    _configure(w, ckpt4, L=50, steps=5, sweep="")
    _run_and_wait(qtbot, w)
    amap = viewer.layers["case anomaly map"]
    amap.contrast_limits = (0, float(amap.data.max()) * 0.5)
    for ly in viewer.layers:
        ly.visible = ly.name in ("case FLAIR", "case anomaly map")
    viewer.reset_view()
    with_map = viewer.screenshot(canvas_only=True, flash=False)
    amap.visible = False
    without = viewer.screenshot(canvas_only=True, flash=False)
    assert with_map.shape == without.shape and with_map[..., :3].max() > 0
    diff = np.abs(with_map[..., :3].astype(int) - without[..., :3].astype(int)).sum(-1)
    assert (diff > 30).mean() > 0.01  # the overlay changes a visible part of the canvas
    rgb = with_map[..., :3].astype(int)
    assert ((rgb[..., 0] - rgb[..., 2]) > 40).mean() > 0.005  # inferno's warm colours, not gray


def test_oct_side_by_side_view(make_napari_viewer, qtbot, ckpt1):
    viewer = make_napari_viewer()
    img = np.random.default_rng(0).random((40, 50)).astype(np.float32)
    src = viewer.add_image(img, name="scan", metadata={"modality": "oct"})
    w = BerdiffWidget(viewer)
    _configure(w, ckpt1, sweep="0.5")
    assert w.c.model_choice.value == "checkpoint file…"
    _run_and_wait(qtbot, w)
    rec = viewer.layers["scan reconstruction"]
    assert rec.data.shape == (40, 50) and viewer.layers["scan mask evolution"].data.shape == (8, 8)
    w.toggle_side_by_side()
    assert viewer.canvas.grid.enabled
    diff = viewer.layers["scan difference"]
    np.testing.assert_allclose(diff.data, img - rec.data, atol=1e-6)
    visible = [ly.name for ly in viewer.layers if ly.visible]
    assert visible == ["scan", "scan reconstruction", "scan difference"]
    assert [viewer.canvas.grid.position(viewer.layers.index(n), viewer.layers) for n in visible] == [(0, 0), (0, 1), (0, 2)]
    w.toggle_side_by_side()
    assert not viewer.canvas.grid.enabled and viewer.layers.index(src) == 0
    assert viewer.layers["scan anomaly map"].visible


def test_missing_input_or_model_gives_a_message_not_a_traceback(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    w = BerdiffWidget(viewer)
    assert w.run() is None
    assert w.c.status.value  # one sentence in the widget (and a notification)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    w.set_checkpoint(bad)
    assert w.checkpoint is None and "bad.pt" in w.c.model_info.value
    assert not w.c.run.enabled


def test_unavailable_device_falls_back_to_cpu_with_a_visible_warning(make_napari_viewer, qtbot, ckpt4, monkeypatch):
    import napari_berdiff.core.inference.device as device

    monkeypatch.setattr(device, "available_devices", lambda: ["auto", "cpu", "cuda:3"])
    viewer = make_napari_viewer()
    add_small_case(viewer)
    w = BerdiffWidget(viewer)
    _configure(w, ckpt4, L=10, steps=2, sweep="")
    w.c.device.value = "cuda:3"
    assert "cpu" in w.c.device_info.value and ("not available" in w.c.device_info.value
                                               or "does not exist" in w.c.device_info.value)
    _run_and_wait(qtbot, w)
    prov = viewer.layers["case anomaly map"].metadata["provenance"]
    assert prov["device"] == "cpu" and prov["device_warning"]
    assert w.c.device_info.value.startswith("ran on cpu:")


def test_auto_pick_matches_channels_by_modality_name_and_file():
    from napari.layers import Image

    from napari_berdiff.plugin.inputs import auto_pick, base_name

    z = np.zeros((2, 4, 4), np.float32)
    named = [Image(z, name=f"BraTS20_Training_001_{m}") for m in ("t2", "t1ce", "flair", "t1")]
    other = Image(z, name="notes")
    pick = auto_pick([other] + named, ["flair", "t1", "t1ce", "t2"], 4)
    assert [ly.name for ly in pick] == [f"BraTS20_Training_001_{m}" for m in ("flair", "t1", "t1ce", "t2")]
    assert base_name(pick) == "BraTS20_Training_001"
    chans = [Image(z, name=f"multi [{c}]", metadata={"source": "/x/multi.nii", "channel": c, "n_channels": 3})
             for c in (2, 0, 1)]
    assert [ly.name for ly in auto_pick(chans, [], 3)] == ["multi [0]", "multi [1]", "multi [2]"]
    assert auto_pick(chans[:2], [], 3) is None
    assert auto_pick([other, named[0]], ["oct"], 1, active=named[0]) == [named[0]]


def test_a_failing_run_gives_one_clear_message_and_no_layers(make_napari_viewer, qtbot, ckpt4):
    viewer = make_napari_viewer()
    layers = add_small_case(viewer)
    layers[2].data[1, 5, 5] = np.nan  # the detector refuses non-finite input (in the worker)
    w = BerdiffWidget(viewer)
    _configure(w, ckpt4, L=10, steps=2, sweep="")
    n = len(viewer.layers)
    w.run()
    qtbot.waitUntil(lambda: not w.is_busy(), timeout=TIMEOUT)
    assert len(viewer.layers) == n and w.outcome is None
    assert "NaN" in w.c.status.value and "Traceback" not in w.c.status.value


def test_progress_bars_are_closed_after_runs_and_cancels(make_napari_viewer, qtbot, ckpt4):
    from napari.utils import progress

    viewer = make_napari_viewer()
    add_small_case(viewer)
    w = BerdiffWidget(viewer)
    _configure(w, ckpt4, L=10, steps=2, sweep="")
    _run_and_wait(qtbot, w)
    _configure(w, ckpt4, L=1000, steps=300, sweep="0.1:0.9:0.1", scope="all slices")
    w.run()
    qtbot.wait(300)
    w.cancel()
    qtbot.waitUntil(lambda: not w.is_busy(), timeout=TIMEOUT)
    assert not [p for p in progress._all_instances if "berdiff" in str(p.desc)]


def test_one_multichannel_layer_gives_the_same_outputs_as_the_modality_layers(make_napari_viewer, qtbot, ckpt4):
    viewer = make_napari_viewer()
    layers = add_small_case(viewer)
    w = BerdiffWidget(viewer)
    _configure(w, ckpt4, L=10, steps=2, sweep="", scope="all slices")
    assert w.c.multi.value is None  # a full set of modality layers is preferred
    _run_and_wait(qtbot, w)
    per_modality = viewer.layers["case anomaly map"].data.copy()
    # the same data as one (C, Z, Y, X) layer: a channel slider in front, the same world geometry
    stack = np.stack([np.asarray(ly.data) for ly in layers])
    multi = viewer.add_image(stack, name="stack", scale=(1.0, 3.0, 1.5, 1.5), translate=(0.0, -10.0, 5.0, -20.0))
    assert multi in w.c.multi.choices
    w.c.multi.value = multi
    assert not any(cb.visible for cb in w.inputs.combos) and "axis 0" in w.c.input_info.value
    assert w.c.run.enabled
    _run_and_wait(qtbot, w)
    out = _outputs(viewer, "stack")
    assert set(out) >= {"reconstruction FLAIR", "reconstruction T2", "anomaly map", "segmentation", "mask evolution"}
    amap = out["anomaly map"]
    assert amap.data.shape == layers[0].data.shape
    np.testing.assert_array_equal(amap.data, per_modality)
    np.testing.assert_allclose(amap.scale, layers[0].scale)
    np.testing.assert_allclose(amap.translate, layers[0].translate)
    # the outputs overlay the source: a voxel maps to the same world point in both
    np.testing.assert_allclose(amap.data_to_world((2, 7, 9)), multi.data_to_world((1, 2, 7, 9))[1:])
    mask = out["mask evolution"]
    assert mask.data.shape[0] == stack.shape[1]
    # the score plot and the slice choice work through the layer's spatial axes
    viewer.dims.set_point(viewer.dims.ndim - 3, multi.data_to_world((0, 4, 0, 0))[1])
    assert w.plot.cursor.get_xdata()[0] == 4
    w.plot.jump_to(1)
    assert int(round(multi.world_to_data(viewer.dims.point)[1])) == 1


def test_channel_last_and_2d_multichannel_layers(make_napari_viewer, qtbot, ckpt4):
    viewer = make_napari_viewer()
    from _plugin_helpers import small_case

    vols = np.stack(small_case())
    last = viewer.add_image(np.moveaxis(vols, 0, -1), name="last", rgb=False)  # (Z, Y, X, C)
    w = BerdiffWidget(viewer)
    _configure(w, ckpt4, L=10, steps=2, sweep="", scope="all slices")
    assert w.c.multi.value is last  # no modality layers: the multi-channel layer is picked
    assert "axis 3" in w.c.input_info.value and "np.moveaxis" in w.c.input_info.value
    _run_and_wait(qtbot, w)
    assert viewer.layers["last anomaly map"].data.shape == vols.shape[1:]
    # a 2D (C, Y, X) slice: the outputs are 2D
    two_d = viewer.add_image(vols[:, 3], name="slice3")
    w.c.multi.value = two_d
    assert "axis 0" in w.c.input_info.value
    _run_and_wait(qtbot, w)
    amap = viewer.layers["slice3 anomaly map"]
    assert amap.data.shape == vols.shape[2:]
    assert np.any(amap.data > 0) and viewer.layers["slice3 mask evolution"].data.shape == (8, 8)
    assert viewer.layers["slice3 reconstruction T1ce"].data.shape == vols.shape[2:]


def test_a_multichannel_layer_that_does_not_fit_names_the_expected_channels(make_napari_viewer, qtbot, ckpt4):
    viewer = make_napari_viewer()
    three = viewer.add_image(np.random.default_rng(0).random((3, 4, 40, 40)).astype(np.float32), name="three")
    rgb = viewer.add_image(np.random.default_rng(1).random((40, 40, 3)).astype(np.float32), name="photo")
    assert rgb.rgb
    w = BerdiffWidget(viewer)
    _configure(w, ckpt4, L=10, steps=2, sweep="")
    assert w.c.multi.value is None and not w.c.run.enabled  # nothing fits: nothing picked
    for layer, what in ((three, "(3, 4, 40, 40)"), (rgb, "RGB")):
        w.c.multi.value = layer
        info = w.c.input_info.value
        assert "4 channels (FLAIR, T1, T1ce, T2)" in info and what in info, info
        assert not w.c.run.enabled
        assert w.run() is None and "FLAIR, T1, T1ce, T2" in w.c.status.value


def test_the_input_info_says_when_the_model_rescales_or_crops(make_napari_viewer, ckpt4, tmp_path):
    from _plugin_helpers import tiny_checkpoint

    viewer = make_napari_viewer()
    add_small_case(viewer, shape=(2, 200, 200))
    w = BerdiffWidget(viewer)
    w.set_checkpoint(ckpt4)  # 32 px model, "pad" without a canvas: 200 px slices shrink 0.16x
    assert "shrunk 0.16x" in w.c.input_info.value and w.c.run.enabled
    w.set_checkpoint(tiny_checkpoint(tmp_path / "canvas.pt", channels=4, canvas=160))
    assert "crops to a 160 px canvas" in w.c.input_info.value, w.c.input_info.value


def test_preferences_set_the_widget_defaults(make_napari_viewer, ckpt4, tmp_path, monkeypatch):
    """The manifest's `configurations` contribution: napari's preferences -> a new widget."""
    from napari import settings as napari_settings

    monkeypatch.setattr(napari_settings, "_CFG_PATH", str(tmp_path / "settings.yaml"))
    napari_settings._clear_plugin_settings_cache()
    try:
        prefs = napari_settings.get_plugin_settings("napari-berdiff").widget
        assert (prefs.device, prefs.noise_level, prefs.threshold, prefs.steps, prefs.seed) == ("auto", 200, 0.5, 20, 0)
        prefs.noise_level, prefs.steps, prefs.threshold, prefs.seed = 60, 6, 0.3, 7
        prefs.p_sweep, prefs.device, prefs.checkpoint = "", "cuda:7", str(ckpt4)
        assert "noise_level: 60" in (tmp_path / "napari-berdiff.yaml").read_text()  # saved
        viewer = make_napari_viewer()
        add_small_case(viewer)
        w = BerdiffWidget(viewer)
        assert (w.c.L.value, w.c.steps.value, w.c.P.value, w.c.seed.value) == (60, 6, 0.3, 7)
        assert not w.c.sweep_on.value
        assert w.c.device.value == "cuda:7" and "cpu" in w.c.device_info.value  # visible fallback
        assert w.checkpoint is not None and w.checkpoint.sha256 and w.c.run.enabled
    finally:
        napari_settings._clear_plugin_settings_cache()


def test_cancel_during_post_processing_is_quick_and_leaves_no_layers(make_napari_viewer, qtbot, ckpt4, monkeypatch):
    import time

    import napari_berdiff.plugin.run as run_mod

    slow = run_mod._segment_one

    def segment_one(*args):
        time.sleep(0.3)  # a big slice
        return slow(*args)

    monkeypatch.setattr(run_mod, "_segment_one", segment_one)
    viewer = make_napari_viewer()
    add_small_case(viewer)
    w = BerdiffWidget(viewer)
    _configure(w, ckpt4, L=10, steps=2, sweep="", scope="all slices")
    n = len(viewer.layers)
    w.run()
    qtbot.waitUntil(lambda: "post-processing (" in w.c.status.value, timeout=TIMEOUT)
    t = time.perf_counter()
    w.cancel()
    qtbot.waitUntil(lambda: not w.is_busy(), timeout=TIMEOUT)
    assert time.perf_counter() - t < 1.5  # within about one slice, not the 6 x 0.3 s volume
    qtbot.wait(100)
    assert len(viewer.layers) == n and w.outcome is None and w.c.status.value == "cancelled"


def test_segment_ticking_yields_cancellation_points_and_equals_segment_stack():
    import time

    from napari_berdiff.core.inference.calibration import foreground, resolve_rule
    from napari_berdiff.core.inference.postprocess import paper_anomaly_map
    from napari_berdiff.core.inference.result import Progress as Tick
    from napari_berdiff.plugin.run import _segment_ticking, segment_stack

    rng = np.random.default_rng(0)
    x = rng.random((5, 2, 30, 30)).astype(np.float32)
    rec = np.clip(x + rng.normal(0, 0.1, x.shape), 0, 1).astype(np.float32)
    paper = resolve_rule(None, "paper")
    gen = _segment_ticking(x, rec, paper, foreground(x), 7, 9, time.perf_counter(), every_s=0.0)
    ticks = []
    while True:
        try:
            ticks.append(next(gen))
        except StopIteration as stop:
            out, maps = stop.value
            break
    assert len(ticks) == 4 and all(isinstance(t, Tick) and (t.done, t.total) == (7, 9) for t in ticks)
    assert ticks[-1].stage == "post-processing (4/5 slices)"
    np.testing.assert_array_equal(out, segment_stack(x, rec))  # the paper rule: as before
    np.testing.assert_allclose(maps, paper_anomaly_map(x, rec))  # kept for re-segmenting
    # an absolute rule: map > t within the foreground, as berdiff detect
    fg = np.zeros((5, 30, 30), bool)
    fg[:, :, :15] = True
    t = float(np.median(maps))
    absolute = resolve_rule(None, "absolute", abs_threshold=t)
    gen = _segment_ticking(x, rec, absolute, fg, 7, 9, time.perf_counter(), every_s=10.0)
    with pytest.raises(StopIteration) as stop:
        next(gen)
    seg = stop.value.value[0]
    np.testing.assert_array_equal(seg, absolute.apply(maps, 10, 2, within=fg).astype(np.uint8))
    assert seg[:, :, :15].any() and not seg[:, :, 15:].any()


def test_empty_slices_are_skipped_and_an_all_empty_run_still_gives_layers(make_napari_viewer, qtbot, ckpt4, count_calls):
    viewer = make_napari_viewer()
    layers = add_small_case(viewer)
    for lay in layers:  # slice 0 holds no tissue at all (as outside the brain)
        data = lay.data.copy()
        data[0] = 0
        lay.data = data
    w = BerdiffWidget(viewer)
    _configure(w, ckpt4, L=10, steps=2, sweep="", scope="current slice")
    viewer.dims.set_current_step(0, 0)
    n_layers = len(viewer.layers)
    _run_and_wait(qtbot, w)
    assert count_calls.evals == 0  # nothing to sample: no network call
    assert len(viewer.layers) == n_layers + 4 + 3
    assert w.outcome.provenance["skipped_slices"] and not np.any(w.outcome.anomaly_map)


def test_the_L_slider_stops_at_the_models_trained_noise_levels(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    w = BerdiffWidget(viewer)
    w.set_checkpoint(tiny_checkpoint(tmp_path / "full.pt"))
    w.c.L.value = 800
    w.set_checkpoint(tiny_checkpoint(tmp_path / "limited.pt", max_L=300))
    assert w.c.L.max == 300 and "L <= 300" in w.c.model_info.value
    assert w.c.L.value <= 300  # the previous value is clamped into the model's range
    with pytest.raises(ValueError):
        w.c.L.value = 900
    w.set_checkpoint(tiny_checkpoint(tmp_path / "full2.pt"))
    assert w.c.L.max == 1000
