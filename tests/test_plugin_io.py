"""napari plugin I/O: readers (NIfTI, BraTS folders, OCT), writer round trip, manifest validation."""

from __future__ import annotations

import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from napari_berdiff.plugin.layers import Orientation, layer_geometry
from napari_berdiff.plugin.reader import napari_get_reader
from napari_berdiff.plugin.writer import write_image

pytestmark = pytest.mark.gui

AFFINE = np.array([[2.0, 0, 0, -40.0],   # x: 2 mm, towards the patient's right (RAS)
                   [0, 1.5, 0, 12.0],    # y: 1.5 mm, anterior
                   [0, 0, 3.0, -7.5],    # z: 3 mm, superior
                   [0, 0, 0, 1]])


def _vol(shape=(10, 12, 5), seed=0):
    return np.random.default_rng(seed).random(shape).astype(np.float32) * 100


def _save(path, data, affine=AFFINE):
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def _world_of_voxel(affine, ijk):
    """The voxel's centre in napari world order (z, y, x), LPS."""
    ras = affine @ np.r_[ijk, 1.0]
    return np.array([ras[2], -ras[1], -ras[0]])


def test_nifti_3d_geometry_goes_into_scale_and_translate(make_napari_viewer, tmp_path):
    vol = _vol()
    path = _save(tmp_path / "img.nii.gz", vol)
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(path), plugin="napari-berdiff")
    assert layer.data.shape == (5, 12, 10)  # (z, y, x)
    np.testing.assert_allclose(layer.scale, [3.0, 1.5, 2.0])
    np.testing.assert_allclose(np.asarray(layer.affine.affine_matrix), np.eye(4))
    np.testing.assert_allclose(layer.metadata["affine"], AFFINE)
    assert layer.metadata["header"]["shape"] == [10, 12, 5]
    # every voxel lands where the NIfTI affine puts it
    for ijk in [(0, 0, 0), (9, 11, 4), (3, 7, 2)]:
        o = Orientation.from_dict(layer.metadata["orientation"])
        idx = np.zeros((10, 12, 5), bool)
        idx[ijk] = True
        data_pos = np.argwhere(o.to_layer(idx))[0]
        np.testing.assert_allclose(layer.data_to_world(data_pos), _world_of_voxel(AFFINE, ijk), atol=1e-9)
        assert layer.data[tuple(data_pos)] == vol[ijk]


def test_nifti_4d_becomes_one_layer_per_channel(make_napari_viewer, tmp_path):
    vol = np.stack([_vol(seed=s) for s in range(3)], axis=-1)
    path = _save(tmp_path / "multi.nii", vol)
    viewer = make_napari_viewer()
    layers = viewer.open(str(path), plugin="napari-berdiff")
    assert [ly.name for ly in layers] == ["multi [0]", "multi [1]", "multi [2]"]
    for c, ly in enumerate(layers):
        assert ly.data.shape == (5, 12, 10)
        np.testing.assert_allclose(ly.scale, [3.0, 1.5, 2.0])
        assert ly.metadata["channel"] == c and ly.metadata["n_channels"] == 3
        np.testing.assert_array_equal(ly.data[2, 3, 4], vol[10 - 1 - 4, 12 - 1 - 3, 2, c])


def test_oblique_affine_goes_into_affine():
    th = np.deg2rad(20)
    A = np.eye(4)
    A[:3, :3] = [[np.cos(th), -np.sin(th), 0], [np.sin(th), np.cos(th), 0], [0, 0, 2.0]]
    A[:3, 3] = [5, 6, 7]
    orient, kw = layer_geometry(A, (4, 5, 6))
    assert "affine" in kw and "scale" not in kw
    M = kw["affine"]
    for ijk in [(0, 0, 0), (3, 4, 5), (1, 2, 3)]:
        data_pos = np.array(ijk[::-1], float)  # layer axes (k, j, i)
        np.testing.assert_allclose((M @ np.r_[data_pos, 1])[:3], _world_of_voxel(A, ijk), atol=1e-9)


def _brats_folder(root, shape=(8, 9, 4)):
    case = root / "BraTS20_Training_042"
    case.mkdir()
    vols = {}
    for i, mod in enumerate(["t2", "flair", "t1ce", "t1"]):  # written out of order on purpose
        vols[mod] = _vol(shape, seed=i)
        _save(case / f"BraTS20_Training_042_{mod}.nii.gz", vols[mod])
    seg = np.zeros(shape, np.uint8)
    seg[2:4, 3:5, 1:3] = 4
    nib.save(nib.Nifti1Image(seg, AFFINE), str(case / "BraTS20_Training_042_seg.nii.gz"))
    return case, vols, seg


