"""Synthetic BraTS-like brain cases (napari_berdiff.core.synth.brain)."""

from __future__ import annotations

import json
import time

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_berdiff.core.synth import brain as sb
from napari_berdiff.core.synth._brain_anatomy import Geometry

SMALL = (120, 120, 78)  # same 240x240x155 mm field of view at ~2 mm, for speed


def _timed(seed, kind, size=SMALL):
    t = time.perf_counter()
    case = sb.make_case(seed, kind, size=size)
    print(f"make_case({seed}, {kind!r}, size={tuple(size)}): {time.perf_counter() - t:.2f} s")
    return case


@pytest.fixture(scope="module")
def cases():
    # the MNI templates load on first use (a few seconds, once per process)
    return {kind: _timed(3, kind) for kind in sb.KINDS}


@pytest.fixture(scope="module")
def full_tumour():
    return _timed(0, "tumour", size=sb.BRATS_SHAPE)


def _brain(case):
    return case["t1"] > 0


def _world(case, idx):
    return (case["affine"] @ np.c_[idx, np.ones(len(idx))].T)[:3].T


def test_determinism(cases):
    again = sb.make_case(3, "tumour", size=SMALL)
    for key in sb.CHANNELS + ("seg",):
        np.testing.assert_array_equal(again[key], cases["tumour"][key])
    assert again["meta"] == cases["tumour"]["meta"]
    other = sb.make_case(4, "tumour", size=SMALL)
    assert not np.array_equal(other["flair"], cases["tumour"]["flair"])
    assert other["meta"]["centre_mm"] != cases["tumour"]["meta"]["centre_mm"]


def test_shapes_dtypes_affine(cases):
    for kind, case in cases.items():
        for ch in sb.CHANNELS:
            assert case[ch].shape == SMALL and case[ch].dtype == np.float32
            assert np.isfinite(case[ch]).all() and case[ch].min() >= 0
            np.testing.assert_array_equal(case[ch] > 0, _brain(case))  # skull-stripped, same mask
        assert case["seg"].shape == SMALL and case["seg"].dtype == np.uint8
        aff = case["affine"]
        np.testing.assert_allclose(np.diag(aff)[:3], [2.0, 2.0, 155 / 78])
        np.testing.assert_allclose(aff[:3, :3], np.diag(np.diag(aff)[:3]))
        assert case["meta"]["kind"] == kind
        json.dumps(case["meta"])  # JSON-friendly


def test_full_size_geometry(full_tumour):
    case = full_tumour
    assert case["flair"].shape == (240, 240, 155)
    np.testing.assert_allclose(case["affine"], [[1, 0, 0, -120], [0, 1, 0, -137], [0, 0, 1, -72],
                                                [0, 0, 0, 1]])
    brain = _brain(case)
    assert 1.1e6 < brain.sum() < 2.0e6  # ml at 1 mm
    # brain centred in-plane, filling the axial range
    for ax in (0, 1):
        idx = np.flatnonzero(brain.any(axis=tuple(a for a in range(3) if a != ax)))
        assert abs((idx[0] + idx[-1]) / 2 - 119.5) < 8 and idx[0] > 5 and idx[-1] < 234
    z = np.flatnonzero(brain.any(axis=(0, 1)))
    assert z[0] < 15 and z[-1] > 140
    seg = case["seg"]
    assert set(np.unique(seg)) <= {0, 1, 2, 4} and (seg == 2).any() and (seg > 0).sum() > 1000
    assert not (seg[~brain] > 0).any()
    zs = np.nonzero(seg)[2]
    assert ((zs >= 80) & (zs <= 128)).mean() > 0.6  # mostly in the slices the pipeline keeps
    assert 88 <= case["meta"]["centre_voxel"][2] <= 120


def test_labels(cases):
    for kind, case in cases.items():
        seg = case["seg"]
        assert set(np.unique(seg)) <= set(sb.LABELS)
        assert not (seg[~_brain(case)] > 0).any(), kind
    assert not cases["healthy"]["seg"].any()
    assert cases["healthy"]["meta"]["anomaly_volume_ml"] == 0
    t = cases["tumour"]["seg"]
    assert (t == 2).any() and ((t == 1) | (t == 4)).any()
    for kind in ("cavity", "ventricle"):
        assert set(np.unique(cases[kind]["seg"])) == {0, 2}
        assert cases[kind]["meta"]["lesion"]["kind"] == kind


def test_tumour_slices_mostly_in_pipeline_range():
    geom = Geometry(SMALL)
    lo, hi = geom.slice_of_brats(80) - 0.5, geom.slice_of_brats(128) + 0.5
    fracs = []
    for seed in (10, 11, 12):
        zs = np.nonzero(sb.make_case(seed, "tumour", size=SMALL)["seg"])[2]
        fracs.append(((zs >= lo) & (zs <= hi)).mean())
    assert min(fracs) > 0.6 and np.mean(fracs) > 0.75, fracs


def _white_matter(case, exclude, margin=4):
    """Voxels with WM-like T1 (top 30 % of the brain) away from ``exclude``."""
    brain = _brain(case)
    t1 = case["t1"]
    far = ~ndi.binary_dilation(exclude, iterations=margin)
    return brain & far & (t1 > np.percentile(t1[brain], 70))


