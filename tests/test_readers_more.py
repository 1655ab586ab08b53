"""More tests of the data readers and the preparation commands: BraTS2023 naming, voxel grids of a
case, bit depth of integer images, multi-page TIFFs, ``prepare-oct --skip-bad`` and the messages of
``berdiff prepare-*`` (no Qt, no torch)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_berdiff.core.io.files import DataError
from napari_berdiff.core.io.images import image_bit_depth, load_image_2d
from napari_berdiff.core.io.readers import (BRATS_CASE_SUFFIXES, BRATS_MODALITIES,
                                              brats_modality_of, find_brats_case, load_brats_case)

# BraTS2023 token of each channel (FLAIR, T1, T1ce, T2) and of the labels
TOKENS_2023 = {"flair": "t2f", "t1": "t1n", "t1ce": "t1c", "t2": "t2w", "seg": "seg"}
SHAPE = (24, 20, 12)


def write_case(folder: Path, case: str, tokens: dict[str, str], sep: str, shape=SHAPE,
               affines: dict[str, np.ndarray] | None = None, labels=(1, 2, 3),
               z_tumour=(5, 6)) -> dict[str, Path]:
    """A small case: channel c holds 100 * (c + 1) in the brain, labels ``labels`` (NCR, ED, ET)
    in slices ``z_tumour``."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for c, mod in enumerate(BRATS_MODALITIES):
        vol = np.zeros(shape, np.int16)
        vol[4:-4, 4:-4, :] = 100 * (c + 1)
        aff = (affines or {}).get(mod, np.eye(4))
        files[mod] = folder / f"{case}{sep}{tokens[mod]}.nii.gz"
        nib.save(nib.Nifti1Image(vol, aff), str(files[mod]))
    if labels:
        lab = np.zeros(shape, np.uint8)
        ncr, ed, et = labels
        for z in z_tumour:
            lab[8:14, 8:14, z] = ed
            lab[9:13, 9:13, z] = et
            lab[10:12, 10:12, z] = ncr
        files["seg"] = folder / f"{case}{sep}{tokens['seg']}.nii.gz"
        nib.save(nib.Nifti1Image(lab, (affines or {}).get("seg", np.eye(4))), str(files["seg"]))
    return files


def write_2023(folder: Path, case: str = "BraTS-GLI-00000-000", **kw) -> dict[str, Path]:
    return write_case(folder / case, case, TOKENS_2023, "-", **kw)


