"""DICOM MR series: written with pydicom's own writer from generated volumes, read back against
the NIfTI path (an oblique orientation included, voxel for voxel), through ``berdiff detect``,
and the bad inputs (one line each, nothing written)."""

from __future__ import annotations

import json
import os
import sys

import nibabel as nib
import numpy as np
import pytest

from _dicom_helpers import oblique_affine, read_back, stored_volume, write_series
from napari_berdiff.cli import main
from napari_berdiff.core.io.dicom import load_dicom_input, load_series
from napari_berdiff.core.io.dicom_channels import channel_of_series
from napari_berdiff.core.io.dicom_scan import scan_dicom
from napari_berdiff.core.io.orientation import orientation_of, to_canonical
from napari_berdiff.core.io.files import DataError
from napari_berdiff.core.io.readers import load_nifti

FAST = ["--L", "6", "--steps", "3", "--device", "cpu", "--no-progress", "--threads", "1"]
SHAPE = (20, 24, 6)
SERIES = {"flair": "AX T2 FLAIR", "t1": "t1_mprage_tra", "t1ce": "T1 MPRAGE +C", "t2": "T2 TSE AX"}


def _world(affine, shape):
    """RAS position of every voxel, (X, Y, Z, 3)."""
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    return ijk @ np.asarray(affine)[:3, :3].T + np.asarray(affine)[:3, 3]


def _canonical(vol, affine):
    o = orientation_of(affine)
    return to_canonical(vol, o), to_canonical(np.moveaxis(_world(affine, vol.shape), -1, 0), o)


@pytest.mark.parametrize("transpose,reverse", [(False, False), (True, True)])
def test_oblique_series_matches_the_nifti_path_voxel_for_voxel(tmp_path, transpose, reverse):
    A = oblique_affine()
    vol = stored_volume(SHAPE)
    nib.save(nib.Nifti1Image(vol, A), str(tmp_path / "ref.nii.gz"))
    write_series(tmp_path / "dcm", vol, A, transpose=transpose, reverse=reverse)
    ref, ref_aff, _ = load_nifti(tmp_path / "ref.nii.gz")
    (series,) = scan_dicom(tmp_path / "dcm")
    got, aff, info = load_series(series)
    if not transpose:  # same voxel order: the same array and affine
        np.testing.assert_array_equal(got, ref)
        np.testing.assert_allclose(aff, ref_aff, atol=1e-5)
    else:
        assert got.shape == (SHAPE[1], SHAPE[0], SHAPE[2])
    # in the model's (RAS) order every voxel holds the same value at the same place
    (c_ref, w_ref), (c_got, w_got) = _canonical(ref, ref_aff), _canonical(got, aff)
    np.testing.assert_array_equal(c_got, c_ref)
    np.testing.assert_allclose(w_got, w_ref, atol=1e-4)
    assert info["series_description"] == "T2 TSE AX" and info["files"] == SHAPE[2]


def test_detect_gives_the_same_maps_for_the_series_and_the_nifti(ckpt1, tmp_path, capsys):
    A = oblique_affine()
    vol = stored_volume(SHAPE, seed=3)
    nib.save(nib.Nifti1Image(vol, A), str(tmp_path / "ref.nii.gz"))
    write_series(tmp_path / "dcm", vol, A, transpose=True, reverse=True)
    out = tmp_path / "out"
    rc = main(["detect", str(tmp_path / "ref.nii.gz"), str(tmp_path / "dcm"), "--model",
               str(ckpt1), "--out", str(out), *FAST])
    assert rc == 0, capsys.readouterr().err
    a = nib.load(str(out / "ref_berdiff_anomaly.nii.gz"))
    b = nib.load(str(out / "dcm_berdiff_anomaly.nii.gz"))  # the series folder's name
    assert b.shape == (SHAPE[1], SHAPE[0], SHAPE[2])  # the DICOM voxel order, its own affine
    # DICOM voxel (j, i, k) is NIfTI voxel (i, j, Z-1-k): rows and columns swapped, the slice
    # normal reversed with them
    np.testing.assert_allclose(np.swapaxes(_world(b.affine, b.shape), 0, 1)[:, :, ::-1],
                               _world(A, SHAPE), atol=1e-3)
    ca, cb = _canonical(a.get_fdata(), a.affine)[0], _canonical(b.get_fdata(), b.affine)[0]
    assert ca.max() > 0
    np.testing.assert_allclose(cb, ca, rtol=1e-5, atol=1e-6)
    mask_a = _canonical(np.asarray(nib.load(str(out / "ref_berdiff_mask.nii.gz")).dataobj),
                        a.affine)[0]
    mask_b = _canonical(np.asarray(nib.load(str(out / "dcm_berdiff_mask.nii.gz")).dataobj),
                        b.affine)[0]
    np.testing.assert_array_equal(mask_b, mask_a)
    prov = json.loads((out / "dcm_berdiff_provenance.json").read_text())
    assert prov["input_kind"] == "dicom"


