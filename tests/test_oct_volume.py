"""OCT volume exports through eyepy: a Heyex XML export and an eyepy-saved EyeVolume written in the
test from generated B-scans, read back exactly, run through ``berdiff detect`` (each B-scan as
the model input a single B-scan image gives), and the bad inputs (one line each, nothing
written)."""

from __future__ import annotations

import csv
import json
import sys

import nibabel as nib
import numpy as np
import pytest
import tifffile

from _oct_helpers import LOC_SCALE, SPACING, X0, Y0, bscans, eye_volume, write_heyex_xml
from napari_berdiff.cli import main
from napari_berdiff.core.io.oct_volume import load_oct_volume, oct_affine
from napari_berdiff.core.io.files import DataError

FAST = ["--L", "6", "--steps", "3", "--device", "cpu", "--no-progress", "--threads", "1"]
N = 4


@pytest.fixture(scope="module")
def scans():
    return bscans(N)


@pytest.mark.parametrize("open_as", ["folder", "xml"])
def test_a_heyex_xml_export_reads_back_exactly(scans, tmp_path, open_as):
    imgs, _, lines = scans
    xml = write_heyex_xml(tmp_path / "export", imgs, lines)
    ov = load_oct_volume(tmp_path / "export" if open_as == "folder" else xml)
    assert ov.data.shape == imgs.shape and ov.data.dtype == np.float32
    np.testing.assert_allclose(ov.data, imgs / 255.0, atol=1e-6)
    np.testing.assert_allclose(ov.spacing, SPACING, rtol=1e-6)
    assert ov.unit == "mm" and ov.info["laterality"] == "OD"
    assert list(ov.layers) == ["ILM", "RPE", "BM"] and not ov.maps
    for name, h in lines.items():
        np.testing.assert_allclose(ov.layers[name], h, atol=1e-4)
    assert ov.localizer.shape == (256, 256) and ov.localizer_spacing == (LOC_SCALE, LOC_SCALE)
    # B-scan k lies on localizer row (Y0 + (N-1-k) * spacing) / pixel size, from X0 across
    rows = (Y0 + (N - 1 - np.arange(N)) * SPACING[0]) / LOC_SCALE
    np.testing.assert_allclose(ov.bscan_lines[:, 0, 0], rows)
    np.testing.assert_allclose(ov.bscan_lines[:, :, 1], [[X0 / LOC_SCALE,
                               (X0 + 511 * SPACING[2]) / LOC_SCALE]] * N)


def test_an_eyepy_saved_volume_keeps_its_drusen_annotation(scans, tmp_path):
    imgs, masks, lines = scans
    eye_volume(imgs, masks, lines).save(tmp_path / "scan.eye")
    ov = load_oct_volume(tmp_path / "scan.eye")
    np.testing.assert_allclose(ov.data, imgs / 255.0, atol=1e-6)
    assert list(ov.maps) == ["drusen"] and masks.any()
    np.testing.assert_array_equal(ov.maps["drusen"], masks)
    np.testing.assert_allclose(ov.layers["BM"], lines["BM"], atol=1e-4)
    np.testing.assert_allclose(ov.spacing, SPACING)


def test_detect_runs_each_bscan_as_the_image_alone_would(ckpt1, scans, tmp_path, capsys):
    from PIL import Image

    imgs, _, lines = scans
    write_heyex_xml(tmp_path / "in" / "eye1", imgs, lines)
    Image.fromarray(imgs[0]).save(tmp_path / "bscan0.png")
    out = tmp_path / "out"
    rc = main(["detect", str(tmp_path / "in"), str(tmp_path / "bscan0.png"), "--model", str(ckpt1),
               "--out", str(out), *FAST])
    assert rc == 0, capsys.readouterr().err
    a = nib.load(str(out / "eye1_berdiff_anomaly.nii.gz"))  # the export folder's name
    assert a.shape == (512, 496, N)  # (A-scan, depth, B-scan): B-scans on a NIfTI viewer's slider
    np.testing.assert_allclose(a.affine, oct_affine(SPACING), atol=1e-6)
    amap = np.asarray(a.dataobj)
    assert amap.max() > 0
    # B-scan 0 (seed index 0) gives exactly what the same B-scan as a PNG gives
    alone = tifffile.imread(out / "bscan0_berdiff_anomaly.tif")
    np.testing.assert_allclose(amap[:, :, 0].T, alone, rtol=1e-5, atol=1e-6)
    rows = list(csv.DictReader(open(out / "eye1_berdiff_scores.csv")))
    assert [int(r["slice"]) for r in rows] == list(range(N))
    prov = json.loads((out / "eye1_berdiff_provenance.json").read_text())
    assert prov["input_kind"] == "oct_volume"
    assert prov["orientation"]["model_voxel_order"] == "depth, A-scan, B-scan"
    assert prov["input_info"]["n_bscans"] == N and prov["input_info"]["reader"] == "eyepy xml"
    np.testing.assert_allclose(prov["input_info"]["spacing"], SPACING, rtol=1e-6)
    # no pixel annotation in an XML export (its layer lines are boundaries): no reference figures
    assert not (out / "eye1_berdiff_reference.json").exists()
    assert "reference" not in prov["outputs"]
    assert "against its annotation" not in capsys.readouterr().out