def run_berdiff(*args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "napari_berdiff.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


# ----------------------------------------------------------------------------- BraTS2023 naming


def test_brats2023_case_found_and_loaded_in_channel_order(tmp_path):
    files = write_2023(tmp_path)
    found = find_brats_case(tmp_path / "BraTS-GLI-00000-000", require_seg=True)
    assert found == files
    vol, seg, affine = load_brats_case(tmp_path / "BraTS-GLI-00000-000")
    # t2f = FLAIR, t1n = T1, t1c = T1ce, t2w = T2: the BraTS2020 channel order
    assert vol.shape == (4,) + SHAPE and [vol[c].max() for c in range(4)] == [100, 200, 300, 400]
    # the raw BraTS2023 labels are kept; 3 (enhancing tumour) is tumour like 2020's 4
    assert set(np.unique(seg)) == {0, 1, 2, 3}
    assert np.count_nonzero(seg > 0) == 2 * 36


def test_brats_naming_variants_and_missing_file_in_the_folders_naming(tmp_path):
    for name, exp in [("BraTS-GLI-00000-000-t2f.nii.gz", "flair"), ("X-T1N.nii", "t1"),
                      ("x_t1c.nii.gz", "t1ce"), ("TCGA-02-0006_t1Gd.nii.gz", "t1ce"),
                      ("x_t2w.nii.gz", "t2"), ("BraTS-GLI-00000-000-seg.nii.gz", "seg"),
                      ("BraTS20_Training_001_t1ce.nii.gz", "t1ce"), ("scan-t1.nii.gz", None),
                      ("flair.nii.gz", None), ("x_t1.png", None)]:
        assert brats_modality_of(name) == exp, name
    assert "-t2f.nii.gz" in BRATS_CASE_SUFFIXES and "_flair.nii" in BRATS_CASE_SUFFIXES
    assert not any("seg" in s for s in BRATS_CASE_SUFFIXES)

    tcia = {"flair": "flair", "t1": "t1", "t1ce": "t1Gd", "t2": "t2", "seg": "seg"}
    write_case(tmp_path / "TCGA-02-0006", "TCGA-02-0006", tcia, "_")
    assert load_brats_case(tmp_path / "TCGA-02-0006")[0].shape == (4,) + SHAPE

    files = write_2023(tmp_path / "m")
    files["t1ce"].unlink()
    with pytest.raises(DataError, match="BraTS-GLI-00000-000-t1c.nii.gz"):
        find_brats_case(files["flair"].parent)
    both = write_case(tmp_path / "amb", "c", {**TOKENS_2023, "t1ce": "t1ce"}, "_")
    (both["t1ce"].parent / "c_t1gd.nii.gz").write_bytes(both["t1ce"].read_bytes())
    with pytest.raises(DataError, match="ambiguous BraTS modality 't1ce'"):
        find_brats_case(tmp_path / "amb")


def test_brats2023_case_folders_are_found_by_detect_and_napari(tmp_path):
    from napari_berdiff.plugin.reader import _folder_kind, _modality_of
    from napari_berdiff.core.io.discovery import discover_inputs
    from napari_berdiff.core.io.readers import BRATS_CASE_SUFFIXES as _CASE_SUFFIXES

    assert _CASE_SUFFIXES == BRATS_CASE_SUFFIXES
    write_2023(tmp_path / "cases")
    items = discover_inputs([tmp_path / "cases"])
    assert [(it.kind, it.path.name) for it in items] == [("brats_case", "BraTS-GLI-00000-000")]
    assert _folder_kind(tmp_path / "cases" / "BraTS-GLI-00000-000") == "brats"
    assert [_modality_of(s) for s in ("a-t2f", "a_t1ce", "a-t1c", "a_t1Gd", "a-seg", "t2")] == [
        "flair", "t1ce", "t1ce", "t1ce", None, "t2"]


def test_napari_reader_opens_a_brats2023_case(tmp_path):
    pytest.importorskip("napari")
    from napari_berdiff.plugin.reader import napari_get_reader

    write_2023(tmp_path)
    folder = str(tmp_path / "BraTS-GLI-00000-000")
    layers = napari_get_reader(folder)(folder)
    names = [kw["name"] for _, kw, _ in layers]
    assert names == [f"BraTS-GLI-00000-000 {t}" for t in ("FLAIR", "T1", "T1ce", "T2")] + [
        "BraTS-GLI-00000-000 ground truth"]
    assert [kw["metadata"]["modality"] for _, kw, _ in layers] == list(BRATS_MODALITIES) + ["seg"]
    assert layers[0][0].max() == 100 and layers[2][0].max() == 300


def test_prepare_brats_reads_brats2023_and_counts_label_3_as_tumour(tmp_path):
    from src_training.train.datasets import load_eval_split
    from src_training.prepare.prepare import find_brats_cases, prepare_brats

    src = tmp_path / "BraTS2023"
    for i in range(3):
        write_2023(src, f"BraTS-GLI-{i:05d}-000", labels=(0, 0, 3))  # enhancing tumour only
    assert [c for c, _ in find_brats_cases(src)] == [f"BraTS-GLI-{i:05d}-000" for i in range(3)]
    meta = prepare_brats(src, tmp_path / "p", image_size=32, drop_bottom=0, drop_top=0,
                         split=(0.0, 0.0, 1.0), show_progress=False)
    assert meta["counts"]["test"]["cases"] == 3 and meta["counts"]["test"]["diseased"] == 6
    test = load_eval_split(tmp_path / "p", "test")
    assert test.labels.max() == 1 and set(np.unique(test.raw_labels)) == {0, 3}
    assert np.array_equal(test.labels > 0, test.raw_labels > 0)
    assert "3 enhancing tumour (BraTS2023)" in meta["labels"]["raw"]


# ----------------------------------------------------------------------------- voxel grids


def test_case_files_on_different_grids_are_refused(tmp_path):
    shifted = np.eye(4)
    shifted[0, 3] = 0.5
    write_case(tmp_path / "a", "c", TOKENS_2023, "-", affines={"t2": shifted})
    with pytest.raises(DataError) as e:
        load_brats_case(tmp_path / "a")
    msg = str(e.value)
    assert "c-t2w.nii.gz and c-t2f.nii.gz" in msg and "\n" not in msg
    assert "0.5 mm" in msg

    voxel = np.diag([1.0, 1.0, 1.2, 1.0])
    write_case(tmp_path / "b", "c", TOKENS_2023, "-", affines={"t1": voxel})
    with pytest.raises(DataError, match=r"c-t1n.nii.gz and c-t2f.nii.gz .*voxel sizes 1x1x1.2 mm"):
        load_brats_case(tmp_path / "b")

    write_case(tmp_path / "s", "c", TOKENS_2023, "-", affines={"seg": shifted})
    with pytest.raises(DataError, match="c-seg.nii.gz and c-t2f.nii.gz"):
        load_brats_case(tmp_path / "s")

    tiny = np.eye(4)
    tiny[:3, 3] = 5e-4  # float32 round-off in a header: the same grid
    tiny[0, 0] = 1 + 5e-5
    write_case(tmp_path / "ok", "c", TOKENS_2023, "-", affines={"t1": tiny, "seg": tiny})
    assert load_brats_case(tmp_path / "ok")[0].shape == (4,) + SHAPE


# ----------------------------------------------------------------------------- bit depth


@pytest.mark.parametrize("top, bits", [(255, 8), (256, 10), (1020, 10), (1023, 10), (1024, 12),
                                       (4095, 12), (4096, 14), (16384, 16), (65535, 16)])
def test_bit_depth_of_16_bit_images(tmp_path, top, bits):
    a = np.zeros((6, 8), np.uint16)
    a[:, 4:] = top
    a[0, 0] = top // 2
    assert image_bit_depth(a) == bits
    for name in ("x.png", "x.tif"):
        Image.fromarray(a).save(tmp_path / name) if name.endswith(".png") else \
            tifffile.imwrite(tmp_path / name, a)
        x = load_image_2d(tmp_path / name)
        np.testing.assert_allclose(x, a / (2 ** bits - 1), atol=1e-6)


def test_8_bit_images_keep_255_and_signed_images(tmp_path):
    dark = np.full((5, 5), 3, np.uint8)
    assert image_bit_depth(dark) == 8
    Image.fromarray(dark).save(tmp_path / "dark.png")
    np.testing.assert_allclose(load_image_2d(tmp_path / "dark.png"), 3 / 255, atol=1e-7)
    pos = np.full((4, 4), 1000, np.int16)
    tifffile.imwrite(tmp_path / "pos.tif", pos)
    np.testing.assert_allclose(load_image_2d(tmp_path / "pos.tif"), 1000 / 1023, atol=1e-6)
    neg = np.array([[-10, 0], [10, 30]], np.int16)
    tifffile.imwrite(tmp_path / "neg.tif", neg)
    np.testing.assert_allclose(load_image_2d(tmp_path / "neg.tif"), (neg + 10) / 40, atol=1e-6)


def test_audit_dark_16_bit_tiff_is_not_near_black(tmp_path):
    """A 16-bit OCT scan using values up to 1020 (10-bit data) reads like its 8-bit original."""
    im = np.random.default_rng(0).integers(0, 256, (48, 64)).astype(np.uint8)
    im[0, 0] = 255
    tifffile.imwrite(tmp_path / "dark.tif", im.astype(np.uint16) * 4)
    Image.fromarray(im).save(tmp_path / "ref.png")
    x, ref = load_image_2d(tmp_path / "dark.tif"), load_image_2d(tmp_path / "ref.png")
    assert x.max() > 0.99 and np.abs(x - ref).max() < 0.005


# ----------------------------------------------------------------------------- TIFF pages


@pytest.mark.parametrize("pages", [2, 3, 4, 5])
def test_multi_page_tiffs_are_refused_not_read_as_colour(tmp_path, pages):
    im = np.random.default_rng(pages).integers(0, 256, (30, 40)).astype(np.uint8)
    stack = np.stack([im] * pages)
    tifffile.imwrite(tmp_path / "pages.tif", stack, photometric="minisblack")
    tifffile.imwrite(tmp_path / "ij.tif", stack, imagej=True)
    Image.fromarray(im).save(tmp_path / "pil.tiff", save_all=True,
                             append_images=[Image.fromarray(im)] * (pages - 1))
    for name in ("pages.tif", "ij.tif", "pil.tiff"):
        with pytest.raises(DataError, match=rf"{name} is a multi-page TIFF \({pages} pages of "
                                            r"30x40\): expected a single 2D image"):
            load_image_2d(tmp_path / name)


@pytest.mark.parametrize("planes", [3, 4])
def test_planar_tiff_stack_as_tifffile_writes_it_is_refused(tmp_path, planes):
    """tifffile.imwrite(np.stack([b1, b2, b3])) stores one page with 3 separate planes (the
    audit's OCT stack); skimage read it as an RGB image and collapsed it to gray."""
    im = np.random.default_rng(0).integers(0, 256, (30, 40)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "stack.tif", np.stack([im] * planes))
    with pytest.raises(DataError, match=f"stack.tif holds {planes} planes of 30x40"):
        load_image_2d(tmp_path / "stack.tif")


def test_single_page_tiffs_still_read(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (30, 40, 3)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb)
    assert load_image_2d(tmp_path / "rgb.tif", gray=False).shape == (30, 40, 3)
    np.testing.assert_allclose(load_image_2d(tmp_path / "rgb.tif"),
                               rgb / 255.0 @ np.array([0.2125, 0.7154, 0.0721]), atol=1e-5)
    g = rng.integers(0, 256, (30, 40)).astype(np.uint8)
    Image.fromarray(g).save(tmp_path / "lzw.tif", compression="tiff_lzw")  # Pillow fallback
    np.testing.assert_allclose(load_image_2d(tmp_path / "lzw.tif"), g / 255.0, atol=1e-6)
    tifffile.imwrite(tmp_path / "one.tif", g[None])  # (1, H, W): one page
    np.testing.assert_allclose(load_image_2d(tmp_path / "one.tif"), g / 255.0, atol=1e-6)
    (tmp_path / "text.tif").write_text("not a tiff\n")
    with pytest.raises(DataError, match="cannot read text.tif as an image"):
        load_image_2d(tmp_path / "text.tif")


# ----------------------------------------------------------------------------- prepare-*


def write_oct_tree(root: Path) -> None:
    rng = np.random.default_rng(0)
    for cls, n in (("NORMAL", 4), ("DRUSEN", 2)):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            im = rng.integers(0, 256, (40, 48)).astype(np.uint8)
            Image.fromarray(im).save(root / cls / f"{cls}-{100 + i}-1.jpeg", quality=95)
    raw = (root / "NORMAL" / "NORMAL-100-1.jpeg").read_bytes()
    (root / "NORMAL" / "NORMAL-999-1.jpeg").write_bytes(raw[: len(raw) // 3])  # truncated


def test_prepare_oct_skip_bad(tmp_path):
    from src_training.prepare.prepare import prepare_oct

    write_oct_tree(tmp_path / "oct")
    out = tmp_path / "p"
    with pytest.raises(DataError, match="NORMAL-999-1.jpeg"):
        prepare_oct(tmp_path / "oct", out, image_size=16, val_fraction=0.0, show_progress=False)
    assert not out.exists()
    with pytest.warns(UserWarning, match="skipping NORMAL/NORMAL-999-1.jpeg"):
        meta = prepare_oct(tmp_path / "oct", out, image_size=16, val_fraction=0.0,
                           skip_bad=True, show_progress=False)
    assert [d["case"] for d in meta["skipped"]] == ["NORMAL/NORMAL-999-1.jpeg"]
    assert meta["counts"]["train"]["count"] == 4 and meta["counts"]["test"]["count"] == 2
    split = json.loads((out / "split.json").read_text())
    assert "NORMAL/NORMAL-999-1.jpeg" not in split["train"] and split["skipped"] == meta["skipped"]
    assert json.loads((out / "meta.json").read_text())["skipped"] == meta["skipped"]


def test_berdiff_prepare_messages(tmp_path):
    """One line ``berdiff prepare-X: error: ...``, exit status 2; warnings and skipped files
    without Python's warning format."""
    write_oct_tree(tmp_path / "oct")
    out = tmp_path / "p"
    bad = run_berdiff("prepare-oct", tmp_path / "oct", out, "--image-size", 16, "--quiet")
    assert bad.returncode == 2 and not out.exists()
    assert bad.stderr.startswith("berdiff prepare-oct: error: ") and "NORMAL-999-1.jpeg" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1

    ok = run_berdiff("prepare-oct", tmp_path / "oct", out, "--image-size", 16, "--quiet",
                     "--skip-bad")
    assert ok.returncode == 0, ok.stderr
    assert "skipped 1 unreadable file(s)" in ok.stdout and "NORMAL/NORMAL-999-1.jpeg" in ok.stdout
    assert ok.stderr.startswith("berdiff prepare-oct: warning: skipping NORMAL/NORMAL-999-1.jpeg")
    assert "UserWarning" not in ok.stderr and "warnings.warn" not in ok.stderr

    folder = run_berdiff("prepare-folder", tmp_path / "oct", tmp_path / "f", "--image-size", 16,
                         "--quiet", "--skip-bad")
    assert folder.returncode == 0, folder.stderr
    # no Python warning format or traceback: neither names a module of the preparation
    assert "UserWarning" not in folder.stderr and "Traceback" not in folder.stderr
    assert "src_training/prepare/" not in folder.stderr, folder.stderr
    assert folder.stderr.count("berdiff prepare-folder: warning: skipping") == 1

    again = run_berdiff("prepare-oct", tmp_path / "oct", out, "--image-size", 16, "--quiet")
    assert again.returncode == 2
    assert again.stderr.strip() == (f"berdiff prepare-oct: error: {out} already exists; pass "
                                    "--overwrite to replace it")
    none = run_berdiff("prepare-brats", tmp_path / "oct", tmp_path / "b", "--quiet")
    assert none.returncode == 2 and "berdiff prepare-brats: error: no BraTS case folders" in none.stderr
    assert "Traceback" not in none.stderr


def test_python_module_prepare_exit_status(tmp_path, capsys):
    from src_training.prepare.cli import main

    assert main(["brats", str(tmp_path / "absent"), str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m src_training.prepare brats: error: BraTS source folder not "
                          "found")


def test_missing_prepared_directory_names_the_prepare_commands(tmp_path):
    from src_training.prepare.prepared_format import read_meta

    with pytest.raises(FileNotFoundError, match="absent not found; make one first with "
                                                "`berdiff prepare-brats`"):
        read_meta(tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="no meta.json.*`berdiff prepare-folder`"):
        read_meta(tmp_path)