def test_tumour_contrast(cases):
    case = cases["tumour"]
    seg = case["seg"]
    wm = _white_matter(case, seg > 0)
    oedema = seg == 2
    assert case["flair"][oedema].mean() > 1.2 * case["flair"][wm].mean()
    assert case["t2"][oedema].mean() > case["t2"][wm].mean()
    assert case["t1"][oedema].mean() < case["t1"][wm].mean()
    if (seg == 4).any():
        assert case["t1ce"][seg == 4].mean() > 1.2 * case["t1ce"][wm].mean()
    if (seg == 4).any() and (seg == 1).any():
        assert case["t1ce"][seg == 1].mean() < 0.7 * case["t1ce"][seg == 4].mean()


def test_healthy_tissue_contrasts(cases):
    case = cases["healthy"]
    brain = _brain(case)
    t1 = case["t1"]
    wm = brain & (t1 > np.percentile(t1[brain], 80))
    csf = brain & (t1 < np.percentile(t1[brain], 8))
    assert case["t2"][csf].mean() > 1.5 * case["t2"][wm].mean()  # T2: CSF bright
    assert case["flair"][csf].mean() < 0.6 * case["flair"][wm].mean()  # FLAIR: CSF dark


def test_cavity_not_hyperintense(cases):
    case = cases["cavity"]
    cav = case["seg"] > 0
    ring = ndi.binary_dilation(cav, iterations=3) & ~ndi.binary_dilation(cav, iterations=1)
    t1 = case["t1"]
    brain = _brain(case)
    ring &= brain & (t1 > np.percentile(t1[brain], 50))
    assert ring.sum() > 20
    assert case["flair"][cav].mean() < 0.6 * case["flair"][ring].mean()
    assert case["t1"][cav].mean() < 0.6 * case["t1"][ring].mean()
    assert case["t2"][cav].mean() > 1.5 * case["t2"][ring].mean()
    # a FLAIR threshold at the oedema level finds (almost) nothing of it
    wm = _white_matter(case, cav)
    assert (case["flair"][cav] > 1.3 * case["flair"][wm].mean()).mean() < 0.05


def test_same_seed_is_same_subject(cases):
    healthy, tumour = cases["healthy"], cases["tumour"]
    idx = np.argwhere(_brain(healthy))
    dist = np.linalg.norm(_world(healthy, idx) - np.array(tumour["meta"]["centre_mm"]), axis=1)
    far = tuple(idx[dist > 80].T)
    assert len(far[0]) > 1000
    for ch in sb.CHANNELS:
        np.testing.assert_array_equal(healthy[ch][far], tumour[ch][far])


def test_bad_arguments():
    with pytest.raises(ValueError):
        sb.make_case(0, "glioma", size=SMALL)
    with pytest.raises(ValueError):
        sb.make_case(0, "healthy", size=(10, 10))
    assert sb.case_folder_name(7) == "BraTS20_Training_007"
    assert sb.case_folder_name("BraTS20_Validation_012") == "BraTS20_Validation_012"


def test_write_and_read_back(cases, tmp_path):
    case = cases["tumour"]
    folder = sb.write_brats_case(case, tmp_path, 5)
    name = "BraTS20_Training_005"
    assert folder == tmp_path / name
    for key in sb.CHANNELS + ("seg",):
        img = nib.load(str(folder / f"{name}_{key}.nii.gz"))
        data = np.asarray(img.dataobj)
        assert data.shape == SMALL
        np.testing.assert_allclose(img.affine, case["affine"], atol=1e-5)
        if key == "seg":
            assert data.dtype == np.uint8
            np.testing.assert_array_equal(data, case["seg"])
        else:
            assert data.dtype == np.int16
            assert np.abs(data - case[key]).max() <= 0.5 + 1e-3
    meta = json.loads((folder / f"{name}_synth.json").read_text())
    assert meta["kind"] == "tumour" and meta["seed"] == 3
    with pytest.raises(FileExistsError):
        sb.write_brats_case(case, tmp_path, 5)
    sb.write_brats_case(cases["healthy"], tmp_path, 5, overwrite=True)
    assert not np.asarray(nib.load(str(folder / f"{name}_seg.nii.gz")).dataobj).any()
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no temporary folders left


def test_interrupted_write_leaves_no_case(cases, tmp_path, monkeypatch):
    calls = []

    def failing_save(img, path):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        return real_save(img, path)

    real_save = nib.save
    monkeypatch.setattr(nib, "save", failing_save)
    with pytest.raises(OSError):
        sb.write_brats_case(cases["healthy"], tmp_path, 1)
    assert list(tmp_path.iterdir()) == []


def test_write_dataset(tmp_path):
    rows = sb.write_brats_dataset(tmp_path, n_healthy=1, n_tumour=1, n_cavity=1, seed=9,
                                  size=(48, 48, 31))
    assert sorted(r["kind"] for r in rows) == ["cavity", "healthy", "tumour"]
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [f"BraTS20_Training_00{i}" for i in (1, 2, 3)] + ["synth_manifest.json"]
    for r in rows:
        seg = np.asarray(nib.load(str(tmp_path / r["folder"] / f"{r['folder']}_seg.nii.gz")).dataobj)
        assert seg.any() == (r["kind"] != "healthy")
    manifest = json.loads((tmp_path / "synth_manifest.json").read_text())
    assert [c["folder"] for c in manifest["cases"]] == [r["folder"] for r in rows]
    with pytest.raises(FileExistsError):
        sb.write_brats_dataset(tmp_path, n_tumour=4, seed=1, size=(48, 48, 31))
    assert len(list(tmp_path.iterdir())) == 4  # nothing new written
