"""The fixes of a new-user audit (issue 15), each with its exact message: --threads / --seed,
--nan-policy, inputs that cannot run, OCT2017 mask folders, old pickles, the cgroup file,
synth-oct --quiet and setup.sh not reinstalling an unchanged package."""

from __future__ import annotations

import os
import pickle
import subprocess
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from napari_berdiff.cli import main
from napari_berdiff.core.inference import batching
from napari_berdiff.core.models.checkpoint import CheckpointError, load_checkpoint
from test_detect_cli import AFFINE, make_checkpoint, write_png

FAST = ["--L", "6", "--steps", "3", "--device", "cpu", "--no-progress", "--threads", "1"]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ck1(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ck") / "c1.pt", 1, "resize")


def detect(capsys, *args):
    rc = main(["detect", *FAST, *map(str, args)])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def notes_removed(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if not ln.startswith("berdiff detect: note:")]


@pytest.mark.parametrize("opts, message", [
    (["--threads", "0"], "--threads must be at least 1 (torch CPU threads; leave it out for the "
                         "default), got 0"),
    (["--seed", "-1"], "--seed must be 0 or more, got -1"),
])
def test_threads_and_seed_are_refused_in_one_line(ck1, tmp_path, capsys, opts, message):
    png = write_png(tmp_path / "im.png")
    rc, _, err = detect(capsys, png, "--model", ck1, "--out", tmp_path / "o", *opts)
    assert rc == 2 and err == f"berdiff detect: error: {message}\n"
    rc = main(["evaluate", str(tmp_path), "--model", str(ck1), *opts])
    assert rc == 2 and capsys.readouterr().err == f"berdiff evaluate: error: {message}\n"


def test_nan_policy(ck1, tmp_path, capsys):
    vol = np.random.default_rng(0).random((20, 22, 3)).astype(np.float32) * 500
    vol[3, 4, 1] = np.nan
    vol[5, 6, 2] = np.inf
    path = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(vol, AFFINE), str(path))
    rc, _, err = detect(capsys, path, "--model", ck1, "--out", tmp_path / "o")
    assert rc == 2 and notes_removed(err) == [
        f"berdiff detect: failed: {path}: nan.nii.gz contains 2 non-finite values (NaN: 1, Inf: 1) "
        f"out of 1320; replace them with 0 by nan_policy='zero' (berdiff detect --nan-policy zero)"]
    assert not (tmp_path / "o").exists()
    rc, _, err = detect(capsys, path, "--model", ck1, "--out", tmp_path / "o", "--nan-policy", "zero")
    assert rc == 0, err
    assert (tmp_path / "o" / "nan_berdiff_mask.nii.gz").exists()