def _as_bscans(path):
    """A written (A-scan, depth, B-scan) NIfTI output as (B-scan, depth, A-scan)."""
    return np.transpose(np.asarray(nib.load(str(path)).dataobj), (2, 1, 0))


def test_detect_writes_figures_against_the_files_drusen_annotation(ckpt1, scans, tmp_path, capsys):
    from napari_berdiff.core.evaluation.reference import reference_figures, reference_line

    imgs, masks, lines = scans
    masks = masks.copy()
    masks[1] = False  # one B-scan without drusen: it does not count for the paper figures
    eye_volume(imgs, masks, lines).save(tmp_path / "scan.eye")
    out = tmp_path / "out"
    rc = main(["detect", str(tmp_path / "scan.eye"), "--model", str(ckpt1), "--out", str(out),
               *FAST])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    rep = json.loads((out / "scan_berdiff_reference.json").read_text())
    # the same figures from the written outputs, computed here
    expect = reference_figures(_as_bscans(out / "scan_berdiff_anomaly.nii.gz"),
                               _as_bscans(out / "scan_berdiff_mask.nii.gz"), masks)
    got = rep["figures"]["drusen"]
    assert list(rep["figures"]) == ["drusen"] and rep["b_scans_run"] == N
    assert got["slices_with_annotation"] == expect["slices_with_annotation"] == N - 1
    for key in ("dice", "auprc"):
        assert got[key]["n"] == expect[key]["n"]
        for stat in ("mean", "std"):
            assert got[key][stat] == pytest.approx(expect[key][stat], abs=1e-6)
        assert got[f"{key}_pooled"] == pytest.approx(expect[f"{key}_pooled"], abs=1e-6)
    assert 0.0 < got["auprc_pooled"] <= 1.0
    line = reference_line({"drusen": expect})
    assert f"against its annotation: {line}" in printed.out
    assert "3 annotated B-scans" in line
    prov = json.loads((out / "scan_berdiff_provenance.json").read_text())
    assert prov["outputs"]["reference"] == "scan_berdiff_reference.json"
    # a second run refuses to replace it, as every other output
    rc = main(["detect", str(tmp_path / "scan.eye"), "--model", str(ckpt1), "--out", str(out),
               *FAST])
    assert rc == 2 and "already exist" in capsys.readouterr().err


def _fails(ckpt, path, out, capsys, *extra):
    rc = main(["detect", str(path), "--model", str(ckpt), "--out", str(out), *FAST, *extra])
    err = capsys.readouterr().err
    failed = [ln for ln in err.splitlines() if ln.startswith("berdiff detect: failed:")]
    assert rc == 2 and len(failed) == 1, err  # every input failed: exit 2
    assert not out.exists(), sorted(out.rglob("*"))  # the --out folder it made is removed
    return failed[0]


def test_bscans_of_different_sizes(ckpt1, scans, tmp_path, capsys):
    from PIL import Image

    imgs, _, _ = scans
    write_heyex_xml(tmp_path / "ex", imgs)
    Image.fromarray(imgs[2, :480]).save(tmp_path / "ex" / "export_002.png")
    line = _fails(ckpt1, tmp_path / "ex", tmp_path / "out", capsys)
    assert "the B-scans of export.xml differ in size: export_002.png is 512x480" in line


def test_a_missing_bscan_image(ckpt1, scans, tmp_path, capsys):
    write_heyex_xml(tmp_path / "ex", scans[0])
    (tmp_path / "ex" / "export_001.png").unlink()
    line = _fails(ckpt1, tmp_path / "ex" / "export.xml", tmp_path / "out", capsys)
    assert "lists export_001.png, which is not in its folder" in line


