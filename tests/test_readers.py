"""Tests of napari_berdiff.core.io.readers (and its geometry helpers): no Qt, no torch."""

from __future__ import annotations

import gzip
import pickle

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from skimage import io as skio

from napari_berdiff.core.io.files import DataError
from napari_berdiff.core.io.geometry import Transform2D, pad_or_crop_2d, plan_fit_square, resize_2d
from napari_berdiff.core.io.images import load_image_2d
from napari_berdiff.core.io.intensity import normalize_volume
from napari_berdiff.core.io.readers import (BRATS_MODALITIES, find_brats_case, load_brats_case,
                                              load_nifti)


def write_nifti(path, data, affine=None):
    nib.save(nib.Nifti1Image(np.asarray(data), np.eye(4) if affine is None else affine), str(path))
    return path


def write_brats_case(folder, case="BraTS20_Training_001", shape=(24, 20, 12), ext=".nii.gz",
                     seg=True):
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for c, mod in enumerate(BRATS_MODALITIES):
        vol = np.zeros(shape, np.int16)
        vol[4:-4, 4:-4, :] = 100 * (c + 1)  # each channel identifiable by its value
        files[mod] = write_nifti(folder / f"{case}_{mod}{ext}", vol)
    if seg:
        lab = np.zeros(shape, np.uint8)
        lab[8:12, 8:12, 5] = 1
        lab[9:11, 9:11, 6] = 4
        files["seg"] = write_nifti(folder / f"{case}_seg{ext}", lab)
    return files


# ----------------------------------------------------------------------------- NIfTI


def test_load_nifti_roundtrip(tmp_path):
    data = np.random.default_rng(0).random((6, 5, 4)).astype(np.float32)
    aff = np.diag([1.5, 2.0, 3.0, 1.0])
    p = write_nifti(tmp_path / "v.nii.gz", data, aff)
    arr, affine, header = load_nifti(p, ndim=3)
    assert arr.dtype == np.float32 and arr.shape == (6, 5, 4)
    np.testing.assert_allclose(arr, data)
    assert affine.shape == (4, 4) and affine.dtype == np.float64
    np.testing.assert_allclose(affine, aff)
    assert header["zooms"] == (1.5, 2.0, 3.0) and header["shape"] == (6, 5, 4)


def test_load_nifti_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="nothere.nii.gz"):
        load_nifti(tmp_path / "nothere.nii.gz")
    p = write_nifti(tmp_path / "cut_in_half.nii.gz", np.random.default_rng(0).random((20, 20, 20)))
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="cut_in_half.nii.gz") as e:
        load_nifti(p)
    assert "truncated or corrupt" in str(e.value) and e.value.path == p
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(np.random.default_rng(1).bytes(2000))
    with pytest.raises(DataError, match="junk.nii.gz"):
        load_nifti(junk)
    bad_gz = tmp_path / "notnifti.nii.gz"
    bad_gz.write_bytes(gzip.compress(b"hello" * 200))
    with pytest.raises(DataError, match="notnifti.nii.gz"):
        load_nifti(bad_gz)
    # the error survives a trip to a worker process and back
    err = pickle.loads(pickle.dumps(DataError(p, "boom")))
    assert isinstance(err, DataError) and err.path == p and "boom" in str(err)


def test_load_nifti_non_finite(tmp_path):
    data = np.ones((4, 4, 4), np.float32)
    data[0, 0, 0] = np.nan
    data[1, 1, 1] = np.nan
    data[2, 2, 2] = np.inf
    p = write_nifti(tmp_path / "nan.nii.gz", data)
    with pytest.raises(DataError, match="nan.nii.gz") as e:
        load_nifti(p)
    assert "3 non-finite" in str(e.value) and "NaN: 2" in str(e.value)
    arr, _, hdr = load_nifti(p, nan_policy="zero")
    assert np.all(np.isfinite(arr)) and arr[0, 0, 0] == 0 and arr[3, 3, 3] == 1
    assert hdr["nan_count"] == 3
    with pytest.raises(ValueError):
        load_nifti(p, nan_policy="ignore")


def test_load_nifti_dimensionality(tmp_path):
    p2 = write_nifti(tmp_path / "flat.nii", np.zeros((5, 5), np.float32))
    with pytest.raises(DataError, match="flat.nii"):
        load_nifti(p2, ndim=3)
    p4 = write_nifti(tmp_path / "single.nii.gz", np.zeros((5, 5, 3, 1), np.float32))
    assert load_nifti(p4, ndim=3)[0].shape == (5, 5, 3)


