"""Which layers and model the widget picks as layers come and go, what it does when it leaves the
viewer mid-run, and its layout with long layer names (real viewer under Xvfb, tiny random models).
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np
import pytest

from _plugin_helpers import add_small_case, new_widget, run_and_wait, tiny_checkpoint
from napari_berdiff.plugin.widget import BerdiffWidget
from napari_berdiff.core.inference.detector import Detector

pytestmark = pytest.mark.gui
TIMEOUT = 120_000
PLOT_DOCK = "berdiff: scores per slice"


@pytest.fixture
def slow_network(monkeypatch):
    """Each network evaluation takes 50 ms, so that a run is surely in flight when the test acts."""
    orig = Detector._flip_model

    def flip(self, z, t):
        time.sleep(0.05)
        return orig(self, z, t)

    monkeypatch.setattr(Detector, "_flip_model", flip)


def _oct(viewer, name, seed=0):
    img = np.random.default_rng(seed).random((40, 48)).astype(np.float32)
    return viewer.add_image(img, name=name, metadata={"modality": "oct"})


def _picked(w):
    return [cb.value for cb in w.inputs.combos]


def test_the_input_follows_a_layer_just_opened_and_stays_after_a_run(make_napari_viewer, qtbot, ckpt1):
    viewer = make_napari_viewer()
    a = _oct(viewer, "a")
    w = new_widget(viewer, ckpt1)
    assert _picked(w) == [a]
    b = _oct(viewer, "b", seed=1)
    assert _picked(w) == [b]  # the image just opened, not the one opened before it
    run_and_wait(qtbot, w)
    assert w.context.layers == [b]
    assert _picked(w) == [b]  # the run's output layers did not move it
    assert viewer.layers.selection.active.name == "b anomaly map"  # layer controls show the map
    viewer.layers.move(viewer.layers.index(a), len(viewer.layers))  # a reorder does not either
    assert _picked(w) == [b]
    w.inputs.combos[0].value = a  # the user's choice stays, whatever is opened next
    _oct(viewer, "c", seed=2)
    assert _picked(w) == [a]


def test_a_lone_modality_fills_its_slot_and_a_new_case_takes_over_once_complete(make_napari_viewer, qtbot, ckpt4):
    viewer = make_napari_viewer()
    w = new_widget(viewer, ckpt4)
    flair = viewer.add_image(np.ones((4, 32, 32), np.float32), name="x FLAIR",
                             metadata={"modality": "flair", "case": "x"})
    assert _picked(w) == [flair, None, None, None]
    assert not w.c.run.enabled
    assert w.c.multi.value is None  # a 3D FLAIR volume is not taken for a (C, Y, X) stack
    a = add_small_case(viewer, name="caseA")
    assert _picked(w) == a
    run_and_wait(qtbot, w)
    assert _picked(w) == a
    b = add_small_case(viewer, name="caseB")
    assert _picked(w) == b  # the case opened last, once all its modalities are in


def test_a_plain_2d_image_gets_the_one_channel_model(make_napari_viewer):
    viewer = make_napari_viewer()
    layer = viewer.add_image(np.random.default_rng(0).random((300, 400)))
    w = BerdiffWidget(viewer)
    assert w.c.model_choice.value == "bundled OCT model"
    assert _picked(w) == [layer]


def test_a_modality_the_model_was_not_trained_on_is_named(make_napari_viewer, ckpt1):
    viewer = make_napari_viewer()
    viewer.add_image(np.ones((40, 48), np.float32), name="scan FLAIR", metadata={"modality": "flair"})
    w = new_widget(viewer, ckpt1)
    assert "looks like FLAIR" in w.c.input_info.value and "OCT" in w.c.input_info.value


def test_long_layer_names_do_not_widen_the_widget_and_run_stays_in_sight(make_napari_viewer, ckpt4):
    from qtpy.QtWidgets import QScrollArea

    viewer = make_napari_viewer()
    add_small_case(viewer, name="c")
    w = new_widget(viewer, ckpt4)
    short = w.c.container.native.minimumSizeHint().width()
    viewer.layers.clear()
    add_small_case(viewer, name="BraTS20_Training_001_a_case_with_a_long_folder_name")
    assert all(cb.value is not None for cb in w.inputs.combos)
    assert w.c.container.native.minimumSizeHint().width() <= short + 2
    scroll = w.findChild(QScrollArea)
    for ctl in (w.c.run, w.c.cancel, w.c.status):  # pinned below the scrolling settings
        assert not scroll.widget().isAncestorOf(ctl.native)
        assert w.isAncestorOf(ctl.native)


def _sampling(make_napari_viewer, qtbot, ckpt4, dock: bool):
    """(viewer, widget, layer count before the run) with a slow all-slices run sampling."""
    viewer = make_napari_viewer()
    add_small_case(viewer, name="case")
    w = new_widget(viewer, ckpt4, L=40, steps=40, scope="all slices")
    if dock:
        viewer.window.add_dock_widget(w, name="berdiff")
    n = len(viewer.layers)
    assert w.run() is not None
    qtbot.waitUntil(lambda: "sampling" in w.c.status.value, timeout=TIMEOUT)
    return viewer, w, n


def test_closing_the_dock_mid_run_cancels_it_and_removes_the_plot(make_napari_viewer, qtbot, ckpt4, slow_network):
    viewer, w, n = _sampling(make_napari_viewer, qtbot, ckpt4, dock=True)
    assert PLOT_DOCK in viewer.window._wrapped_dock_widgets
    viewer.window.remove_dock_widget(w)  # what the dock's close button does
    qtbot.waitUntil(lambda: not w.is_busy(), timeout=TIMEOUT)
    qtbot.wait(200)
    assert len(viewer.layers) == n  # nothing of the run landed
    assert PLOT_DOCK not in viewer.window._wrapped_dock_widgets


def test_changing_the_model_mid_run_cancels_it(make_napari_viewer, qtbot, ckpt4, slow_network):
    viewer, w, n = _sampling(make_napari_viewer, qtbot, ckpt4, dock=False)
    w.c.model_choice.value = "bundled OCT model"
    qtbot.waitUntil(lambda: not w.is_busy(), timeout=TIMEOUT)
    qtbot.wait(200)
    assert len(viewer.layers) == n and w.outcome is None
    assert "cancelled" in w.c.status.value


def test_closing_the_viewer_mid_run_raises_nothing(make_napari_viewer, qtbot, ckpt4, slow_network):
    viewer, w, _ = _sampling(make_napari_viewer, qtbot, ckpt4, dock=True)
    viewer.close()  # pytest-qt fails the test on an exception raised in a Qt callback
    qtbot.waitUntil(lambda: not w.is_busy(), timeout=TIMEOUT)
    qtbot.wait(300)


def test_the_eta_waits_for_a_second_tick_and_is_never_negative(make_napari_viewer, ckpt1):
    viewer = make_napari_viewer()
    _oct(viewer, "a")
    w = new_widget(viewer, ckpt1)
    w.runner.ui_interval = 0.0  # every tick is shown
    for done, elapsed in ((1, 2.0), (3, 3.0)):
        w.runner.progress(SimpleNamespace(stage="sampling", done=done, total=11, elapsed=elapsed,
                                          masked=float("nan")))
        if done == 1:
            assert "ETA" not in w.c.status.value
    assert "ETA 4.0 s" in w.c.status.value  # 0.5 s per step from the first tick shown, 8 to go


def test_sweeps_checkpoint_folders_and_boolean_images(tmp_path):
    from napari_berdiff.plugin.inputs import FILE_CHOICE, build_volume, model_source, parse_sweep

    assert parse_sweep("0.9:0.1:0.2") == parse_sweep("0.1:0.9:0.2") == [0.1, 0.3, 0.5, 0.7, 0.9]
    path, msg = model_source(FILE_CHOICE, tmp_path)
    assert path is None and "is a folder" in msg
    mask = SimpleNamespace(name="mask", data=np.eye(5, dtype=bool), multiscale=False)
    vol = build_volume([mask])
    assert vol.dtype == np.float32 and vol.shape == (1, 1, 5, 5) and vol.sum() == 5


def test_a_volume_stored_lps_or_ras_gives_the_same_maps(make_napari_viewer, qtbot, tmp_path):
    import nibabel as nib

    ck = tiny_checkpoint(tmp_path / "flair1.pt", channels=1, names=["flair"], modality="brats")
    x, y = np.meshgrid(np.linspace(-1, 1, 40), np.linspace(-1, 1, 36), indexing="ij")
    head = ((x / 0.8) ** 2 + (y / 0.6) ** 2 < 1) * (300.0 + 400.0 * ((x - 0.3) ** 2 + y ** 2 < 0.04))
    ras = np.repeat(head[..., None], 3, axis=2).astype(np.float32)
    lps_affine = np.array([[-1.0, 0, 0, 39], [0, -1.0, 0, 35], [0, 0, 1.0, 0], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(ras, np.eye(4)), str(tmp_path / "ras.nii.gz"))
    nib.save(nib.Nifti1Image(ras[::-1, ::-1].copy(), lps_affine), str(tmp_path / "lps.nii.gz"))
    viewer = make_napari_viewer()
    for name in ("ras", "lps"):
        viewer.open(str(tmp_path / f"{name}.nii.gz"), plugin="napari-berdiff")
    la, lb = viewer.layers["ras"], viewer.layers["lps"]
    np.testing.assert_array_equal(la.data, lb.data)  # the same head, shown the same way
    w = new_widget(viewer, ck, L=6, steps=3, scope="all slices")
    maps = {}
    for layer in (la, lb):
        w.inputs.combos[0].value = layer
        run_and_wait(qtbot, w)
        maps[layer.name] = np.asarray(viewer.layers[f"{layer.name} anomaly map"].data).copy()
    assert maps["ras"].max() > 0
    np.testing.assert_allclose(maps["lps"], maps["ras"], atol=1e-6)


def test_the_score_plot_keeps_to_the_slices_that_ran(make_napari_viewer):
    from napari_berdiff.plugin.score_plot import ScorePlot

    viewer = make_napari_viewer()
    layer = viewer.add_image(np.zeros((160, 8, 8), np.float32))
    viewer.dims.set_point(0, 0)  # the cursor far from the slices that ran
    plot = ScorePlot(viewer)
    plot.set_data(layer, [150, 151, 152, 153, 154], np.linspace(0.1, 0.2, 5))
    assert plot.ax.get_xlim() == (149.5, 154.5)  # five readable ticks, not a pile at one end


def test_brats2023_layer_names_are_matched_to_the_channels():
    from napari_berdiff.plugin.inputs import auto_pick

    names = {m: SimpleNamespace(name=f"BraTS-GLI-00002-000-{m}", metadata={})
             for m in ("t1n", "t2w", "t2f", "t1c")}
    pick = auto_pick(list(names.values()), ["flair", "t1", "t1ce", "t2"], 4)
    assert [ly.name[-3:] for ly in pick] == ["t2f", "t1n", "t1c", "t2w"]


def test_channels_on_different_voxel_grids_are_refused():
    from napari_berdiff.plugin.inputs import InputError, build_volume

    def layer(name, zoom):
        return SimpleNamespace(name=name, data=np.ones((3, 8, 8), np.float32), multiscale=False,
                               metadata={"affine": np.diag([zoom, zoom, zoom, 1.0])})

    assert build_volume([layer("a FLAIR", 1.0), layer("a T1", 1.0)]).shape == (2, 3, 8, 8)
    with pytest.raises(InputError, match="same voxel grid"):
        build_volume([layer("a FLAIR", 1.0), layer("a T1", 3.0)])


def test_a_bmp_b_scan_opens_through_the_plugin(make_napari_viewer, tmp_path):
    from PIL import Image

    img = (np.random.default_rng(0).random((40, 48)) * 255).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "scan.bmp")
    viewer = make_napari_viewer()
    viewer.open(str(tmp_path / "scan.bmp"), plugin="napari-berdiff")
    layer = viewer.layers["scan"]
    np.testing.assert_allclose(layer.data, img / 255.0, atol=1e-6)
    assert layer.metadata.get("modality") == "oct"


def test_no_size_warning_for_b_scans_resized_as_in_training(make_napari_viewer, ckpt1):
    from napari_berdiff.plugin.inputs import fit_note
    from napari_berdiff.core.models.checkpoint import load_checkpoint

    ck = load_checkpoint(ckpt1)  # "resize" mode, 32 px
    assert fit_note(ck, (496, 512)) is None  # OCT2017-size B-scans shrink as the training's did
    assert "enlarged" in fit_note(ck, (10, 12))


def test_a_data_set_root_opens_per_class_or_says_what_to_open(tmp_path, monkeypatch):
    from PIL import Image

    from napari_berdiff.plugin import reader as _reader

    root = tmp_path / "OCT2017"
    for cls, n in (("NORMAL", 2), ("DRUSEN", 3)):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((20, 24), 40 * i, np.uint8)).save(root / cls / f"{cls}-{i}-1.jpeg")
    reader = _reader.napari_get_reader(str(root))
    assert reader is not None
    layers = reader(str(root))
    assert sorted(kw["name"] for _, kw, _ in layers) == ["DRUSEN", "NORMAL"]
    assert sorted(d.shape[0] for d, _, _ in layers) == [2, 3]
    errors = []
    monkeypatch.setattr(_reader, "_notify_error", errors.append)
    monkeypatch.setattr(_reader, "MAX_PARENT_IMAGES", 4)
    assert reader(str(root)) == [(None,)] and "open one subfolder" in errors[-1]
    cases = tmp_path / "BraTS_root" / "BraTS20_Training_001"
    cases.mkdir(parents=True)
    (cases / "BraTS20_Training_001_flair.nii.gz").write_bytes(b"")
    assert _reader.napari_get_reader(str(tmp_path / "BraTS_root"))(str(tmp_path / "BraTS_root")) == [(None,)]
    assert "open one case folder" in errors[-1] and "berdiff detect" in errors[-1]
