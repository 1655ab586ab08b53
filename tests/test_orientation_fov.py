"""Volumes reach the model the same way whatever the file's voxel order, crop or voxel size, and
with the training's intensity normalisation (core.io.orientation, Detector field of view)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from napari_berdiff.core.models.autoencoder import BinaryAutoencoder
from napari_berdiff.core.inference.batch_detect import DetectSettings, run_item
from napari_berdiff.core.io.discovery import discover_inputs
from napari_berdiff.core.models.configs import get_preset
from napari_berdiff.core.inference.detector import Detector
from napari_berdiff.core.io.orientation import (axcodes, canonical_zooms, from_canonical,
                                             orientation_of, to_canonical)
from napari_berdiff.core.models.unet import BernoulliUNet

LPS_1MM = np.diag([-1.0, -1.0, 1.0, 1.0])  # the BraTS files' voxel order


def _detector(channels=1, modality="brats", norm="percentile_clip_nonzero"):
    torch.manual_seed(0)
    ae_cfg, unet_cfg = get_preset("tiny", channels)
    unet = BernoulliUNet(unet_cfg)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.2 * torch.randn_like(p))
    meta = {"preprocess": {"mode": "pad"}, "modality": modality, "normalisation": {"method": norm},
            "channel_names": ["flair"] * channels}
    return Detector(BinaryAutoencoder(ae_cfg), unet, meta=meta, device="cpu")


def _head(shape=(60, 60, 5), seed=0):
    """A bright ellipse with a blob and noise, zero outside (voxel order = RAS)."""
    x, y = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
    head = (x / 0.8) ** 2 + (y / 0.6) ** 2 < 1
    blob = (x - 0.2) ** 2 + (y + 0.1) ** 2 < 0.03
    rng = np.random.default_rng(seed)
    vol = (300 + 400 * blob)[..., None] * head[..., None] + 20 * rng.random(shape)
    return (vol * head[..., None]).astype(np.float32)


@pytest.mark.parametrize("affine", [np.eye(4), LPS_1MM,
                                    np.array([[0, 0, 2.0, 0], [-1.0, 0, 0, 0], [0, 1.5, 0, 0], [0, 0, 0, 1]])])
def test_to_canonical_and_back(affine):
    a = np.random.default_rng(0).random((2, 4, 5, 6))
    ornt = orientation_of(affine)
    c = to_canonical(a, ornt)
    np.testing.assert_array_equal(from_canonical(c, ornt), a)
    # the canonical array's voxel (i, j, k) lies at world coordinates increasing along R, A, S
    inv = np.linalg.inv(affine)
    for axis in range(3):
        step = np.zeros(3)
        step[axis] = 1.0  # one mm towards R / A / S from the origin voxel's world point
        v0, v1 = inv[:3, :3] @ np.zeros(3), inv[:3, :3] @ step
        moved = np.flatnonzero(np.abs(v1 - v0) > 1e-9)
        assert len(moved) == 1 and ornt[moved[0], 0] == axis and np.sign(v1 - v0)[moved[0]] == ornt[moved[0], 1]
    if np.allclose(affine, LPS_1MM):
        np.testing.assert_array_equal(c, a[:, ::-1, ::-1, :])
        assert axcodes(ornt) == "LPS"
    z = canonical_zooms(affine, ornt)
    assert sorted(z) == sorted(np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(0)).tolist())


def _write(path, vol, affine):
    nib.save(nib.Nifti1Image(vol, affine), str(path))
    return path


def test_a_volume_gives_the_same_maps_stored_lps_or_ras(tmp_path):
    det = _detector()
    ras = _head()
    lps = ras[::-1, ::-1].copy()  # the same head stored in BraTS voxel order
    a = _write(tmp_path / "ras.nii.gz", ras, np.eye(4))
    b = _write(tmp_path / "lps.nii.gz", lps, LPS_1MM)
    s = DetectSettings(L=6, steps=3)
    outs = {}
    for p in (a, b):
        item = discover_inputs([p])[0]
        run_item(det, item, tmp_path / p.stem.split(".")[0], s)
    names = {p: sorted((tmp_path / p.stem.split(".")[0]).glob("*anomaly*.nii.gz"))[0] for p in (a, b)}
    for p, f in names.items():
        img = nib.load(str(f))
        np.testing.assert_allclose(img.affine, nib.load(str(p)).affine)
        assert img.header["cal_max"] == 0 and b"napari-berdiff" in img.header["descrip"].tobytes()
        outs[p] = np.asarray(img.dataobj)
    np.testing.assert_allclose(outs[b], outs[a][::-1, ::-1], atol=1e-6)
    assert outs[a].max() > 0


def test_a_centre_crop_or_a_coarser_voxel_size_keeps_the_field_of_view():
    det = _detector()
    assert det.fov == 240 and det.spacing_mm == 1.0
    assert det.canvas_for((2.0, 2.0)) == 120 and det.canvas_for((1.0, 0.5)) == (240, 480)
    assert det.canvas_for(None) is None  # prepared slices (already the model's size) pass as they are
    vol = np.zeros((240, 240, 3), np.float32)
    vol[40:200, 40:200] = _head((160, 160, 3))
    full = det.detect_volume(vol, slices=[1], L=6, steps=3, spacing=(1.0, 1.0, 1.0))
    crop = det.detect_volume(vol[40:200, 40:200], slices=[1], L=6, steps=3, spacing=(1.0, 1.0, 1.0))
    np.testing.assert_allclose(crop.anomaly_map[0, 0], full.anomaly_map[0, 0][40:200, 40:200], atol=1e-5)
    assert full.provenance["preprocess"]["canvas"] == 240


def test_brats_style_volumes_are_always_percentile_normalised():
    det = _detector()
    vol = _head((48, 48, 3))
    unit = vol / vol.max()  # a volume that happens to lie in [0, 1]
    a = det.detect_volume(unit, slices=[1], L=6, steps=3)
    b = det.detect_volume(unit * 1.0001, slices=[1], L=6, steps=3)
    np.testing.assert_allclose(a.anomaly_map, b.anomaly_map, atol=1e-5)
    assert a.provenance["normalize"].startswith("percentile")
    other = _detector(modality="oct", norm="dtype range")  # no recorded percentile rule
    c = other.detect_volume(unit, slices=[1], L=6, steps=3)
    assert c.provenance["normalize"].startswith("none")


def test_prepare_brats_slices_lps_and_ras_cases_alike(tmp_path):
    from napari_berdiff.core.io.readers import BRATS_MODALITIES
    from src_training.prepare.prepare import prepare_brats
    from src_training.prepare.prepared_format import open_split

    ras = np.stack([_head((40, 36, 6), seed=c) for c in range(4)])
    seg = np.zeros((40, 36, 6), np.uint8)
    seg[25:30, 10:14, 2:4] = 2
    for name, flip in (("ras", False), ("lps", True)):
        case = tmp_path / "src" / name / f"{name}_1"
        case.mkdir(parents=True)
        aff = LPS_1MM if flip else np.eye(4)
        for c, mod in enumerate(BRATS_MODALITIES):
            v = ras[c][::-1, ::-1] if flip else ras[c]
            _write(case / f"{name}_1_{mod}.nii.gz", np.ascontiguousarray(v), aff)
        _write(case / f"{name}_1_seg.nii.gz", np.ascontiguousarray(seg[::-1, ::-1] if flip else seg), aff)
        prepare_brats(tmp_path / "src" / name, tmp_path / f"prep_{name}", image_size=32,
                      drop_bottom=0, drop_top=0, split=(0, 0, 1))
    a = open_split(tmp_path / "prep_ras", "test")
    b = open_split(tmp_path / "prep_lps", "test")
    keys = [k for k in a if a[k] is not None and k in ("images", "labels")]
    assert "images" in keys
    for k in keys:
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]))
