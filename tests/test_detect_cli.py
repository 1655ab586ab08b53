"""``berdiff detect`` as a user calls it (subprocess), and its input/output helpers."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from napari_berdiff.core.models.autoencoder import BinaryAutoencoder
from napari_berdiff.core.io.atomic import AtomicFiles
from napari_berdiff.core.io.discovery import discover_inputs, parse_slices, shard
from napari_berdiff.core.io.outputs import output_paths
from napari_berdiff.core.models.checkpoint import save_checkpoint
from napari_berdiff.core.models.configs import get_preset
from napari_berdiff.core.io.readers import BRATS_MODALITIES
from napari_berdiff.core.models.unet import BernoulliUNet

AFFINE = np.array([[0.0, -1.2, 0.0, 30.0],
                   [0.9, 0.0, 0.0, -20.0],
                   [0.0, 0.0, 2.5, 5.0],
                   [0.0, 0.0, 0.0, 1.0]])


def make_checkpoint(path: Path, c: int, mode: str) -> Path:
    torch.manual_seed(0)
    ae_cfg, unet_cfg = get_preset("tiny", c)
    ae, unet = BinaryAutoencoder(ae_cfg), BernoulliUNet(unet_cfg)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return save_checkpoint(path, autoencoder=ae, unet=unet, meta={"preprocess": {"mode": mode}})


@pytest.fixture(scope="module")
def ck1(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ck") / "c1.pt", 1, "resize")


def start(*args, env=None) -> subprocess.Popen:
    e = dict(os.environ, **(env or {}))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        if env is None or k not in env:
            e.pop(k, None)
    return subprocess.Popen([sys.executable, "-m", "napari_berdiff.cli", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=e)


def finish(proc: subprocess.Popen) -> subprocess.CompletedProcess:
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def berdiff(*args, env=None) -> subprocess.CompletedProcess:
    return finish(start(*args, env=env))


def write_png(path: Path, h=40, w=50, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)).save(path)
    return path


FAST = ("--L", 6, "--steps", 3, "--device", "cpu", "--no-progress")


def test_nifti_png_and_a_corrupt_file(ck1, tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    vol = np.random.default_rng(0).random((30, 34, 5)).astype(np.float32) * 800
    nib.save(nib.Nifti1Image(vol, AFFINE), str(inp / "head.nii.gz"))
    png = write_png(inp / "scan.png")
    bad = inp / "broken.nii.gz"
    bad.write_bytes(b"\x1f\x8b not really gzip")
    out = tmp_path / "out"
    proc = berdiff("detect", inp / "head.nii.gz", bad, png, "--model", ck1, "--out", out, *FAST)
    assert proc.returncode == 1, proc.stderr
    assert "broken.nii.gz" in proc.stderr and "Traceback" not in proc.stderr
    assert not list(out.glob("broken*")) and not list(out.glob(".*"))

    for name in ("anomaly", "mask", "recon"):
        img = nib.load(str(out / f"head_berdiff_{name}.nii.gz"))
        assert img.shape == (30, 34, 5)
        np.testing.assert_allclose(img.affine, AFFINE, atol=1e-5)
    seg = np.asarray(nib.load(str(out / "head_berdiff_mask.nii.gz")).dataobj)
    assert seg.dtype == np.uint8 and set(np.unique(seg)) <= {0, 1}
    amap = nib.load(str(out / "head_berdiff_anomaly.nii.gz")).get_fdata()
    assert amap.min() >= 0 and amap.max() > 0
    rows = list(csv.DictReader(open(out / "head_berdiff_scores.csv")))
    assert [int(r["slice"]) for r in rows] == list(range(5))
    assert all(0.0 <= float(r["masked_fraction"]) <= 1.0 for r in rows)
    prov = json.loads((out / "head_berdiff_provenance.json").read_text())
    assert prov["input"].endswith("head.nii.gz") and Path(prov["input"]).is_absolute() and prov["detector"]["L"] == 6
    assert prov["detector"]["model_hash"]

    assert np.asarray(Image.open(out / "scan_berdiff_mask.png")).shape == (40, 50)
    assert np.asarray(Image.open(out / "scan_berdiff_recon.png")).shape == (40, 50)
    import tifffile

    a = tifffile.imread(out / "scan_berdiff_anomaly.tif")
    assert a.shape == (40, 50) and a.dtype == np.float32

    # existing outputs are kept without --overwrite (checked before running anything)
    before = (out / "scan_berdiff_mask.png").stat().st_mtime_ns
    proc = berdiff("detect", png, "--model", ck1, "--out", out, *FAST)
    assert proc.returncode == 2 and "already exist" in proc.stderr
    assert (out / "scan_berdiff_mask.png").stat().st_mtime_ns == before
    from napari_berdiff.cli import main  # in-process: the same code, without a second start-up

    assert main(["detect", str(png), "--model", str(ck1), "--out", str(out), "--overwrite",
                 *map(str, FAST)]) == 0
    assert (out / "scan_berdiff_mask.png").stat().st_mtime_ns != before


def test_slices_option_and_a_brats_case(tmp_path):
    ck4 = make_checkpoint(tmp_path / "c4.pt", 4, "pad")
    case = tmp_path / "BraTS20_Training_007"
    case.mkdir()
    rng = np.random.default_rng(1)
    for mod in BRATS_MODALITIES:
        nib.save(nib.Nifti1Image(rng.integers(0, 500, (24, 28, 6)).astype(np.int16), AFFINE),
                 str(case / f"BraTS20_Training_007_{mod}.nii.gz"))
    out = tmp_path / "out"
    proc = berdiff("detect", case, "--model", ck4, "--out", out, "--slices", "2:4", *FAST)
    assert proc.returncode == 0, proc.stderr
    rec = nib.load(str(out / "BraTS20_Training_007_berdiff_recon.nii.gz"))
    assert rec.shape == (24, 28, 6, 4)
    np.testing.assert_allclose(rec.affine, AFFINE, atol=1e-5)
    r = np.asarray(rec.dataobj)
    assert r[..., [0, 1, 4, 5], :].max() == 0 and r[..., 2:4, :].max() > 0  # only slices 2, 3
    rows = list(csv.DictReader(open(out / "BraTS20_Training_007_berdiff_scores.csv")))
    assert [int(x["slice"]) for x in rows] == [2, 3]
    # a 1-channel NIfTI is refused by the 4-channel model, by name
    one = tmp_path / "single.nii"
    nib.save(nib.Nifti1Image(np.ones((8, 8, 2), np.float32), AFFINE), str(one))
    proc = berdiff("detect", one, "--model", ck4, "--out", out, *FAST)
    assert proc.returncode == 2 and "single.nii" in proc.stderr  # its only input failed


def test_rank_sharding_splits_the_inputs(ck1, tmp_path):
    inp = tmp_path / "imgs"
    inp.mkdir()
    for i in range(3):
        write_png(inp / f"img{i}.png", 20, 24, seed=i)
    out = tmp_path / "out"
    procs = [start("detect", inp, "--model", ck1, "--out", out, *FAST,
                   env={"RANK": str(rank), "WORLD_SIZE": "2"}) for rank in (0, 1)]
    results = [finish(p) for p in procs]  # both ranks run at once, as under torchrun
    for rank, proc in enumerate(results):
        assert proc.returncode == 0, proc.stderr
        assert f"[rank {rank}/2]" in proc.stdout
    mine = [{ln.split(" -> ")[0].rsplit("/", 1)[-1] for ln in r.stdout.splitlines() if " -> " in ln}
            for r in results]
    assert mine == [{"img0.png", "img2.png"}, {"img1.png"}]
    assert sorted(p.name for p in out.glob("*_berdiff_mask.png")) == [
        f"img{i}_berdiff_mask.png" for i in range(3)]
    for i in range(3):
        prov = json.loads((out / f"img{i}_berdiff_provenance.json").read_text())
        assert (prov["rank"], prov["world_size"]) == (i % 2, 2)


def test_speed_options_batch_size_and_empty_slices(ck1, tmp_path):
    """--batch-size auto|N, --amp, --channels-last: same maps; constant slices are skipped."""
    from napari_berdiff.cli import main

    vol = np.random.default_rng(3).random((20, 22, 6)).astype(np.float32) * 700
    vol[..., 0] = 0.0  # outside the head: skipped
    src = tmp_path / "vol.nii.gz"
    nib.save(nib.Nifti1Image(vol, AFFINE), str(src))
    maps = {}
    for name, opts in {"auto": ["--batch-size", "auto"],
                       "one": ["--batch-size", "1", "--amp", "off", "--channels-last"]}.items():
        out = tmp_path / name
        assert main(["detect", str(src), "--model", str(ck1), "--out", str(out),
                     *map(str, FAST), *opts]) == 0
        maps[name] = nib.load(str(out / "vol_berdiff_anomaly.nii.gz")).get_fdata()
        prov = json.loads((out / "vol_berdiff_provenance.json").read_text())["detector"]
        assert prov["skipped_slices"] == [0] and prov["amp"] in ("auto", "off")
        assert prov["batch"]["source"] == ("auto" if name == "auto" else "user")
    assert prov["batch"]["slices_per_call"] == 1 and prov["batch"]["calls"] == 5
    assert prov["channels_last"] is True
    np.testing.assert_allclose(maps["auto"], maps["one"], atol=1e-5)
    assert maps["auto"][..., 0].max() == 0 and maps["auto"][..., 1:].max() > 0
    with pytest.raises(SystemExit):  # argparse: exit status 2 with a message
        main(["detect", str(src), "--model", str(ck1), "--out", str(tmp_path / "x"),
              "--batch-size", "0"])
    assert main(["detect", str(src), "--model", str(ck1), "--out", str(tmp_path / "y"),
                 *map(str, FAST), "--amp", "fp16"]) == 2  # fp16 needs CUDA


# ----------------------------------------------------------------------------- helpers in-process
def test_discover_inputs_names_and_kinds(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b" / "sub").mkdir(parents=True)
    write_png(tmp_path / "a" / "x.png")
    write_png(tmp_path / "b" / "sub" / "x.png")
    (tmp_path / "b" / "notes.txt").write_text("ignored")
    case = tmp_path / "b" / "case1"
    case.mkdir()
    (case / "case1_flair.nii.gz").write_bytes(b"")
    items = discover_inputs([tmp_path / "a", tmp_path / "b", tmp_path / "a" / "x.png",
                             tmp_path / "missing.nii", tmp_path / "b" / "notes.txt"])
    kinds = [(it.kind, it.name) for it in items]
    # a folder's files come before its subfolders; a/x.png given twice runs once; stems mirror
    # the path below the folder argument (tests/test_detect_io.py covers the naming in full)
    assert kinds == [("image", "x"), ("brats_case", "case1"), ("image", "sub/x"),
                     ("invalid", "missing.nii"), ("invalid", "notes.txt")]
    assert output_paths(items[1], tmp_path)["seg"].name == "case1_berdiff_mask.nii.gz"
    assert shard(list(range(7)), 1, 3) == [1, 4]
    assert parse_slices("80:83", 155) == [80, 81, 82] and parse_slices("-1", 5) == [4]
    assert parse_slices(None, 5) is None
    with pytest.raises(ValueError):
        parse_slices("9:12", 5)


def test_atomic_files_leave_nothing_on_interrupt(tmp_path):
    target = tmp_path / "o" / "r.nii.gz"
    with pytest.raises(KeyboardInterrupt):
        with AtomicFiles() as files:
            t = files.temp(target)
            assert t.name.endswith(".nii.gz") and t.parent == target.parent
            t.write_bytes(b"partial")
            raise KeyboardInterrupt
    assert not (tmp_path / "o").exists()  # not even the folder it made for the output
    (tmp_path / "o").mkdir()
    with pytest.raises(KeyboardInterrupt):  # a folder that was there stays
        with AtomicFiles() as files:
            files.temp(target).write_bytes(b"partial")
            raise KeyboardInterrupt
    assert list((tmp_path / "o").iterdir()) == []
    with AtomicFiles() as files:
        files.temp(target).write_bytes(b"done")
    assert target.read_bytes() == b"done" and len(list(target.parent.iterdir())) == 1
