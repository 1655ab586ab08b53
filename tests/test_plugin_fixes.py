"""Fixes from issue 15's new-user audit in a real viewer: the mask evolution keeps napari's
sliders to the input's axes (its step is the dock's slider), the side-by-side difference panel has
a black background, and a three-line status message is shown whole."""

from __future__ import annotations

import numpy as np
import pytest

from _plugin_helpers import add_small_case, new_widget, run_and_wait

pytestmark = pytest.mark.gui


def test_the_mask_evolution_leaves_the_slice_axis_first(make_napari_viewer, qtbot, ckpt4):
    viewer = make_napari_viewer()
    layers = add_small_case(viewer)
    labels = tuple(viewer.dims.axis_labels)
    w = new_widget(viewer, ckpt4, L=20, steps=4, sweep="", scope="all slices")
    z = 2
    viewer.dims.set_point(0, layers[0].data_to_world((z, 0, 0))[0])
    run_and_wait(qtbot, w)
    mask = viewer.layers["case mask evolution"]
    assert viewer.dims.ndim == 3 and tuple(viewer.dims.axis_labels) == labels
    # napari's first slider is still the slice: moving it moves the input's slice
    viewer.dims.set_point(0, layers[0].data_to_world((4, 0, 0))[0])
    assert int(round(layers[0].world_to_data(viewer.dims.point)[0])) == 4
    # the step is the dock's slider, at the last step after a run
    hist = w.outcome.mask_history[:, w.shown]  # (S, N, h, w)
    step = w.c.evolution_step
    assert step.max == len(hist) - 1 == step.value and step.enabled
    np.testing.assert_allclose(mask.data[w.outcome.slices], hist[-1].astype(np.float32))
    step.value = 0
    np.testing.assert_allclose(mask.data[w.outcome.slices], hist[0].astype(np.float32))
    assert mask.metadata["step"] == 0 and not np.allclose(hist[0], hist[-1])


def test_the_mask_evolution_of_a_2d_image_adds_no_viewer_axis(make_napari_viewer, qtbot, ckpt1):
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(0).random((40, 50)).astype(np.float32), name="scan",
                     metadata={"modality": "oct"})
    w = new_widget(viewer, ckpt1, sweep="0.5")
    run_and_wait(qtbot, w)
    assert viewer.dims.ndim == 2 and viewer.layers["scan mask evolution"].data.ndim == 2


def test_the_difference_panel_has_a_black_background(make_napari_viewer, qtbot, ckpt1):
    viewer = make_napari_viewer()
    img = np.zeros((40, 50), np.float32)
    img[8:32, 10:40] = np.random.default_rng(0).random((24, 30))
    viewer.add_image(img, name="scan", metadata={"modality": "oct"})
    w = new_widget(viewer, ckpt1, sweep="0.5")
    run_and_wait(qtbot, w)
    w.toggle_side_by_side()
    diff = viewer.layers["scan difference"]
    lo, hi = diff.contrast_limits
    assert lo == -hi  # 0 (no difference) at the colormap's middle
    np.testing.assert_allclose(diff.colormap.map(np.array([0.5]))[0, :3], 0.0, atol=1e-6)
    assert diff.colormap.map(np.array([1.0]))[0, :3].max() > 0.5  # differences stay visible


def test_a_three_line_status_is_shown_whole(make_napari_viewer, qtbot, ckpt1):
    viewer = make_napari_viewer(show=True)
    w = new_widget(viewer, ckpt1)
    viewer.window.add_dock_widget(w, name="berdiff")
    qtbot.wait(50)
    label = w.c.status.native
    two = label.height()
    w.c.message("done: 1.2 s on cpu, 1 slice(s) x 9 P (L=200, S=20, seed 0). Note: the model has "
                "no calibration (berdiff calibrate MODEL PREPARED adds one); segmenting with the "
                "paper rule: each slice's map scaled to its own 1st-99th percentiles, > 0.5")
    qtbot.wait(50)
    need = label.heightForWidth(label.width())
    assert need > two and label.height() >= need