def _study(root, shape=SHAPE, names=SERIES, A=None, flat=True, other=None):
    """Four series of one study and frame of reference: flat in ``root`` or one sub-folder each;
    ``other``: channel -> write_series keywords for that series (another study...)."""
    A = oblique_affine() if A is None else A
    from pydicom.uid import generate_uid

    study, frame = generate_uid(), generate_uid()
    vols = {}
    for n, (mod, desc) in enumerate(names.items()):
        vols[mod] = stored_volume(shape, seed=n)
        kw = {"study_uid": study, "frame_uid": frame, **(other or {}).get(mod, {})}
        write_series(root if flat else root / f"SE{n:03d}", vols[mod], A, desc,
                     series_number=n + 2, seed=n, prefix=f"S{n}IM", **kw)
    return vols


@pytest.mark.parametrize("flat", [True, False])
def test_a_study_is_matched_to_the_models_channels(ckpt4, tmp_path, capsys, flat):
    vols = _study(tmp_path / "study", flat=flat)
    data, affine, info = load_dicom_input(tmp_path / "study", ["flair", "t1", "t1ce", "t2"], 4)
    for c, mod in enumerate(["flair", "t1", "t1ce", "t2"]):
        np.testing.assert_array_equal(data[c], vols[mod])
    assert [s["label"] for s in info["series"]] == ["2 AX T2 FLAIR", "3 t1_mprage_tra",
                                                    "4 T1 MPRAGE +C", "5 T2 TSE AX"]
    out = tmp_path / "out"
    rc = main(["detect", str(tmp_path / "study"), "--model", str(ckpt4), "--out", str(out), *FAST])
    assert rc == 0, capsys.readouterr().err
    rec = nib.load(str(out / "study_berdiff_recon.nii.gz"))
    assert rec.shape == SHAPE + (4,)
    prov = json.loads((out / "study_berdiff_provenance.json").read_text())
    assert [s["label"] for s in prov["input_info"]["series"]] == [
        "2 AX T2 FLAIR", "3 t1_mprage_tra", "4 T1 MPRAGE +C", "5 T2 TSE AX"]
    np.testing.assert_allclose(rec.affine, affine, atol=1e-5)


def test_series_names(tmp_path):
    named = {"AX T2 FLAIR": "flair", "t2_tirm_tra_dark-fluid": "flair", "T1 MPRAGE +C": "t1ce",
             "AX T1 POST GD": "t1ce", "t1_se_tra_KM": "t1ce", "BRAVO C+": "t1ce",
             "t1_mprage_sag": "t1", "T1W_3D_TFE": "t1", "T2 TSE AX": "t2", "T2* GRE": None,
             "ep2d_diff_3scan": None, "": None}
    assert {d: channel_of_series(d) for d in named} == named
    assert channel_of_series("T1 SE AX", contrast_agent=True) == "t1ce"


def _detect_fails(ckpt, folder, out, capsys):
    rc = main(["detect", str(folder), "--model", str(ckpt), "--out", str(out), *FAST])
    err = capsys.readouterr().err
    failed = [ln for ln in err.splitlines() if ln.startswith("berdiff detect: failed:")]
    assert rc == 2 and len(failed) == 1, err  # every input failed: exit 2
    assert not out.exists(), sorted(out.rglob("*"))  # the --out folder it made is removed
    return failed[0]


def test_a_missing_channel_is_named(ckpt4, tmp_path, capsys):
    _study(tmp_path / "study", names={k: v for k, v in SERIES.items() if k != "t2"})
    line = _detect_fails(ckpt4, tmp_path / "study", tmp_path / "out", capsys)
    assert "no DICOM series for T2" in line and "AX T2 FLAIR" in line


def test_two_series_for_one_channel_are_ambiguous(ckpt4, tmp_path, capsys):
    _study(tmp_path / "study", names=dict(SERIES, t2="T2 TSE AX", t2b="T2 TSE COR"))
    line = _detect_fails(ckpt4, tmp_path / "study", tmp_path / "out", capsys)
    assert "2 DICOM series could be T2" in line


@pytest.mark.parametrize("differs", ["study", "frame of reference"])
def test_channels_from_different_studies_are_refused(ckpt4, tmp_path, capsys, differs):
    from pydicom.uid import generate_uid

    uid = generate_uid(prefix="1.2.826.0.1.3680043.8.498.") if differs == "study" else None
    kw = ({"study_uid": uid, "extra": {"StudyDate": "20230102"}} if differs == "study"
          else {"frame_uid": generate_uid()})
    _study(tmp_path / "study", other={"t1ce": kw})
    line = _detect_fails(ckpt4, tmp_path / "study", tmp_path / "out", capsys)
    what = "studies" if differs == "study" else "frames of reference"
    assert f"come from different {what}" in line
    assert "'2 AX T2 FLAIR' (" in line and "'4 T1 MPRAGE +C' (" in line
    if differs == "study":
        assert f"(study ...{uid[-12:]} of 2023-01-02)" in line
    advice = "give a folder of one study" if differs == "study" else "register them onto one grid"
    assert advice in line
    with pytest.raises(DataError, match=f"come from different .*{advice}"):
        load_dicom_input(tmp_path / "study", ["flair", "t1", "t1ce", "t2"], 4)
    _study(tmp_path / "same")  # one study, one frame of reference: accepted
    assert load_dicom_input(tmp_path / "same", ["flair", "t1", "t1ce", "t2"], 4)[0].shape[0] == 4