# ----------------------------------------------------------------------------- BraTS


def test_find_and_load_brats_case(tmp_path):
    files = write_brats_case(tmp_path / "BraTS20_Training_001")
    found = find_brats_case(tmp_path / "BraTS20_Training_001")
    assert set(found) == set(BRATS_MODALITIES) | {"seg"}
    assert found["t1"] == files["t1"] and found["t1ce"] == files["t1ce"]
    vol, seg, affine = load_brats_case(tmp_path / "BraTS20_Training_001")
    assert vol.shape == (4, 24, 20, 12) and vol.dtype == np.float32
    assert [vol[c].max() for c in range(4)] == [100, 200, 300, 400]  # flair, t1, t1ce, t2
    assert seg.dtype == np.uint8 and set(np.unique(seg)) == {0, 1, 4}
    assert affine.shape == (4, 4)


def test_brats_other_namings(tmp_path):
    write_brats_case(tmp_path / "a", case="BraTS20_Training_002", ext=".nii", seg=False)
    found = find_brats_case(tmp_path / "a")
    assert "seg" not in found and found["flair"].name == "BraTS20_Training_002_flair.nii"
    vol, seg, _ = load_brats_case(tmp_path / "a")
    assert seg is None and vol.shape[0] == 4
    with pytest.raises(DataError, match="BraTS20_Training_002_seg.nii"):
        load_brats_case(tmp_path / "a", require_seg=True)
    write_brats_case(tmp_path / "b", case="BraTS2021_00017")
    assert set(find_brats_case(tmp_path / "b")) == set(BRATS_MODALITIES) | {"seg"}


def test_brats_missing_corrupt_and_mismatched(tmp_path):
    files = write_brats_case(tmp_path / "c1")
    files["t1ce"].unlink()
    with pytest.raises(DataError, match="BraTS20_Training_001_t1ce.nii.gz"):
        find_brats_case(tmp_path / "c1")
    files = write_brats_case(tmp_path / "c2")
    raw = files["t2"].read_bytes()
    files["t2"].write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="BraTS20_Training_001_t2.nii.gz"):
        load_brats_case(tmp_path / "c2")
    files = write_brats_case(tmp_path / "c3")
    write_nifti(files["t1"], np.zeros((24, 20, 11), np.int16))
    with pytest.raises(DataError, match="BraTS20_Training_001_t1.nii.gz") as e:
        load_brats_case(tmp_path / "c3")
    assert "shape" in str(e.value)
    with pytest.raises(DataError, match="nowhere"):
        find_brats_case(tmp_path / "nowhere")


# ----------------------------------------------------------------------------- 2D images


def test_load_image_2d_formats(tmp_path):
    g8 = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (10, 1))
    skio.imsave(tmp_path / "g8.png", g8, check_contrast=False)
    x = load_image_2d(tmp_path / "g8.png")
    assert x.dtype == np.float32 and x.shape == (10, 64)
    np.testing.assert_allclose(x, g8 / 255.0, atol=1e-6)

    g16 = np.zeros((8, 8), np.uint16)
    g16[:, 4:] = 65535
    g16[0, 0] = 32768
    skio.imsave(tmp_path / "g16.png", g16, check_contrast=False)
    x = load_image_2d(tmp_path / "g16.png")
    assert x.max() == pytest.approx(1.0) and x[0, 0] == pytest.approx(0.5, abs=1e-4)

    rgb = np.zeros((6, 7, 3), np.uint8)
    rgb[..., 1] = 255
    skio.imsave(tmp_path / "rgb.png", rgb, check_contrast=False)
    x = load_image_2d(tmp_path / "rgb.png")
    assert x.shape == (6, 7) and np.allclose(x, 0.7154, atol=1e-3)
    assert load_image_2d(tmp_path / "rgb.png", gray=False).shape == (6, 7, 3)

    jpg = (np.linspace(0, 1, 496 * 64).reshape(496, 64) * 255).astype(np.uint8)
    Image.fromarray(jpg).save(tmp_path / "scan.jpeg", quality=95)
    x = load_image_2d(tmp_path / "scan.jpeg")
    assert x.shape == (496, 64) and 0 <= x.min() and x.max() <= 1
    assert np.abs(x - jpg / 255.0).max() < 0.05

    tif = np.random.default_rng(0).random((9, 9)).astype(np.float32)
    skio.imsave(tmp_path / "f.tif", tif, check_contrast=False)
    np.testing.assert_allclose(load_image_2d(tmp_path / "f.tif"), tif, atol=1e-6)


