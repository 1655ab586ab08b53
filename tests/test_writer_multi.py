"""napari plugin: saving several layers at once (File > Save Selected Layers with the anomaly map
and the segmentation selected) writes one NIfTI per layer into a folder, with the source affine and
the single-layer writers' provenance, atomically and without replacing existing files."""

from __future__ import annotations

import json
import warnings

import nibabel as nib
import numpy as np
import pytest

from napari_berdiff.plugin.writer import write_image, write_labels

pytestmark = pytest.mark.gui

AFFINE = np.array([[2.0, 0, 0, -40.0],   # x: 2 mm, towards the patient's right (RAS)
                   [0, 1.5, 0, 12.0],    # y: 1.5 mm, anterior
                   [0, 0, 3.0, -7.5],    # z: 3 mm, superior
                   [0, 0, 0, 1]])
PROV = {"L": 200, "P": [0.5], "S": 20}


def _viewer_with_outputs(make_napari_viewer, tmp_path):
    """A viewer with a NIfTI source opened by the plugin, an anomaly map (with provenance) and a
    segmentation on its grid; the two outputs are selected."""
    vol = np.random.default_rng(0).random((10, 12, 5)).astype(np.float32) * 100
    src = tmp_path / "src.nii.gz"
    nib.save(nib.Nifti1Image(vol, AFFINE), str(src))
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(src), plugin="napari-berdiff")
    geom = dict(scale=layer.scale, translate=layer.translate)
    amap = viewer.add_image(np.asarray(layer.data) * 0.5, name="src anomaly map", **geom,
                            metadata=dict(layer.metadata, provenance=PROV, output="anomaly map"))
    seg = viewer.add_labels((np.asarray(layer.data) > 50).astype(np.uint8), name="src segmentation",
                            **geom, metadata=dict(layer.metadata, output="segmentation"))
    viewer.layers.selection = {amap, seg}
    return viewer, vol, amap, seg