def _series(tmp_path, **kw):
    return write_series(tmp_path / "dcm", stored_volume(SHAPE), oblique_affine(), **kw)


def test_truncated_pixel_data(ckpt1, tmp_path, capsys):
    files = _series(tmp_path, shuffle_names=False)
    os.truncate(files[2], os.path.getsize(files[2]) - 100)
    line = _detect_fails(ckpt1, tmp_path / "dcm", tmp_path / "out", capsys)
    assert "cannot read the pixels of IM00002" in line and "truncated" in line


def test_truncated_header(ckpt1, tmp_path, capsys):
    files = _series(tmp_path, shuffle_names=False)
    os.truncate(files[3], 200)
    line = _detect_fails(ckpt1, tmp_path / "dcm", tmp_path / "out", capsys)
    assert "IM00003 has no SeriesInstanceUID" in line and "truncated" in line


def test_a_missing_slice_is_refused_not_interpolated(ckpt1, tmp_path, capsys):
    files = _series(tmp_path, shuffle_names=False)
    files[3].unlink()
    line = _detect_fails(ckpt1, tmp_path / "dcm", tmp_path / "out", capsys)
    assert "1 slice(s) missing between slices 3 and 4" in line and "not interpolated" in line


def test_uneven_spacing_is_refused_not_resampled(ckpt1, tmp_path, capsys):
    files = _series(tmp_path, shuffle_names=False)
    ds = read_back(files[5:])[0]
    ipp = np.array(read_back(files[4:5])[0].ImagePositionPatient, float)
    step = ipp - np.array(read_back(files[3:4])[0].ImagePositionPatient, float)
    ds.ImagePositionPatient = [f"{v:.6f}" for v in ipp + 1.4 * step]
    ds.save_as(str(files[5]))
    line = _detect_fails(ckpt1, tmp_path / "dcm", tmp_path / "out", capsys)
    assert "uneven slice spacing between slices 5 and 6" in line and "not resampled" in line


def test_mixed_orientations_in_one_series(ckpt1, tmp_path, capsys):
    """A localizer: one SeriesInstanceUID, slices in two orientations."""
    files = _series(tmp_path, shuffle_names=False)
    uid = read_back(files[:1])[0].SeriesInstanceUID
    write_series(tmp_path / "dcm", stored_volume((SHAPE[0], SHAPE[1], 2), seed=5),
                 oblique_affine(deg=(80, 0, 0)), series_uid=uid, prefix="LOC")
    line = _detect_fails(ckpt1, tmp_path / "dcm", tmp_path / "out", capsys)
    assert "2 orientations" in line and "not one volume" in line


def test_two_echoes_at_each_position(ckpt1, tmp_path, capsys):
    files = _series(tmp_path, shuffle_names=False)
    uid = read_back(files[:1])[0].SeriesInstanceUID
    write_series(tmp_path / "dcm", stored_volume(SHAPE, seed=1), oblique_affine(),
                 series_uid=uid, prefix="E2IM")
    line = _detect_fails(ckpt1, tmp_path / "dcm", tmp_path / "out", capsys)
    assert "share a position" in line


def test_several_series_for_a_one_channel_model(ckpt1, tmp_path, capsys):
    _study(tmp_path / "study", names={"t1": "T1 SE", "t2": "T2 SE"})
    line = _detect_fails(ckpt1, tmp_path / "study", tmp_path / "out", capsys)
    assert "holds 2 usable DICOM series ('2 T1 SE'; '3 T2 SE')" in line


def test_without_pydicom_one_line_says_how_to_install(tmp_path, monkeypatch):
    _series(tmp_path)
    monkeypatch.setitem(sys.modules, "pydicom", None)
    with pytest.raises(DataError, match=r"pip install 'napari-berdiff\[dicom\]'"):
        scan_dicom(tmp_path / "dcm")


def test_one_file_stands_for_its_series(ckpt1, tmp_path, capsys):
    A = oblique_affine()
    t2 = write_series(tmp_path / "dcm", stored_volume(SHAPE), A, "T2 TSE", prefix="T2_")
    write_series(tmp_path / "dcm", stored_volume(SHAPE, seed=1), A, "FLAIR", series_number=2,
                 prefix="FL_")
    (series,) = scan_dicom(t2[0])
    assert series.label == "1 T2 TSE" and sorted(series.files) == sorted(t2)
    out = tmp_path / "out"
    rc = main(["detect", str(t2[0]), "--model", str(ckpt1), "--out", str(out), *FAST])
    assert rc == 0, capsys.readouterr().err
    prov = json.loads((out / f"{t2[0].name}_berdiff_provenance.json").read_text())
    assert prov["input_kind"] == "dicom" and prov["input_info"]["series_description"] == "T2 TSE"
