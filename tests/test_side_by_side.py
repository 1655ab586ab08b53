"""Side by side (input | reconstruction | difference in napari's grid) and back, in a real viewer
under Xvfb with a tiny random OCT model."""

from __future__ import annotations

import numpy as np
import pytest

from _plugin_helpers import new_widget, run_and_wait

pytestmark = pytest.mark.gui


def _state(viewer):
    """What toggling side by side on and off again must leave as it found."""
    grid = viewer.canvas.grid
    return ([(ly.name, ly.visible, ly.opacity) for ly in viewer.layers], grid.enabled, tuple(grid.shape))


def _oct(viewer, name="scan", seed=0):
    img = np.random.default_rng(seed).random((40, 50)).astype(np.float32)
    return viewer.add_image(img, name=name, metadata={"modality": "oct"})


@pytest.fixture
def scan_run(make_napari_viewer, qtbot, ckpt1):
    """(viewer, widget) after a run on one OCT scan "scan"."""
    viewer = make_napari_viewer()
    _oct(viewer)
    w = new_widget(viewer, ckpt1)
    run_and_wait(qtbot, w)
    return viewer, w


def _assert_grid(viewer, names):
    visible = [ly.name for ly in viewer.layers if ly.visible]
    assert visible == names
    grid = viewer.canvas.grid
    assert grid.enabled and tuple(grid.shape) == (1, 3)
    assert [grid.position(viewer.layers.index(n), viewer.layers) for n in names] == [(0, 0), (0, 1), (0, 2)]


def _assert_difference(viewer, base):
    diff, rec = viewer.layers[f"{base} difference"], viewer.layers[f"{base} reconstruction"]
    np.testing.assert_allclose(diff.data, viewer.layers[base].data - rec.data, atol=1e-6)


def test_toggling_off_restores_the_viewer_and_later_runs_add_no_difference(make_napari_viewer, qtbot, ckpt1):
    viewer = make_napari_viewer()
    _oct(viewer)
    notes = viewer.add_points(np.array([[5.0, 5.0]]), name="notes", visible=False)
    w = new_widget(viewer, ckpt1)
    run_and_wait(qtbot, w)
    before = _state(viewer)
    assert viewer.layers["scan anomaly map"].visible and not viewer.layers["scan reconstruction"].visible

    w.toggle_side_by_side()
    assert w.side_by_side.active and w.outputs.difference_on
    _assert_grid(viewer, ["scan", "scan reconstruction", "scan difference"])
    _assert_difference(viewer, "scan")
    assert not notes.visible

    w.toggle_side_by_side()
    assert not w.side_by_side.active and not w.outputs.difference_on
    assert "scan difference" not in viewer.layers
    assert _state(viewer) == before

    # later runs (a new seed, a P from the sweep) add no difference layer and keep the visibility
    w.c.seed.value = 7
    run_and_wait(qtbot, w)
    assert "scan difference" not in viewer.layers and _state(viewer) == before
    # ... until side by side is on again, and off again
    w.toggle_side_by_side()
    _assert_grid(viewer, ["scan", "scan reconstruction", "scan difference"])
    w.toggle_side_by_side()
    assert "scan difference" not in viewer.layers and _state(viewer) == before


def test_showing_twice_in_a_row_keeps_the_first_snapshot(scan_run):
    viewer, w = scan_run
    before = _state(viewer)
    w.side_by_side.show(w.outcome, 0, w.context)
    w.side_by_side.show(w.outcome, 0, w.context)  # a second "on" must not save the grid as "before"
    assert len([ly for ly in viewer.layers if ly.name == "scan difference"]) == 1
    _assert_grid(viewer, ["scan", "scan reconstruction", "scan difference"])
    w.toggle_side_by_side()
    assert _state(viewer) == before and "scan difference" not in viewer.layers
    w.side_by_side.restore()  # off twice: nothing to undo
    assert _state(viewer) == before


def test_toggling_without_outputs_gives_a_message(make_napari_viewer, ckpt1):
    viewer = make_napari_viewer()
    _oct(viewer)
    w = new_widget(viewer, ckpt1)
    before = _state(viewer)
    w.toggle_side_by_side()
    assert "run" in w.c.status.value.lower()
    assert not w.side_by_side.active and not w.outputs.difference_on
    assert _state(viewer) == before


def test_a_rerun_while_on_keeps_the_grid_on_the_new_outputs(make_napari_viewer, qtbot, ckpt1):
    viewer = make_napari_viewer()
    _oct(viewer)
    w = new_widget(viewer, ckpt1, sweep="0.3, 0.7")
    run_and_wait(qtbot, w)
    before = _state(viewer)
    w.toggle_side_by_side()
    old = viewer.layers["scan difference"].data.copy()

    w.c.seed.value = 3  # a re-run on the same input
    run_and_wait(qtbot, w)
    _assert_grid(viewer, ["scan", "scan reconstruction", "scan difference"])
    _assert_difference(viewer, "scan")
    assert not np.allclose(viewer.layers["scan difference"].data, old)

    w.c.P.value = 0.7  # another P of the sweep: swapped in place, the grid follows
    qtbot.wait(50)
    assert w.shown == w.outcome.index_of(0.7)
    _assert_grid(viewer, ["scan", "scan reconstruction", "scan difference"])
    _assert_difference(viewer, "scan")

    w.toggle_side_by_side()
    assert _state(viewer) == before and "scan difference" not in viewer.layers


def test_a_run_on_another_input_while_on_moves_the_grid_and_off_removes_both_differences(
        scan_run, qtbot):
    viewer, w = scan_run
    before = _state(viewer)
    w.toggle_side_by_side()

    other = _oct(viewer, "other", seed=1)
    w.inputs.combos[0].value = other
    run_and_wait(qtbot, w)
    _assert_grid(viewer, ["other", "other reconstruction", "other difference"])
    _assert_difference(viewer, "other")

    w.toggle_side_by_side()
    assert not viewer.canvas.grid.enabled and not w.outputs.difference_on
    assert not any(ly.name.endswith(" difference") for ly in viewer.layers)
    # the layers from before as they were, first; the new run's outputs as a run leaves them
    assert _state(viewer)[0][:len(before[0])] == before[0]
    assert viewer.layers["other"].visible and viewer.layers["other anomaly map"].visible
    assert not viewer.layers["other reconstruction"].visible


def test_a_deleted_reconstruction_is_put_back(scan_run):
    viewer, w = scan_run
    viewer.layers.remove("scan reconstruction")
    before = _state(viewer)
    w.toggle_side_by_side()
    _assert_grid(viewer, ["scan", "scan reconstruction", "scan difference"])
    _assert_difference(viewer, "scan")
    w.toggle_side_by_side()
    names = [n for n, *_ in _state(viewer)[0]]
    assert "scan difference" not in names and names[:len(before[0])] == [n for n, *_ in before[0]]
    assert not viewer.layers["scan reconstruction"].visible


def test_a_deleted_input_gives_a_warning_not_a_traceback(scan_run):
    viewer, w = scan_run
    viewer.layers.remove("scan")
    before = _state(viewer)
    w.toggle_side_by_side()
    assert not w.side_by_side.active and not w.outputs.difference_on and _state(viewer) == before


def test_the_view_is_fitted_to_the_grid(scan_run):
    viewer, w = scan_run
    viewer.reset_view()
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera  # napari >= 0.9
    one_image = camera.zoom  # fitted to a single image
    w.toggle_side_by_side()
    assert camera.zoom < 0.6 * one_image  # three images side by side: zoomed out to fit
