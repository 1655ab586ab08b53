"""``berdiff detect``: output naming and folder mirroring, never taking outputs for inputs, never
replacing an input, SIGTERM, and settings / messages checked once up front."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from napari_berdiff.cli import main
from napari_berdiff.core.io import signals
from napari_berdiff.core.models.autoencoder import BinaryAutoencoder
from napari_berdiff.core.io.discovery import discover_inputs
from napari_berdiff.core.io.input_kinds import InputItem
from napari_berdiff.core.io.outputs import check_inputs_kept, is_own_output, output_paths
from napari_berdiff.core.models.checkpoint import save_checkpoint
from napari_berdiff.core.models.configs import get_preset
from napari_berdiff.core.io.readers import BRATS_CASE_SUFFIXES, BRATS_MODALITIES, find_brats_case
from napari_berdiff.core.models.unet import BernoulliUNet
from test_detect_cli import AFFINE, make_checkpoint, write_png

FAST = ["--L", "6", "--steps", "3", "--device", "cpu", "--no-progress", "--threads", "1"]
OUT_2D = ["anomaly.tif", "mask.png", "provenance.json", "recon.png", "scores.csv"]


@pytest.fixture(scope="module")
def ck1(tmp_path_factory):
    """A tiny 1-channel model trained (so its meta says) for L <= 8."""
    torch.manual_seed(0)
    ae_cfg, unet_cfg = get_preset("tiny", 1)
    path = tmp_path_factory.mktemp("ck") / "c1.pt"
    return save_checkpoint(path, autoencoder=BinaryAutoencoder(ae_cfg),
                           unet=BernoulliUNet(unet_cfg),
                           meta={"preprocess": {"mode": "resize"}, "max_L": 8})


def detect(capsys, *args) -> tuple[int, str, str]:
    rc = main(["detect", *map(str, args), *FAST])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def files_under(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def brats_case(folder: Path, name: str, seg: bool = True) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for mod in BRATS_MODALITIES:
        nib.save(nib.Nifti1Image(rng.integers(0, 500, (16, 16, 3)).astype(np.int16), AFFINE),
                 str(folder / f"{name}_{mod}.nii.gz"))
    if seg:
        label = rng.choice(np.array([0, 1, 2, 4], np.uint8), (16, 16, 3))
        nib.save(nib.Nifti1Image(label, AFFINE), str(folder / f"{name}_seg.nii.gz"))
    return folder


# ----------------------------------------------------------------------------- 1: names
def test_output_names_never_look_like_brats_files():
    img, vol = InputItem(Path("x.png"), "image", "p/x"), InputItem(Path("c"), "brats_case", "c")
    assert {k: p.as_posix() for k, p in output_paths(img, "o").items()} == {
        "anomaly": "o/p/x_berdiff_anomaly.tif", "seg": "o/p/x_berdiff_mask.png",
        "recon": "o/p/x_berdiff_recon.png", "scores": "o/p/x_berdiff_scores.csv",
        "provenance": "o/p/x_berdiff_provenance.json"}
    names = [p.name for p in output_paths(vol, "o").values()]
    assert names == ["c_berdiff_anomaly.nii.gz", "c_berdiff_mask.nii.gz",
                     "c_berdiff_recon.nii.gz", "c_berdiff_scores.csv", "c_berdiff_provenance.json"]
    for n in names:  # no BraTS modality/label ending, no "seg" (BraTS readers' label fallback)
        assert "seg" not in n.lower() and not n.lower().endswith(BRATS_CASE_SUFFIXES)
        assert is_own_output(n)
    assert not is_own_output("BraTS2021_00000_seg.nii.gz") and not is_own_output("x_mask.png")


def test_out_in_a_brats_case_folder_keeps_its_label(tmp_path, capsys):
    ck4 = make_checkpoint(tmp_path / "c4.pt", 4, "pad")
    case = brats_case(tmp_path / "BraTS2021_00000", "BraTS2021_00000")
    label = case / "BraTS2021_00000_seg.nii.gz"
    before = label.read_bytes()
    for _ in range(2):  # the second run replaces only its own outputs
        rc = main(["detect", str(case), "--model", str(ck4), "--out", str(case), "--overwrite",
                   *FAST])
        assert rc == 0, capsys.readouterr().err
    assert label.read_bytes() == before
    assert sorted(p.name for p in case.glob("*_berdiff_*")) == [
        f"BraTS2021_00000_berdiff_{e}" for e in ("anomaly.nii.gz", "mask.nii.gz",
                                                 "provenance.json", "recon.nii.gz", "scores.csv")]
    assert find_brats_case(case)["seg"] == label  # the case still loads, with its own label
    # a case without a label does not take our mask for one
    bare = brats_case(tmp_path / "bare" / "Case2", "Case2", seg=False)
    assert main(["detect", str(bare), "--model", str(ck4), "--out", str(bare), *FAST]) == 0
    assert "seg" not in find_brats_case(bare)


def test_an_output_on_an_input_file_is_refused_even_with_overwrite(ck1, tmp_path, capsys):
    src = write_png(tmp_path / "x.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "x_berdiff_recon.png").symlink_to(src)  # the output path leads to the input
    before = src.read_bytes()
    rc, _, err = detect(capsys, src, "--model", ck1, "--out", out, "--overwrite")
    assert rc == 2 and err.count("\n") == 1
    assert "would replace the input" in err and "x.png" in err
    assert src.read_bytes() == before and (out / "x_berdiff_recon.png").is_symlink()
    item = InputItem(tmp_path / "v_berdiff_recon.nii.gz", "nifti", "v")  # given by hand
    item.path.write_bytes(b"data")
    with pytest.raises(ValueError, match="would replace the input"):
        check_inputs_kept([item], tmp_path)


# ----------------------------------------------------------------------------- 2: no snowball
def test_outputs_inside_the_input_folder_are_not_inputs(ck1, tmp_path, capsys):
    inp = tmp_path / "in_dir"
    inp.mkdir()
    write_png(inp / "x.png")
    write_png(inp / "y.png", seed=1)
    res = inp / "results"
    for extra in ([], ["--overwrite"]):
        rc, out, err = detect(capsys, inp, "--model", ck1, "--out", res, *extra)
        assert rc == 0, err
        assert "2 input(s) done" in out
    assert files_under(res) == ["berdiff_summary.csv"] + [f"{s}_berdiff_{e}" for s in "xy"
                                                          for e in OUT_2D]
    # the output folder is the input folder: its own outputs are skipped by name
    rc, out, err = detect(capsys, inp, "--model", ck1, "--out", inp)
    assert rc == 0 and "2 input(s) done" in out, err
    rc, out, err = detect(capsys, inp, "--model", ck1, "--out", inp, "--overwrite")
    assert rc == 0 and "2 input(s) done" in out, err
    assert not list(inp.glob("*_berdiff_*_berdiff_*"))
    # a shell glob (in_dir/*) names outputs and the output folder directly: skipped with a note
    args = sorted(inp.iterdir())
    rc, out, err = detect(capsys, *args, "--model", ck1, "--out", res, "--overwrite")
    assert rc == 0 and "2 input(s) done" in out, err
    assert err.count("note: skipped") == 1 and "failed" not in err


def test_outputs_of_older_versions_are_recognised_by_their_provenance(ck1, tmp_path, capsys):
    inp = tmp_path / "in"
    inp.mkdir()
    write_png(inp / "x.png")
    write_png(inp / "x_seg.png", seed=2)  # old output names
    write_png(inp / "x_recon.png", seed=3)
    (inp / "x_provenance.json").write_text(json.dumps({
        "input": "x.png", "detector": {}, "outputs": {"seg": "x_seg.png", "recon": "x_recon.png",
                                                       "provenance": "x_provenance.json"}}))
    write_png(inp / "z_seg.png", seed=4)  # not listed by any provenance: an input
    assert [it.name for it in discover_inputs([inp])] == ["x", "z_seg"]


# ----------------------------------------------------------------------------- 3: mirroring
def test_output_folders_mirror_the_input_tree(ck1, tmp_path, capsys):
    tree = tmp_path / "in_tree"
    for sub in ("p1/v1", "p1/v2", "p2/v1"):
        (tree / sub).mkdir(parents=True)
        write_png(tree / sub / "001.png")
    out = tmp_path / "o"
    rc, _, err = detect(capsys, tree, "--model", ck1, "--out", out)
    assert rc == 0, err
    assert files_under(out) == ["berdiff_summary.csv"] + [
        f"{s}/001_berdiff_{e}" for s in ("p1/v1", "p1/v2", "p2/v1") for e in OUT_2D]
    prov = json.loads((out / "p2/v1/001_berdiff_provenance.json").read_text())
    assert prov["input"].endswith("p2/v1/001.png") and prov["name"] == "p2/v1/001"
    # a later run on part of the tree does not touch p1/v1's results
    before = (out / "p1/v1/001_berdiff_mask.png").stat().st_mtime_ns
    rc, _, err = detect(capsys, tree / "p2", "--model", ck1, "--out", out, "--overwrite")
    assert rc == 0, err
    assert (out / "v1/001_berdiff_mask.png").exists()
    assert (out / "p1/v1/001_berdiff_mask.png").stat().st_mtime_ns == before
    # inputs given as files: their names at the top; a clash is one clear error, before any work
    items = discover_inputs([tree / "p1/v1/001.png", tree / "p2"])
    assert [it.name for it in items] == ["001", "v1/001"]
    rc, _, err = detect(capsys, tree / "p1/v1/001.png", tree / "p2/v1/001.png", "--model", ck1,
                        "--out", tmp_path / "o2")
    assert rc == 2 and err.count("\n") == 1 and "would both write" in err
    assert not (tmp_path / "o2").exists()


def test_stems_are_compared_without_case_and_across_kinds(tmp_path):
    write_png(tmp_path / "Scan.png")
    nib.save(nib.Nifti1Image(np.ones((4, 4, 2), np.float32), AFFINE), str(tmp_path / "scan.nii"))
    with pytest.raises(ValueError, match="would both write"):
        discover_inputs([tmp_path])
    assert [it.name for it in discover_inputs([tmp_path / "Scan.png"])] == ["Scan"]


# ----------------------------------------------------------------------------- 4: signals
SLOW_WRITER = textwrap.dedent("""
    import sys, time
    from napari_berdiff.core.io import atomic
    from napari_berdiff.cli import main

    orig = atomic.AtomicFiles.temp
    def temp(self, final):
        tmp = orig(self, final)
        if final.name.startswith("b_") and len(self._pairs) == 2:  # b's first file is written
            print("WRITING", flush=True)
            time.sleep(120)
        return tmp
    atomic.AtomicFiles.temp = temp
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.parametrize("sig, code, word", [(signal.SIGTERM, 143, "SIGTERM"),
                                             (signal.SIGINT, 130, "interrupted")])