def test_a_truncated_vol_and_a_vol_of_another_vendor(ckpt1, tmp_path, capsys):
    (tmp_path / "cut.vol").write_bytes(b"HSF-OCT-103\0" + b"\0" * 500)  # header cut short
    line = _fails(ckpt1, tmp_path / "cut.vol", tmp_path / "out", capsys)
    assert "cannot read cut.vol as a Heidelberg VOL file (truncated or corrupt" in line
    (tmp_path / "other.vol").write_bytes(b"\x00VOLUME\x00" * 100)
    line = _fails(ckpt1, tmp_path / "other.vol", tmp_path / "out", capsys)
    assert "other.vol is not a Heidelberg VOL file" in line


def test_a_truncated_eye_file(ckpt1, scans, tmp_path, capsys):
    imgs, masks, lines = scans
    eye_volume(imgs, masks, lines).save(tmp_path / "scan.eye")
    data = (tmp_path / "scan.eye").read_bytes()
    (tmp_path / "scan.eye").write_bytes(data[: len(data) // 2])
    line = _fails(ckpt1, tmp_path / "scan.eye", tmp_path / "out", capsys)
    assert "cannot read scan.eye as an eyepy .eye file (truncated or corrupt" in line


@pytest.mark.parametrize("name,vendor", [("scan.img", "a Zeiss Cirrus export"),
                                         ("scan.fds", "a Topcon FDS file")])
def test_an_unsupported_vendor_is_named(ckpt1, tmp_path, capsys, name, vendor):
    (tmp_path / name).write_bytes(b"\0" * 512)
    out = tmp_path / "out"
    rc = main(["detect", str(tmp_path / name), "--model", str(ckpt1), "--out", str(out), *FAST])
    err = capsys.readouterr().err
    # nothing to run: one line, exit 2, no folder (an input found unreadable while running is a
    # "failed:" line instead; see _fails)
    assert rc == 2 and err.count("\n") == 1 and not out.exists(), err
    assert err.startswith(f"berdiff detect: error: {name} is {vendor}, which napari-berdiff "
                          "cannot read"), err


def test_a_volume_for_a_four_channel_model(ckpt4, scans, tmp_path, capsys):
    write_heyex_xml(tmp_path / "ex", scans[0])
    line = _fails(ckpt4, tmp_path / "ex", tmp_path / "out", capsys)
    assert "is an OCT volume (one channel) but the model expects 4 channels" in line


def test_without_eyepy_one_line_says_how_to_install(scans, tmp_path, monkeypatch):
    write_heyex_xml(tmp_path / "ex", scans[0][:2])
    monkeypatch.setitem(sys.modules, "eyepy", None)
    with pytest.raises(DataError, match=r"pip install 'napari-berdiff\[oct\]'"):
        load_oct_volume(tmp_path / "ex")


def test_reference_figures_over_the_slices_a_run_covered(scans):
    from napari_berdiff.core.evaluation.reference import (reference_figures, reference_line,
                                                          reference_report)

    _, masks, _ = scans
    ref = masks.copy()
    ref[2] = False
    perfect = reference_figures(ref.astype(float), ref, ref)
    assert perfect["dice"]["mean"] == 1.0 and perfect["auprc_pooled"] == 1.0
    assert perfect["slices_with_annotation"] == N - 1 == perfect["dice"]["n"]
    worst = reference_figures(1.0 - ref, ~ref, ref)
    assert worst["dice"]["mean"] == 0.0 and worst["auprc_pooled"] < 0.5
    # a run over B-scans 1 and 2 only: the annotation's slices 1 and 2 are compared
    rng = np.random.default_rng(0)
    amap = rng.random((2,) + ref.shape[1:]) + ref[1:3]
    seg = ref[1:3].copy()
    seg[0, :, :40] = True
    rep = reference_report({"drusen": ref}, amap, seg, [1, 2])
    assert rep == {"drusen": reference_figures(amap, seg, ref[1:3])}
    assert rep["drusen"]["slices_with_annotation"] == 1  # B-scan 2 holds none
    assert 0.0 < rep["drusen"]["dice"]["mean"] < 1.0
    line = reference_line(rep)
    d = rep["drusen"]["dice"]["mean"]
    assert line.startswith(f"drusen: Dice {d:.3f} +- 0.000 (paper, 1 annotated B-scan), ")
    none = reference_line({"drusen": reference_figures(amap, seg, np.zeros_like(seg))})
    # no annotated pixel: the paper figures and AUPRC are undefined, the pooled Dice of a
    # non-empty segmentation is 0
    assert none == ("drusen: Dice n/a +- n/a (paper, 0 annotated B-scans), 0.000 pooled; "
                    "AUPRC n/a +- n/a, n/a pooled")