def test_brats_folder_gives_four_modalities_in_order_and_labels(make_napari_viewer, tmp_path):
    case, vols, seg = _brats_folder(tmp_path)
    assert napari_get_reader(str(case)) is not None
    viewer = make_napari_viewer()
    layers = viewer.open(str(case), plugin="napari-berdiff")
    names = [ly.name for ly in layers]
    assert names == [f"BraTS20_Training_042 {m}" for m in ("FLAIR", "T1", "T1ce", "T2")] + [
        "BraTS20_Training_042 ground truth"]
    assert [type(ly).__name__ for ly in layers] == ["Image"] * 4 + ["Labels"]
    o = Orientation.from_dict(layers[0].metadata["orientation"])
    for ly, mod in zip(layers, ("flair", "t1", "t1ce", "t2")):
        np.testing.assert_array_equal(o.from_layer(np.asarray(ly.data)), vols[mod])
        assert ly.metadata["modality"] == mod
    np.testing.assert_array_equal(o.from_layer(np.asarray(layers[4].data)), seg)
    for ly in layers[1:]:
        np.testing.assert_allclose(ly.scale, layers[0].scale)
        np.testing.assert_allclose(ly.translate, layers[0].translate)


def test_oct_folder_becomes_a_stack(make_napari_viewer, tmp_path):
    from skimage import io as skio

    folder = tmp_path / "DRUSEN"
    folder.mkdir()
    imgs = []
    for i in range(3):
        im = (np.random.default_rng(i).random((40, 50)) * 255).astype(np.uint8)
        imgs.append(im)
        skio.imsave(str(folder / f"DRUSEN-1-{i}.jpeg" if i != 1 else folder / f"DRUSEN-1-{i}.png"), im,
                    check_contrast=False)
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(folder), plugin="napari-berdiff")
    assert layer.data.shape == (3, 40, 50)
    assert layer.metadata["modality"] == "oct"
    np.testing.assert_allclose(layer.data[1], imgs[1] / 255.0, atol=1e-6)  # the PNG is lossless
    (single,) = viewer.open(str(folder / "DRUSEN-1-1.png"), plugin="napari-berdiff")
    assert single.data.shape == (40, 50)


def test_corrupt_file_gives_a_clear_notification_and_no_traceback(make_napari_viewer, tmp_path, capsys):
    from napari.utils.notifications import notification_manager

    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"\x1f\x8b this is not a NIfTI file" * 10)
    seen = []
    notification_manager.notification_ready.connect(seen.append)
    try:
        viewer = make_napari_viewer()
        layers = viewer.open(str(bad), plugin="napari-berdiff")
    finally:
        notification_manager.notification_ready.disconnect(seen.append)
    assert layers == [] and len(viewer.layers) == 0
    msgs = [str(n.message) for n in seen]
    assert any("broken.nii.gz" in m and "could not open" in m for m in msgs), msgs
    assert not any("Traceback" in m for m in msgs)
    assert "Traceback" not in capsys.readouterr().err


def test_unhandled_paths_return_none(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    assert napari_get_reader(str(tmp_path / "notes.txt")) is None
    empty = tmp_path / "empty"
    empty.mkdir()
    assert napari_get_reader(str(empty)) is None


def test_writer_round_trip_keeps_the_source_affine(make_napari_viewer, tmp_path):
    vol = _vol()
    path = _save(tmp_path / "src.nii.gz", vol)
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(path), plugin="napari-berdiff")
    amap = np.asarray(layer.data) * 0.5
    out = viewer.add_image(amap, name="src anomaly map", scale=layer.scale, translate=layer.translate,
                           metadata=dict(layer.metadata, provenance={"L": 200, "P": [0.5]},
                                         output="anomaly map"))
    written = out.save(str(tmp_path / "amap.nii.gz"), plugin="napari-berdiff")
    img = nib.load(written[0])
    np.testing.assert_allclose(img.affine, AFFINE)
    np.testing.assert_allclose(np.asarray(img.dataobj), vol * 0.5, rtol=1e-6)
    assert written[1].endswith("amap.json")
    seg = (np.asarray(layer.data) > 50).astype(np.uint8)
    lab = viewer.add_labels(seg, name="src segmentation", scale=layer.scale, translate=layer.translate,
                            metadata=layer.metadata)
    (p,) = lab.save(str(tmp_path / "seg.nii.gz"), plugin="napari-berdiff")
    img = nib.load(p)
    np.testing.assert_allclose(img.affine, AFFINE)
    np.testing.assert_array_equal(np.asarray(img.dataobj), (vol > 50).astype(np.uint8))


