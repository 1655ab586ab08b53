"""``berdiff diagnose ae|unet|oracle|paired`` as a user calls it, on a tiny model and a tiny
prepared BraTS tree, and the diagnosis pieces on hand-made cases."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_berdiff.core.evaluation.diagnosis import oracle, unet
from napari_berdiff.core.models.checkpoint import load_checkpoint, save_checkpoint
from src_training.train.datasets import load_eval_split

from _eval_data import prepared_brats32

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return prepared_brats32(tmp_path_factory)


def berdiff(*args, script=None):
    """Run ``berdiff diagnose ARGS`` (or a script) in a fresh process, as a user would."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    cmd = ([sys.executable, str(script)] if script else
           [sys.executable, "-m", "napari_berdiff.cli", "diagnose"])
    return subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, timeout=300,
                          env=env)


def test_diagnose_ae_separates_the_anomalys_cost(prepared, ckpt4, tmp_path):
    out = tmp_path / "psnr.json"
    r = berdiff("ae", ckpt4, prepared, "--split", "test", "--threads", "1", "--json", out)
    assert r.returncode == 0, r.stderr
    assert "the anomaly itself costs" in r.stdout
    got = json.loads(out.read_text())
    test = load_eval_split(prepared, "test")
    assert got["slices"] == len(test) and got["diseased"] == int((~test.healthy).sum()) > 0
    assert got["gap_db"] == pytest.approx(got["psnr_healthy"] - got["psnr_diseased"])
    # recompute the diseased slices' PSNR with and without the anomaly from the same codes
    ae = load_checkpoint(ckpt4).build_autoencoder("cpu")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # batch 16 covers the split in one call: the same draws as the command
        x = torch.from_numpy(np.ascontiguousarray(test.images))
        rec = ae.decode(ae.sample_bits(ae.encode(x), generator=gen)).clamp(0, 1).numpy()
    whole, rest = [], []
    for i in np.flatnonzero(~test.healthy):
        xi, ri, lab = test.images[i], rec[i], test.labels[i].astype(bool)
        whole.append(20 * np.log10(xi.max() / np.sqrt(((xi - ri) ** 2).mean())))
        rest.append(20 * np.log10(xi.max() / np.sqrt(((xi - ri) ** 2)[:, ~lab].mean())))
    assert got["psnr_diseased"] == pytest.approx(np.mean(whole), abs=1e-3)
    assert got["psnr_diseased_without_anomaly"] == pytest.approx(np.mean(rest), abs=1e-3)
    assert got["anomaly_cost_db"] == pytest.approx(np.mean(rest) - np.mean(whole), abs=1e-3)
    # the figures file is never replaced without --overwrite, and nothing runs before that check
    again = berdiff("ae", ckpt4, prepared, "--json", out)
    assert again.returncode == 2 and "--overwrite" in again.stderr and again.stdout == ""


def test_unet_cells_and_bits_on_a_hand_case():
    lab = np.zeros((1, 4, 4), bool)
    lab[0, 0, 0:2] = True          # cell (0,0): 2 of 4 pixels -> anomaly
    lab[0, 0, 2] = True            # cell (0,1): 1 of 4 -> partial, left out
    cells = unet.cell_labels(lab, 2)
    assert cells.tolist() == [[[1, -1], [0, 0]]]
    # 1 image, 1 channel, 2x2 cells; the noise flipped the bit of cell (1,1) only
    z = np.array([[[[1, 0], [0, 1]]]], float)
    z_t = np.array([[[[1, 0], [0, 0]]]], float)
    eps = np.array([[[[0.7, 0.9], [0.2, 0.6]]]])
    scores, is_anom, hits, n = unet.split_bits(eps, z, z_t, cells, P=0.5)
    assert sorted(zip(scores.tolist(), is_anom.tolist())) == [(0.2, False), (0.7, True)]
    assert (hits, n) == (1, 1)
    _, _, hits, _ = unet.split_bits(eps, z, z_t, cells, P=0.65)
    assert hits == 0


def test_diagnose_unet_prints_its_table(prepared, ckpt4, tmp_path):
    out = tmp_path / "u.json"
    r = berdiff("unet", ckpt4, prepared, "--split", "test", "--t", 20, 200, "--threads", 1,
                "--json", out)
    assert r.returncode == 0, r.stderr
    got = json.loads(out.read_text())
    test = load_eval_split(prepared, "test")
    assert got["slices"] == int((~test.healthy).sum()) > 0 and got["cell_pixels"] == 32 // 8
    assert [row["t"] for row in got["rows"]] == [20, 200]
    for row in got["rows"]:
        assert 0 <= row["auroc"] <= 1 and 0 <= row["noise_recall"] <= 1
        assert row["anomaly_bits"] > 0 and row["healthy_bits"] > 0
    # more noise flips more bits: fewer bits are left alone at t = 200 than at t = 20
    kept = [row["anomaly_bits"] + row["healthy_bits"] for row in got["rows"]]
    assert kept[1] < kept[0]
    assert "| t | noise flips | AUROC anomaly vs healthy |" in r.stdout and "| 200 |" in r.stdout