def test_load_image_2d_errors(tmp_path):
    bad = tmp_path / "broken.jpeg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(DataError, match="broken.jpeg"):
        load_image_2d(bad)
    with pytest.raises(DataError, match="absent.png"):
        load_image_2d(tmp_path / "absent.png")


# ----------------------------------------------------------------------------- normalisation


def test_normalize_volume_robust_range_and_background():
    rng = np.random.default_rng(0)
    vol = np.zeros((2, 30, 30, 10), np.float32)
    vol[0, 5:25, 5:25] = rng.normal(500, 50, (20, 20, 10))
    vol[0, 10, 10, 5] = 1e6  # an outlier does not squash the rest
    vol[1, 5:25, 5:25] = 7.0  # constant foreground
    out, stats = normalize_volume(vol, return_stats=True)
    assert out.dtype == np.float32 and out.shape == vol.shape
    assert out.min() == 0.0 and out.max() == 1.0
    assert np.all(out[:, :5] == 0) and np.all(out[vol == 0] == 0)
    fg = out[0, 5:25, 5:25]
    assert 0.3 < np.median(fg) < 0.7  # not squashed by the outlier
    lo, hi = np.percentile(vol[0][vol[0] != 0], [0.5, 99.5])
    assert stats[0] == (pytest.approx(lo), pytest.approx(hi))
    assert np.all(out[1, 5:25, 5:25] == 1.0)
    single = normalize_volume(vol[0], channel_axis=None, low=1, high=99)
    assert single.shape == vol.shape[1:] and single.max() == 1.0
    assert np.all(normalize_volume(np.zeros((1, 4, 4, 4))) == 0)


# ----------------------------------------------------------------------------- geometry


def test_pad_or_crop_240_to_256_centred_and_undo():
    img = np.random.default_rng(0).random((4, 240, 240)).astype(np.float32) + 0.1
    out, tf = pad_or_crop_2d(img, 256)
    assert out.shape == (4, 256, 256) and out.dtype == np.float32
    assert np.all(out[:, :8] == 0) and np.all(out[:, -8:] == 0)
    assert np.all(out[:, :, :8] == 0) and np.all(out[:, :, -8:] == 0)
    np.testing.assert_array_equal(out[:, 8:248, 8:248], img)
    np.testing.assert_array_equal(tf.undo(out), img)
    crop, tf2 = pad_or_crop_2d(np.arange(35.0).reshape(5, 7), (3, 4))
    np.testing.assert_array_equal(crop, np.arange(35.0).reshape(5, 7)[1:4, 1:5])
    back = tf2.undo(crop)
    assert back.shape == (5, 7) and back[0].sum() == 0 and back[2, 2] == 16
    odd, tf3 = pad_or_crop_2d(np.ones((3, 3)), (6, 4))
    assert odd.shape == (6, 4) and odd[1:4, 0:3].sum() == 9 and tf3.undo(odd).shape == (3, 3)


def test_resize_2d_and_keep_aspect():
    img = np.random.default_rng(0).random((496, 512)).astype(np.float32)
    out, tf = resize_2d(img, 256)
    assert out.shape == (256, 256) and out.dtype == np.float32 and tf.undo(out).shape == (496, 512)
    out, tf = resize_2d(img + 0.5, 256, keep_aspect=True)
    assert out.shape == (256, 256)
    assert np.all(out[:4] == 0) and np.all(out[-4:] == 0) and np.all(out[4:252] > 0)
    assert tf.undo(out).shape == (496, 512)
    assert Transform2D.from_dict(tf.to_dict()) == tf
    lab = np.zeros((2, 496, 512), np.uint8)
    lab[:, 100:200, 100:300] = 4
    small = tf.apply(lab, order=0)
    assert small.dtype == np.uint8 and set(np.unique(small)) == {0, 4}
    # the BraTS rule for image sizes below the slice size: pad to square, then resize
    fit = plan_fit_square((240, 200), 128)
    assert [s.kind for s in fit.steps] == ["padcrop", "resize"]
    assert fit.apply(np.ones((240, 200))).shape == (128, 128)
    assert [s.kind for s in plan_fit_square((240, 240), 256).steps] == ["padcrop"]


def test_normalize_volume_refuses_non_finite_values():
    from napari_berdiff.core.io.intensity import normalize_volume

    vol = np.ones((2, 4, 4, 3), np.float32)
    vol[1, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="1 NaN"):
        normalize_volume(vol)