def test_a_stop_signal_leaves_no_partial_files(ck1, tmp_path, sig, code, word):
    inp = tmp_path / "in"
    inp.mkdir()
    write_png(inp / "a.png")
    write_png(inp / "b.png", seed=1)
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    proc = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, "detect", str(inp), "--model",
                             str(ck1), "--out", str(out), *FAST], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        for line in proc.stdout:
            if line.startswith("WRITING"):
                break
        hidden = [p.name for p in out.iterdir() if p.name.startswith(".b_")]
        assert len(hidden) == 2  # b's partial files exist when the signal comes
        proc.send_signal(sig)
        rest, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == code, err
    lines = [ln for ln in err.splitlines() if not ln.startswith("berdiff detect: note:")]
    assert word in err and "Traceback" not in err and len(lines) == 1, err
    assert sorted(p.name for p in out.iterdir()) == [f"a_berdiff_{e}" for e in OUT_2D]


def test_a_signal_while_files_are_renamed_waits_for_the_renames(tmp_path):
    target = tmp_path / "r.txt"
    with pytest.raises(signals.Interrupted) as info:
        with signals.stop_on_signals():
            with signals.deferred_signals():
                signal.raise_signal(signal.SIGTERM)
                target.write_text("renamed")  # still runs: the signal waits
    assert info.value.signum == signal.SIGTERM and target.read_text() == "renamed"
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handler is restored