def _save(viewer, path, **kw):
    """``viewer.layers.save`` of the selection, failing on napari's 'no writer' warnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        return viewer.layers.save(str(path), selected=True, **kw)


def _listing(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


@pytest.mark.parametrize("name, folder, ext", [("both.nii.gz", "both", ".nii.gz"),
                                               ("both.nii", "both", ".nii"),
                                               ("both_dir", "both_dir", ".nii.gz")])
def test_save_selected_image_and_labels_writes_one_nifti_each(make_napari_viewer, tmp_path,
                                                               name, folder, ext):
    viewer, vol, amap, seg = _viewer_with_outputs(make_napari_viewer, tmp_path)
    written = _save(viewer, tmp_path / "saved" / name, plugin="napari-berdiff")
    out = tmp_path / "saved" / folder
    assert written == [str(out / f"src_anomaly_map{ext}"), str(out / "src_anomaly_map.json"),
                       str(out / f"src_segmentation{ext}")]
    assert _listing(tmp_path / "saved") == [folder] + [f"{folder}/{p}" for p in _listing(out)]
    assert _listing(out) == sorted(p.rsplit("/", 1)[1] for p in written)  # nothing else, no temp

    img = nib.load(written[0])
    np.testing.assert_allclose(img.affine, AFFINE)
    np.testing.assert_allclose(np.asarray(img.dataobj), vol * 0.5, rtol=1e-6)
    lab = nib.load(written[2])
    np.testing.assert_allclose(lab.affine, AFFINE)
    assert lab.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(lab.dataobj), (vol > 50).astype(np.uint8))
    side = json.loads((out / "src_anomaly_map.json").read_text())
    assert side["layer"] == "src anomaly map" and side["provenance"] == PROV

    # Reloaded with the plugin's reader: same data on the same grid, the segmentation as Labels.
    (a2,) = viewer.open(written[0], plugin="napari-berdiff")
    (s2,) = viewer.open(written[2], plugin="napari-berdiff")
    assert a2._type_string == "image" and s2._type_string == "labels"
    np.testing.assert_allclose(np.asarray(a2.data), np.asarray(amap.data), rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(s2.data), np.asarray(seg.data))
    for new, old in ((a2, amap), (s2, seg)):
        np.testing.assert_allclose(new.scale, old.scale)
        np.testing.assert_allclose(new.translate, old.translate)
        np.testing.assert_allclose(new.metadata["affine"], AFFINE)


def test_each_file_is_exactly_what_the_single_layer_writer_writes(make_napari_viewer, tmp_path):
    viewer, _, amap, seg = _viewer_with_outputs(make_napari_viewer, tmp_path)
    multi = _save(viewer, tmp_path / "both", plugin="napari-berdiff")
    (one_img, one_json) = write_image(str(tmp_path / "one" / "src_anomaly_map.nii.gz"),
                                      *amap.as_layer_data_tuple()[:2])
    (one_lab,) = write_labels(str(tmp_path / "one" / "src_segmentation.nii.gz"),
                              *seg.as_layer_data_tuple()[:2])
    for m, s in zip(multi, (one_img, one_json, one_lab)):
        if s.endswith(".json"):
            assert json.loads(open(m).read()) == json.loads(open(s).read())
            continue
        a, b = nib.load(m), nib.load(s)
        assert a.header.binaryblock == b.header.binaryblock  # affine, qform/sform, descrip, units
        np.testing.assert_array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))
    assert nib.load(multi[0]).header["descrip"].item().startswith(b"berdiff anomaly map L=200")


def test_a_folder_without_plugin_choice_is_written_by_the_plugin(make_napari_viewer, tmp_path):
    viewer, *_ = _viewer_with_outputs(make_napari_viewer, tmp_path)
    written = _save(viewer, tmp_path / "both_dir")
    assert [p.rsplit("/", 1)[1] for p in written] == ["src_anomaly_map.nii.gz", "src_anomaly_map.json",
                                                      "src_segmentation.nii.gz"]
    np.testing.assert_allclose(nib.load(written[2]).affine, AFFINE)


def test_existing_files_are_never_replaced(make_napari_viewer, tmp_path):
    viewer, *_ = _viewer_with_outputs(make_napari_viewer, tmp_path)
    out = tmp_path / "both"
    first = _save(viewer, out, plugin="napari-berdiff")
    before = {p: open(p, "rb").read() for p in first}
    viewer.layers["src anomaly map"].data = viewer.layers["src anomaly map"].data * 2
    with pytest.raises(FileExistsError, match="src_anomaly_map.nii.gz"):
        _save(viewer, out, plugin="napari-berdiff")
    assert {p: open(p, "rb").read() for p in first} == before
    assert _listing(out) == sorted(p.rsplit("/", 1)[1] for p in first)

    # A file where the folder should be is refused too.
    (tmp_path / "afile").write_text("keep")
    with pytest.raises(FileExistsError, match="not a folder"):
        _save(viewer, tmp_path / "afile", plugin="napari-berdiff")
    assert (tmp_path / "afile").read_text() == "keep"


def test_an_existing_folder_gets_the_new_files_beside_its_own(make_napari_viewer, tmp_path):
    viewer, *_ = _viewer_with_outputs(make_napari_viewer, tmp_path)
    out = tmp_path / "results"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    written = _save(viewer, out, plugin="napari-berdiff")
    assert _listing(out) == ["notes.txt", "src_anomaly_map.json", "src_anomaly_map.nii.gz",
                             "src_segmentation.nii.gz"]
    assert (out / "notes.txt").read_text() == "mine"
    assert all(nib.load(p).shape == (10, 12, 5) for p in written if not p.endswith(".json"))


@pytest.mark.parametrize("existing", [False, True])
def test_a_failure_leaves_nothing_behind(make_napari_viewer, tmp_path, monkeypatch, existing):
    viewer, *_ = _viewer_with_outputs(make_napari_viewer, tmp_path)
    out = tmp_path / "saved" / "both"
    if existing:
        out.mkdir(parents=True)
        (out / "notes.txt").write_text("mine")
    real_save, calls = nib.save, []

    def failing_save(img, filename):  # the first layer is written, the second fails
        calls.append(filename)
        if len(calls) == 2:
            raise OSError("disk full")
        real_save(img, filename)

    monkeypatch.setattr(nib, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        _save(viewer, out, plugin="napari-berdiff")
    assert len(calls) == 2
    assert _listing(tmp_path / "saved") == (["both", "both/notes.txt"] if existing else [])


def test_file_names_are_sanitised_and_unique(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    data = np.zeros((3, 4, 5), np.float32)
    layers = [viewer.add_image(data, name="case 1/FLAIR: map (P=0.5)"),
              viewer.add_image(data + 1, name="case 1\\FLAIR: map (P=0.5)"),
              viewer.add_labels(np.ones((3, 4, 5), np.uint8), name="Case 1 FLAIR map P 0.5"),
              viewer.add_labels(np.zeros((3, 4, 5), np.uint8), name="../seg.nii.gz"),
              viewer.add_image(data, name="***")]
    viewer.layers.selection = set(layers)
    out = tmp_path / "names"
    written = _save(viewer, out, plugin="napari-berdiff")
    names = [p.rsplit("/", 1)[1] for p in written]
    assert names == ["case_1_FLAIR_map_P_0.5.nii.gz", "case_1_FLAIR_map_P_0.5_2.nii.gz",
                     "Case_1_FLAIR_map_P_0.5_3.nii.gz", "seg.nii.gz", "layer.nii.gz"]
    assert _listing(out) == sorted(names)
    np.testing.assert_array_equal(np.asarray(nib.load(written[1]).dataobj), 1)
    (s,) = viewer.open(written[3], plugin="napari-berdiff")
    assert s._type_string == "labels"