def test_inputs_that_cannot_run_end_in_one_line_and_leave_no_folder(ck1, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out" / "deeper"
    rc, so, err = detect(capsys, empty, "--model", ck1, "--out", out)
    assert rc == 2 and so == "" and err == (f"berdiff detect: error: no NIfTI, image, DICOM, OCT "
                                            f"volume or BraTS case under folder {empty}\n")
    missing = tmp_path / "nowhere.nii.gz"
    rc, so, err = detect(capsys, missing, empty, "--model", ck1, "--out", out)
    assert rc == 2 and err == (f"berdiff detect: error: input not found: {missing} (and 1 more "
                               "input(s) that cannot run)\n")
    # a case that fails when it runs: its one line, exit 2, and the folders made for it removed
    case = tmp_path / "Case1"
    case.mkdir()
    for mod in ("flair", "t1", "t1ce"):
        nib.save(nib.Nifti1Image(np.ones((8, 8, 3), np.float32), AFFINE),
                 str(case / f"Case1_{mod}.nii.gz"))
    (case / "Case1_t2.nii.gz").write_bytes(b"not a nifti")
    rc, so, err = detect(capsys, case, "--model", ck1, "--out", out)
    lines = notes_removed(err)
    assert rc == 2 and so == "" and len(lines) == 1, err
    assert lines[0].startswith(f"berdiff detect: failed: {case}: ")
    assert not (tmp_path / "out").exists()
    # one good input and one bad: the good one is written, exit 1
    png = write_png(tmp_path / "ok.png")
    rc, so, err = detect(capsys, png, missing, "--model", ck1, "--out", out)
    assert rc == 1 and (out / "ok_berdiff_mask.png").exists()
    assert f"berdiff detect: 1 input(s) failed: {missing}" in err


def test_mask_folders_of_an_oct2017_tree_are_not_b_scans(ck1, tmp_path, capsys):
    from napari_berdiff.core.synth.oct import write_oct_dataset

    root = tmp_path / "OCT2017"
    write_oct_dataset(root, n_normal=1, n_drusen=1, seed=0)
    assert list((root / "DRUSEN_masks").iterdir())
    rc, so, err = detect(capsys, root, "--model", ck1, "--out", tmp_path / "o")
    assert rc == 0, err
    assert (f"berdiff detect: note: skipped {root / 'DRUSEN_masks'}: ground-truth masks of an "
            "OCT2017-style tree, not B-scans") in err.splitlines()
    written = sorted(p.parent.name for p in (tmp_path / "o").rglob("*_berdiff_mask.png"))
    assert written == ["DRUSEN", "NORMAL"]


def test_old_format_pickles_are_refused_as_pickles(tmp_path):
    legacy = tmp_path / "legacy.pt"
    torch.save({"format": "napari-berdiff"}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(legacy)
    assert str(err.value) == (
        f"refusing to load {legacy}: it is an old-format (non-zip) PyTorch pickle, and unpickling "
        "it could run arbitrary code; only zip-format checkpoints are read (weights_only). "
        "Re-save it from a trusted copy with a current torch.save, or train / export it with "
        "berdiff")
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError, match=r"it is a Python pickle, and unpickling it could "
                                              r"run arbitrary code"):
        load_checkpoint(plain)
    other = tmp_path / "other.bin"
    other.write_bytes(b"\x00\x01 something else")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint file"):
        load_checkpoint(other)


def test_the_cgroup_files_are_closed(tmp_path, monkeypatch):
    limit, usage = tmp_path / "memory.max", tmp_path / "memory.current"
    limit.write_text("1000000\n")
    usage.write_text("250000\n")
    monkeypatch.setattr(batching, "_CGROUP_FILES", ((str(limit), str(usage)),))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert batching._cgroup_available() == 750000
        import gc

        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


def test_synth_oct_quiet(tmp_path, capsys):
    assert main(["synth-oct", str(tmp_path / "a"), "--normal", "1", "--drusen", "1"]) == 0
    loud = capsys.readouterr()
    assert "B-scan" in loud.err and loud.out == f"wrote 2 B-scan(s) to {tmp_path / 'a'}\n"
    assert main(["synth-oct", str(tmp_path / "b"), "--normal", "1", "--drusen", "1",
                 "--quiet"]) == 0
    quiet = capsys.readouterr()
    assert quiet.err == "" and quiet.out == f"wrote 2 B-scan(s) to {tmp_path / 'b'}\n"


FAKE_PYTHON = """#!/usr/bin/env bash
echo "$*" >> "{log}"
case "$*" in
  *"-I -c"*) echo "{repo}" ;;
esac
exit 0
"""


def test_setup_skips_pip_when_nothing_changed(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    log = tmp_path / "calls.log"
    py = venv / "bin" / "python"
    py.write_text(FAKE_PYTHON.format(log=log, repo=REPO))
    py.chmod(0o755)
    env = dict(os.environ, SKIP_APT="1", VENV=str(venv))

    def setup():
        r = subprocess.run(["bash", str(REPO / "scripts" / "setup.sh")], env=env,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        return r.stdout

    first = setup()
    assert "setup: installing napari-berdiff[test]" in first
    assert "-m pip install -q -e .[test]" in log.read_text()
    log.write_text("")
    second = setup()
    assert ("setup: napari-berdiff[test] is installed and pyproject.toml is unchanged; "
            "skipping pip") in second.splitlines()
    assert "pip" not in log.read_text()
    (venv / ".napari-berdiff-setup").write_text("an older pyproject.toml\n")
    setup()
    assert "-m pip install -q -e .[test]" in log.read_text()