def test_writer_without_metadata_uses_the_layer_transform(tmp_path):
    from napari.layers import Image

    data = _vol((4, 5, 6))
    layer = Image(data, scale=(3, 2, 1.5), translate=(10, -4, 7))
    (p,) = write_image(str(tmp_path / "plain.nii"), layer.data, layer.as_layer_data_tuple()[1])
    img = nib.load(p)
    vol = np.asarray(img.dataobj)
    np.testing.assert_allclose(vol, np.transpose(data, (2, 1, 0)))
    for zyx in [(0, 0, 0), (3, 4, 5), (1, 2, 3)]:
        world = layer.data_to_world(zyx)
        np.testing.assert_allclose(_world_of_voxel(img.affine, zyx[::-1]), world, atol=1e-6)


def test_npe2_validate_with_imports():
    res = subprocess.run([sys.executable, "-m", "npe2", "validate", "napari-berdiff", "--imports"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "valid" in res.stdout


def test_widget_postprocess_equals_the_core_paper_protocol():
    from napari_berdiff.plugin.run import segment_stack
    from napari_berdiff.core.inference.postprocess import normalize_map, paper_anomaly_map, segment

    rng = np.random.default_rng(3)
    x = rng.random((3, 2, 40, 44)).astype(np.float32)
    rec = np.clip(x + rng.normal(0, 0.1, x.shape), 0, 1).astype(np.float32)
    rec[1, :, 10:20, 5:15] = 0  # a "lesion"
    ref = segment(normalize_map(paper_anomaly_map(x, rec)), 0.5, 10, 2)
    np.testing.assert_array_equal(segment_stack(x, rec), ref.astype(np.uint8))


@pytest.mark.parametrize("flags", [(False, False, False), (True, False, False), (False, True, False),
                                   (True, True, True), (False, True, True)])
def test_latent_grid_lines_up_through_flips_and_transposition(flags):
    from napari_berdiff.plugin.layers import SliceMap, latent_map

    H, W, h = 30, 44, 8  # model-orientation slice, latent grid h x h ("pad": 44 x 44 canvas)
    sm = SliceMap(transpose=flags[0], flip_rows=flags[1], flip_cols=flags[2])
    maps = latent_map((H, W), 32, h, "pad", None)
    ur, uc = np.meshgrid(np.arange(h), np.arange(h), indexing="ij")
    mr, mc = (maps[0][0] * ur + maps[0][1], maps[1][0] * uc + maps[1][1])  # model pixel coords
    lr, lc = (mc, mr) if sm.transpose else (mr, mc)
    Hl, Wl = (W, H) if sm.transpose else (H, W)
    lr = Hl - 1 - lr if sm.flip_rows else lr
    lc = Wl - 1 - lc if sm.flip_cols else lc
    # the latent arrays as the widget shows them, and the geometry it gives them
    lay_r, lay_c = sm.to_layer(lr), sm.to_layer(lc)
    axes = sm.latent_axes(maps, (Hl, Wl), (h, h))
    a, b = np.meshgrid(np.arange(h), np.arange(h), indexing="ij")
    np.testing.assert_allclose(axes[0][0] * a + axes[0][1], lay_r)
    np.testing.assert_allclose(axes[1][0] * b + axes[1][1], lay_c)
    assert maps[0] == (44 / 8, (44 / 8 - 1) / 2 - 7)  # rows padded by 7 on top


def test_latent_geometry_composes_with_a_rotated_source():
    from napari.layers import Image

    from napari_berdiff.plugin.layers import latent_geometry_kwargs

    src = Image(np.zeros((5, 40, 40)), scale=(2, 0.5, 0.5), translate=(1, 2, 3), rotate=25)
    axes = [(5.0, 2.0), (5.0, 2.0)]
    mask = Image(np.zeros((3, 5, 8, 8)), **{k: v for k, v in latent_geometry_kwargs(src, axes).items()
                                            if k not in ("axis_labels", "units")})
    for u, v in [(0, 0), (7, 3), (2, 6)]:
        np.testing.assert_allclose(mask.data_to_world((1, 2, u, v))[1:],
                                   src.data_to_world((2, 5 * u + 2, 5 * v + 2)), atol=1e-9)