def test_oracle_sampler_keeps_what_it_does_not_mask(ckpt4):
    ck = load_checkpoint(ckpt4)
    net, schedule = ck.build_unet("cpu"), ck.build_schedule()
    gen = torch.Generator().manual_seed(3)
    z = torch.bernoulli(torch.full((2, 8, 8, 8), 0.5), generator=gen)
    none = torch.zeros_like(z, dtype=torch.bool)
    with torch.inference_mode():
        assert torch.equal(oracle.fixed_mask_sample(net.flip_prob, z, none, schedule, 200, 10, gen), z)
        half = none.clone()
        half[..., :4] = True  # the left half of every latent row is resampled
        out = oracle.fixed_mask_sample(net.flip_prob, z, half, schedule, 400, 10, gen)
    assert torch.equal(out[..., 4:], z[..., 4:])
    assert not torch.equal(out[..., :4], z[..., :4])
    lab = np.zeros((1, 8, 8), bool)
    lab[0, 0, 0] = True
    assert oracle.anomaly_cells(lab, 2, 0).sum() == 1
    assert oracle.anomaly_cells(lab, 2, 1)[0].tolist() == [  # grown by one cell, 4-connected
        [True, True, False, False], [True, False, False, False], [False] * 4, [False] * 4]


def test_diagnose_oracle_prints_its_table(prepared, ckpt4, tmp_path):
    out = tmp_path / "o.json"
    r = berdiff("oracle", ckpt4, prepared, "--L", 100, "--steps", 5, "--threads", 1,
                "--json", out)
    assert r.returncode == 0, r.stderr
    got = json.loads(out.read_text())
    test = load_eval_split(prepared, "test")
    assert got["slices"] == int((~test.healthy).sum()) > 0
    assert [row["method"] for row in got["rows"]] == [
        "autoencoder only", "masked (P=0.5)", "oracle mask", "unmasked (P=0)"]
    assert all(0 <= row["dice"] <= 1 for row in got["rows"])
    assert 0 < got["oracle_cell_fraction"] <= 1
    assert "| method | Dice (paper) | AUPRC (paper) |" in r.stdout and "| oracle mask |" in r.stdout


def _pairs_cache(path: Path, n: int = 3, size: int = 32) -> Path:
    """Diseased images, their twins and labels (keys x, h, lab) where the twins differ only in a
    bright square."""
    rng = np.random.default_rng(0)
    h = rng.uniform(0.2, 0.5, (n, 4, size, size)).astype(np.float32)
    lab = np.zeros((n, size, size), bool)
    lab[:, 8:20, 10:22] = True
    x = h.copy()
    x[:, :, lab[0]] = 1.0
    np.savez_compressed(path, x=x, h=h, lab=lab)
    return path


def test_diagnose_paired_prints_its_tables_and_the_shim_agrees(ckpt4, tmp_path):
    cache, out = _pairs_cache(tmp_path / "pairs.npz"), tmp_path / "p.json"
    args = (ckpt4, "--pairs-cache", cache, "--t", 20, "--L", 20, "--steps", 4, "--P", 0.5)
    r = berdiff("paired", *args, "--json", out)
    assert r.returncode == 0, r.stderr
    got = json.loads(out.read_text())
    assert got["pairs"] == 3 and got["anomaly_bits"] > 0
    assert [u["t"] for u in got["unet"]] == [20]
    assert [s["P"] for s in got["sampler"]] == [0.0, 0.5]
    s0, s5 = got["sampler"]
    assert "mask_anomaly" not in s0 and 0 <= s5["paired_auroc"] <= 1
    assert 0 <= s5["mask_anomaly"] <= 1 and 0 <= s5["restored_anomaly"] <= 1
    assert "| sampler L, P | mask anomaly / healthy bits |" in r.stdout
    assert "| 20, 0.5 |" in r.stdout and "| 20 | " in r.stdout
    shim = berdiff(*args, script=REPO / "benchmarks" / "paired_diagnosis.py")
    assert shim.returncode == 0 and shim.stdout == r.stdout, shim.stderr


def test_diagnose_paired_writes_its_pairs_cache_and_reuses_it(ckpt1, tmp_path):
    cache = tmp_path / "oct.npz"
    args = ("paired", ckpt1, "--kind", "oct", "--pairs", 1, "--t", 10, "--L", 10, "--steps", 2,
            "--pairs-cache", cache)
    first = berdiff(*args)
    assert first.returncode == 0, first.stderr
    with np.load(cache) as d:
        assert sorted(d.files) == ["h", "lab", "x"]
        assert d["x"].shape == d["h"].shape == (1, 1, 496, 512) and d["lab"].shape == (1, 496, 512)
        assert not np.array_equal(d["x"], d["h"]) and d["lab"].any()
    stamp = cache.stat().st_mtime_ns
    again = berdiff(*args)
    assert again.returncode == 0 and again.stdout == first.stdout
    assert cache.stat().st_mtime_ns == stamp  # read, not written again


@pytest.mark.parametrize("what", ["ae", "unet", "oracle", "paired"])
def test_diagnose_refuses_a_missing_model_in_one_line(what, prepared, tmp_path):
    data = [] if what == "paired" else [prepared]
    r = berdiff(what, tmp_path / "none.pt", *data)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "none.pt" in r.stderr


@pytest.mark.parametrize("what", ["unet", "oracle"])
def test_diagnose_refuses_bad_input_in_one_line(what, prepared, ckpt4, tmp_path):
    ae_only = tmp_path / "ae.pt"
    save_checkpoint(ae_only, autoencoder=load_checkpoint(ckpt4).build_autoencoder("cpu"),
                    meta={"name": "ae-only"})
    for args, says in (([ckpt4, tmp_path], "not a prepared dataset"),
                       ([ae_only, prepared], "not a full model")):
        r = berdiff(what, *args)
        assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr, r.stderr
