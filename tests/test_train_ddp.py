"""Two CPU processes under torchrun (gloo): both ranks end with identical weights, each reads its
own shard, and only rank 0 writes files. Runs the documented entry points as subprocesses."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _train_data import make_prepared_dir
from napari_berdiff.core.models.checkpoint import load_checkpoint, load_raw

REPO = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not TORCHRUN.exists(),
                                reason="needs torch.distributed and torchrun")


def _torchrun(dump: Path, *args: str) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", BERDIFF_RANK_DUMP=str(dump))
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node=2", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=REPO, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


def _digest(model: torch.nn.Module) -> str:  # as src_training.train.loop.state_digest
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _ranks(dump: Path, stage: str) -> list[dict]:
    return [json.loads((dump / f"{stage}_rank{r}.json").read_text()) for r in (0, 1)]


def test_two_processes_train_identical_models(tmp_path):
    data = make_prepared_dir(tmp_path / "data", n=16, channels=2)
    dump = tmp_path / "dump"
    ae_out, diff_out = tmp_path / "ae", tmp_path / "diff"
    common = ["--batch-size", "4", "--log-every", "2", "--device", "cpu", "--quiet"]
    # stage 1 through the CLI module, with the adversarial loss active from step 3
    _torchrun(dump, "-m", "napari_berdiff.cli", "train-ae", str(data), "--out", str(ae_out),
              "--config", "tiny", "--steps", "6", "--gan-start", "3", "--ckpt-every", "3", *common)
    r0, r1 = _ranks(dump, "autoencoder")
    assert r0["world_size"] == r1["world_size"] == 2 and r0["step"] == r1["step"] == 6
    assert r0["digest"] == r1["digest"]
    assert set(r0["digest"]) == {"model/autoencoder", "model/discriminator", "ema/autoencoder"}
    assert r0["checkpoints_written"] == 3 and r1["checkpoints_written"] == 0  # 2 x last.pt + final
    shard0, shard1 = set(r0["epoch0_indices"]), set(r1["epoch0_indices"])
    assert len(shard0) == len(shard1) == 8 and not shard0 & shard1
    ck = load_checkpoint(ae_out / "autoencoder.pt")
    assert _digest(ck.build_autoencoder()) == r0["digest"]["ema/autoencoder"]
    ts = load_raw(ae_out / "last.pt")["training_state"]
    assert ts["world_size"] == 2 and len(ts["rng"]) == 2  # every rank's RNG state is kept
    assert not torch.equal(ts["rng"][0]["torch"], ts["rng"][1]["torch"])  # ranks draw apart
    log = [json.loads(line) for line in (ae_out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [2, 4, 6] and "d" in log[-1]

    # stage 2 through the CLI module as well
    _torchrun(dump, "-m", "napari_berdiff.cli", "train-diffusion", str(data), "--ae",
              str(ae_out / "autoencoder.pt"), "--out", str(diff_out), "--steps", "4",
              "--ckpt-every", "2", "--sample-L", "5", *common)
    d0, d1 = _ranks(dump, "diffusion")
    assert d0["digest"] == d1["digest"] and d0["step"] == 4
    assert d0["checkpoints_written"] == 3 and d1["checkpoints_written"] == 0
    ck = load_checkpoint(diff_out / "model.pt")
    assert _digest(ck.build_unet()) == d0["digest"]["ema/unet"]
    assert ck.meta["channel_names"] == ["t1", "flair"] and ck.meta["training"]["world_size"] == 2
