"""Clinical exports in a real napari viewer (Xvfb): DICOM series and OCT volumes open through the
manifest with the geometry of the core readers, run through the widget, and agree with
``berdiff detect``."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from _dicom_helpers import oblique_affine, stored_volume, write_series
from _plugin_helpers import configure, run_and_wait
from napari_berdiff.cli import main
from napari_berdiff.plugin.reader import napari_get_reader

pytestmark = pytest.mark.gui

SHAPE = (20, 24, 6)
SERIES = {"flair": "AX T2 FLAIR", "t1": "t1_mprage_tra", "t1ce": "T1 MPRAGE +C", "t2": "T2 TSE AX"}
FAST = ["--L", "20", "--steps", "4", "--device", "cpu", "--no-progress", "--threads", "1"]


def _study(root, A):
    from pydicom.uid import generate_uid

    study, frame, vols = generate_uid(), generate_uid(), {}
    for n, (mod, desc) in enumerate(SERIES.items()):
        vols[mod] = stored_volume(SHAPE, seed=n) + 200.0 * (n + 1)
        write_series(root / f"SE{n}", vols[mod], A, desc, series_number=n + 2, study_uid=study,
                     frame_uid=frame, transpose=True, reverse=True, seed=n)
    return vols


def test_a_dicom_study_opens_where_the_nifti_path_puts_it_and_runs_like_detect(
        make_napari_viewer, qtbot, ckpt4, tmp_path):
    A = oblique_affine()
    vols = _study(tmp_path / "study", A)
    nib.save(nib.Nifti1Image(vols["flair"], A), str(tmp_path / "flair.nii.gz"))
    viewer = make_napari_viewer()
    (ref,) = viewer.open(str(tmp_path / "flair.nii.gz"), plugin="napari-berdiff")
    layers = viewer.open(str(tmp_path / "study"), plugin="napari-berdiff")
    assert [ly.name for ly in layers] == ["study 2 AX T2 FLAIR", "study 3 t1_mprage_tra",
                                          "study 4 T1 MPRAGE +C", "study 5 T2 TSE AX"]
    assert [ly.metadata["modality"] for ly in layers] == ["flair", "t1", "t1ce", "t2"]
    flair = layers[0]
    assert flair.data.shape == (SHAPE[2], SHAPE[0], SHAPE[1])  # oblique: (k, j, i) of the series
    # every voxel of the NIfTI layer finds its value at the same world position in the series
    rng = np.random.default_rng(0)
    for idx in rng.integers(0, ref.data.shape, size=(12, 3)):
        world = ref.data_to_world(idx)
        d = np.rint(flair.world_to_data(world)).astype(int)
        np.testing.assert_allclose(flair.world_to_data(world), d, atol=1e-3)
        assert flair.data[tuple(d)] == ref.data[tuple(idx)]
    viewer.layers.remove(ref)
    # the widget picks the four series and gives the model the slices detect gives it
    dock, w = viewer.window.add_plugin_dock_widget("napari-berdiff", "Anomaly detection")
    configure(w, ckpt4, L=20, steps=4, sweep="0.5", P=0.5, scope="all slices")
    assert [cb.value.name for cb in w.inputs.combos] == [ly.name for ly in layers]
    run_and_wait(qtbot, w)
    rec = next(ly for ly in viewer.layers if ly.name == "study reconstruction FLAIR")
    (path,) = [p for p in rec.save(str(tmp_path / "rec.nii.gz"), plugin="napari-berdiff")
               if p.endswith(".nii.gz")]
    out = tmp_path / "out"
    assert main(["detect", str(tmp_path / "study"), "--model", str(ckpt4), "--out", str(out),
                 *FAST]) == 0
    theirs = nib.load(str(out / "study_berdiff_recon.nii.gz"))
    assert np.asarray(theirs.dataobj).max() > 0
    mine = nib.load(path)
    np.testing.assert_allclose(mine.affine, theirs.affine, atol=1e-4)
    np.testing.assert_allclose(np.asarray(mine.dataobj), np.asarray(theirs.dataobj)[..., 0],
                               atol=1e-5)


def test_a_folder_with_a_refused_series_opens_the_others_with_one_warning(make_napari_viewer,
                                                                           tmp_path, monkeypatch):
    from napari_berdiff.plugin import reader_clinical

    A = oblique_affine()
    files = write_series(tmp_path / "dcm", stored_volume(SHAPE), A, "T2 TSE", shuffle_names=False)
    write_series(tmp_path / "dcm", stored_volume(SHAPE, seed=1), A, "FLAIR", series_number=2,
                 shuffle_names=False, prefix="FL")
    files[2].unlink()  # T2 now misses a slice
    warnings = []
    monkeypatch.setattr(reader_clinical, "_notify_warning", warnings.append)
    viewer = make_napari_viewer()
    layers = viewer.open(str(tmp_path / "dcm"), plugin="napari-berdiff")
    assert [ly.name for ly in layers] == ["dcm 2 FLAIR"]
    assert len(warnings) == 1 and "'1 T2 TSE'" in warnings[0] and "slice(s) missing" in warnings[0]


def test_unsupported_and_broken_inputs_give_one_notification(make_napari_viewer, tmp_path,
                                                             monkeypatch):
    from napari_berdiff.plugin import reader as _reader

    errors = []
    monkeypatch.setattr(_reader, "_notify_error", errors.append)
    zeiss = tmp_path / "scan.fds"
    zeiss.write_bytes(b"\0" * 64)
    assert napari_get_reader(str(zeiss)) is not None
    files = write_series(tmp_path / "dcm", stored_volume(SHAPE), oblique_affine(), "T2",
                         shuffle_names=False)
    files[1].write_bytes(files[1].read_bytes()[:300])
    viewer = make_napari_viewer()
    for path in (zeiss, tmp_path / "dcm"):
        assert viewer.open(str(path), plugin="napari-berdiff") == []
    assert len(viewer.layers) == 0 and len(errors) == 2
    assert "Topcon FDS file, which napari-berdiff cannot read" in errors[0]
    assert "IM00001 has no SeriesInstanceUID" in errors[1]
    assert all("\n" not in e for e in errors)


def test_an_oct_volume_opens_with_localizer_and_annotations_and_runs_like_detect(
        make_napari_viewer, qtbot, ckpt1, tmp_path):
    from _oct_helpers import LOC_SCALE, SPACING, bscans, eye_volume

    imgs, masks, lines = bscans(3)
    eye_volume(imgs, masks, lines).save(tmp_path / "scan.eye")
    viewer = make_napari_viewer()
    layers = viewer.open(str(tmp_path / "scan.eye"), plugin="napari-berdiff")
    names = {ly.name: ly for ly in layers}
    assert list(names) == ["scan localizer", "scan B-scan positions", "scan",
                           "scan layer segmentation", "scan drusen"]
    vol = names["scan"]
    assert vol.data.shape == imgs.shape and vol.metadata["modality"] == "oct"
    np.testing.assert_allclose(vol.scale, SPACING)
    np.testing.assert_allclose(names["scan localizer"].scale, (LOC_SCALE, LOC_SCALE))
    assert type(names["scan B-scan positions"]).__name__ == "Shapes"
    assert len(names["scan B-scan positions"].data) == 3
    np.testing.assert_array_equal(names["scan drusen"].data, masks)
    seg = names["scan layer segmentation"]
    np.testing.assert_allclose(seg.scale, SPACING)
    k, x = 1, 300  # the BM line (third boundary) is drawn where the file puts it
    assert seg.data[k, int(np.rint(lines["BM"][k, x])), x] == 3
    dock, w = viewer.window.add_plugin_dock_widget("napari-berdiff", "Anomaly detection")
    configure(w, ckpt1, L=20, steps=4, sweep="0.5", P=0.5, scope="all slices")
    assert [cb.value.name for cb in w.inputs.combos] == ["scan"]
    run_and_wait(qtbot, w)
    rec = next(ly for ly in viewer.layers if ly.name.startswith("scan reconstruction"))
    np.testing.assert_allclose(rec.scale, SPACING)
    out = tmp_path / "out"
    assert main(["detect", str(tmp_path / "scan.eye"), "--model", str(ckpt1), "--out", str(out),
                 *FAST]) == 0
    theirs = np.asarray(nib.load(str(out / "scan_berdiff_recon.nii.gz")).dataobj)
    assert theirs.shape == (512, 496, 3) and theirs.max() > 0
    np.testing.assert_allclose(np.transpose(theirs, (2, 1, 0)), rec.data, atol=1e-5)
    # the figures against the file's drusen: the widget's equal those detect wrote
    import json

    from napari_berdiff.core.evaluation.reference import reference_line

    written = json.loads((out / "scan_berdiff_reference.json").read_text())["figures"]
    assert list(w.reference) == list(written) == ["drusen"]
    mine, theirs = w.reference["drusen"], written["drusen"]
    assert mine["slices_with_annotation"] == theirs["slices_with_annotation"] == int(
        masks.any(axis=(1, 2)).sum())
    for key in ("dice", "auprc"):
        assert mine[key]["n"] == theirs[key]["n"]
        assert mine[key]["mean"] == pytest.approx(theirs[key]["mean"], abs=1e-4)
        assert mine[f"{key}_pooled"] == pytest.approx(theirs[f"{key}_pooled"], abs=1e-4)
    assert w.c.status.value.endswith("Against the file's annotation: "
                                     + reference_line(w.reference))



class _Click:
    """A mouse event as napari hands it to a layer's drag callback (world position, type)."""

    def __init__(self, position):
        self.position, self.type = tuple(position), "mouse_press"