# ----------------------------------------------------------------------------- 5, 6: up front
@pytest.mark.parametrize("opts, message", [
    (["--L", "9"], "--L 9 is beyond the noise levels this model was trained for (L <= 8)"),
    (["--L", "0"], "--L must be at least 1"),
    (["--min-size", "-5"], "--min-size must be 0 or more"),
    (["--slices", "3:x"], "--slices must look like a:b or k"),
    (["--P", "nan"], "--P must lie in [0, 1] (0: every latent bit resampled, 1: none), got nan"),
])
def test_settings_wrong_for_every_input_fail_once_up_front(ck1, tmp_path, capsys, opts, message):
    bad = [tmp_path / f"broken{i}.nii.gz" for i in range(3)]
    for b in bad:
        b.write_bytes(b"\x1f\x8b not really gzip")
    rc = main(["detect", *map(str, bad), "--model", str(ck1), "--out", str(tmp_path / "o"),
               *FAST, *opts])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and message in err, err
    assert "broken" not in err and not (tmp_path / "o").exists()  # no input was read


def test_slices_on_images_is_said_once(ck1, tmp_path, capsys):
    for i in range(2):
        write_png(tmp_path / f"im{i}.png", seed=i)
    rc, _, err = detect(capsys, tmp_path / "im0.png", tmp_path / "im1.png", "--model", ck1,
                        "--out", tmp_path / "o", "--slices", "0:1")
    assert rc == 0 and err.count("--slices applies to volumes only") == 1, err


def test_out_is_a_file_and_per_input_errors_are_one_line(ck1, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("")
    pngs = [write_png(tmp_path / f"im{i}.png", seed=i) for i in range(2)]
    rc, _, err = detect(capsys, *pngs, "--model", ck1, "--out", afile)
    assert rc == 2 and err == f"berdiff detect: error: --out {afile} is a file, not a folder\n"
    bad = tmp_path / "notimg.png"
    bad.write_text("not an image\nsecond line")
    rc, _, err = detect(capsys, bad, pngs[0], "--model", ck1, "--out", tmp_path / "o")
    assert rc == 1
    line = next(ln for ln in err.splitlines() if "failed:" in ln and "input(s)" not in ln)
    assert line.startswith(f"berdiff detect: failed: {bad}: ")
    assert line.count(str(bad)) == 1 and "[file:" not in line
