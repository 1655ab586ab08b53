"""Synthetic OCT B-scans (napari_berdiff.core.synth.oct)."""

from __future__ import annotations

import json
import time

import imageio.v3 as iio
import numpy as np
import pytest

from napari_berdiff.core.synth import oct as so


def _band_mean(img, top, bottom):
    """Mean of rows top..bottom (per column, float boundaries)."""
    rows = np.arange(img.shape[0])[:, None]
    sel = (rows >= np.ceil(top)[None, :]) & (rows <= np.floor(bottom)[None, :])
    return img[sel].mean()


def test_determinism_and_types():
    t = time.perf_counter()
    img, mask, meta = so.make_bscan(5, drusen=True)
    print(f"make_bscan: {time.perf_counter() - t:.3f} s")
    assert img.shape == (496, 512) and img.dtype == np.float32
    assert mask.shape == (496, 512) and mask.dtype == np.uint8
    assert img.min() >= 0 and img.max() <= 1
    img2, mask2, _ = so.make_bscan(5, drusen=True)
    np.testing.assert_array_equal(img, img2)
    np.testing.assert_array_equal(mask, mask2)
    img3, _, _ = so.make_bscan(6, drusen=True)
    assert not np.array_equal(img, img3)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_healthy_layers(seed):
    img, mask, meta = so.make_bscan(seed, drusen=False)
    assert not mask.any() and meta["n_drusen"] == 0
    ilm, rpe_top, rpe_bottom = meta["ilm"], meta["rpe_top"], meta["rpe_bottom"]
    assert (ilm < rpe_top).all() and (rpe_top < rpe_bottom).all()
    assert (rpe_bottom < 496).all() and (ilm > 0).all()
    rpe = _band_mean(img, rpe_top + 1, rpe_bottom - 1)
    retina = _band_mean(img, ilm + 1, rpe_top - 1)
    onl = _band_mean(img, meta["layer_tops"]["onl"] + 2, meta["layer_tops"]["elm"] - 2)
    vitreous = _band_mean(img, np.zeros(512), ilm - 10)
    assert rpe > 1.4 * retina and rpe > 2.5 * onl
    assert vitreous < 0.5 * retina


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_drusen_mask_at_rpe(seed):
    img, mask, meta = so.make_bscan(seed, drusen=True)
    assert 1 <= meta["n_drusen"] <= 6 and mask.any()
    assert meta["mask_area_px"] == int(mask.sum())
    ys, xs = np.nonzero(mask)
    bm = meta["bm"][xs]
    assert (ys < bm).all() and (ys > bm - 30).all()  # between Bruch's membrane and ~120 um above
    assert (ys >= meta["rpe_bottom"][xs] - 1).all()  # below the (elevated) RPE
    # elevated RPE over the drusen: its bottom is above Bruch's membrane there
    cols = np.unique(xs)
    assert (meta["bm"][cols] - meta["rpe_bottom"][cols]).max() >= 3
    # drusen material is darker than the RPE above it
    material = img[mask > 0].mean()
    rpe = _band_mean(img, meta["rpe_top"] + 1, meta["rpe_bottom"] - 1)
    assert material < rpe


def test_drusen_count_and_patient():
    _, mask, meta = so.make_bscan(11, drusen=3)
    assert meta["n_drusen"] == 3 and mask.any()
    _, mask0, meta0 = so.make_bscan(11, drusen=0)
    assert meta0["n_drusen"] == 0 and not mask0.any()
    a = so.make_bscan(1, patient=77)[2]
    b = so.make_bscan(2, patient=77)[2]
    assert a["eye"] == b["eye"] and a["patient"] == 77


def test_write_dataset(tmp_path):
    t = time.perf_counter()
    rows = so.write_oct_dataset(tmp_path, n_normal=3, n_drusen=2, seed=4)
    print(f"write_oct_dataset, 5 images: {time.perf_counter() - t:.2f} s")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["DRUSEN", "DRUSEN_masks", "NORMAL",
                                                         "synth_oct_manifest.json"]
    normal = sorted(p.name for p in (tmp_path / "NORMAL").iterdir())
    drusen = sorted(p.name for p in (tmp_path / "DRUSEN").iterdir())
    assert normal == ["NORMAL-1000001-1.jpeg", "NORMAL-1000001-2.jpeg", "NORMAL-1000002-1.jpeg"]
    assert drusen == ["DRUSEN-1000003-1.jpeg", "DRUSEN-1000003-2.jpeg"]
    for name in drusen:
        img = iio.imread(tmp_path / "DRUSEN" / name)
        assert img.shape == (496, 512) and img.dtype == np.uint8
        m = iio.imread(tmp_path / "DRUSEN_masks" / name.replace(".jpeg", ".png"))
        assert m.shape == (496, 512) and set(np.unique(m)) == {0, 255}
    manifest = json.loads((tmp_path / "synth_oct_manifest.json").read_text())
    assert len(manifest["images"]) == 5 == len(rows)
    assert {r["patient"] for r in rows if r["class"] == "NORMAL"} == {1000001, 1000002}
    with pytest.raises(FileExistsError):
        so.write_oct_dataset(tmp_path, n_normal=1, seed=4)
    so.write_oct_dataset(tmp_path, n_normal=1, seed=5, overwrite=True)
    assert not [p for p in tmp_path.rglob(".tmp*")]  # no temporary files left


def test_twin_is_the_same_scan_without_its_drusen():
    """twin=True: every draw as with drusen, the RPE left on Bruch's membrane: empty mask, and
    the columns away from the drusen are the same pixels."""
    img, mask, meta = so.make_bscan(7, True)
    twin, tmask, tmeta = so.make_bscan(7, True, twin=True)
    assert mask.sum() > 0 and tmask.sum() == 0 and meta["n_drusen"] >= 1
    cols = np.ones(img.shape[1], bool)
    for d in meta["drusen"]:
        cols[max(0, int(d["x"] - d["half_width"]) - 2):int(d["x"] + d["half_width"]) + 3] = False
    assert cols.sum() > 100
    np.testing.assert_allclose(img[:, cols], twin[:, cols], atol=1e-4)  # float rounding
    assert np.abs(img[:, ~cols] - twin[:, ~cols]).max() > 0.1
    np.testing.assert_array_equal(tmeta["bm"], meta["bm"])