def _click(layer, position, drag=False):
    """Run the layer's B-scan jump callback through press, (move,) release."""
    (cb,) = [cb for cb in layer.mouse_drag_callbacks if getattr(cb, "_berdiff_bscan_jump", 0)]
    ev = _Click(position)
    gen = cb(layer, ev)
    next(gen)
    if drag:
        ev.type = "mouse_move"
        next(gen)
    ev.type = "mouse_release"
    with pytest.raises(StopIteration):
        next(gen)


def test_clicking_a_b_scan_line_on_the_localizer_jumps_to_that_b_scan(make_napari_viewer,
                                                                      tmp_path):
    from _oct_helpers import SPACING, bscans, write_heyex_xml

    imgs, _, lines = bscans(6)
    write_heyex_xml(tmp_path / "export", imgs, lines)
    viewer = make_napari_viewer()
    layers = viewer.open(str(tmp_path / "export"), plugin="napari-berdiff")
    names = {ly.name: ly for ly in layers}
    loc, pos, vol = names["export localizer"], names["export B-scan positions"], names["export"]
    assert vol.data.shape[0] == 6
    viewer.dims.set_point(0, 0.0)
    assert viewer.dims.current_step[0] == 0

    def world_near(k, drow=0.0):
        """A world point 30% along line k, ``drow`` localizer pixels off it."""
        (r0, c0), (r1, c1) = np.asarray(pos.data[k])[:, -2:]
        p = (r0 + 0.3 * (r1 - r0) + drow, c0 + 0.3 * (c1 - c0))
        return (viewer.dims.point[0], *pos.data_to_world(p))

    _click(pos, world_near(4, drow=1.5))
    assert viewer.dims.current_step[0] == 4
    np.testing.assert_allclose(viewer.dims.point[0], 4 * SPACING[0])
    _click(loc, world_near(1))  # the localizer's own click too
    assert viewer.dims.current_step[0] == 1
    _click(pos, world_near(3), drag=True)  # a drag (panning) does not jump
    assert viewer.dims.current_step[0] == 1
    _click(pos, world_near(0, drow=200.0))  # far from every line: stays
    assert viewer.dims.current_step[0] == 1
    # the lines run bottom (B-scan 0) to top: B-scan k's line is the k-th from the bottom
    rows = [np.asarray(d)[0, -2] for d in pos.data]
    assert rows == sorted(rows, reverse=True)
