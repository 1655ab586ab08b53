"""Exact resume, atomic checkpoints and clean stops (Ctrl-C / SIGTERM) of the training loop."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from _train_data import Blobs
from napari_berdiff.core.models.checkpoint import load_checkpoint, load_raw
from src_training.train.loop import TrainingInterrupted
from src_training.train.train_autoencoder import train_autoencoder
from src_training.train.train_diffusion import train_diffusion


pytestmark = pytest.mark.usefixtures("one_thread")


# 20 images, batches of 8 (drop_last): 2 batches per epoch, so step 5 stops inside an epoch
AE_KW = dict(preset="tiny", batch_size=8, lr=2e-3, gan_start=3, ema=0.9, log_every=1,
             sample_every=1000, seed=3, device="cpu", progress=False)


def _assert_same_state(a: dict, b: dict) -> None:
    """Raw weights, EMA weights, optimiser moments, data position and step are identical."""
    assert a["step"] == b["step"] and a["data"] == b["data"]
    for group in ("models", "emas"):
        for name in a[group]:
            sa = a[group][name] if group == "models" else a[group][name]["shadow"]
            sb = b[group][name] if group == "models" else b[group][name]["shadow"]
            for k in sa:
                assert torch.equal(sa[k], sb[k]), (group, name, k)
    for name in a["optimizers"]:
        for pid, st in a["optimizers"][name]["state"].items():
            for k, v in st.items():
                assert torch.equal(v, b["optimizers"][name]["state"][pid][k]), (name, pid, k)


@pytest.fixture(scope="module")
def ae_full(tmp_path_factory):
    """An uninterrupted 10-step autoencoder run (GAN from step 3, so the discriminator counts)."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("ae_full")
    path = train_autoencoder(Blobs(20), out, steps=10, ckpt_every=5, resume=False, **AE_KW)
    return out, path


def test_autoencoder_resume_is_exact(ae_full, tmp_path):
    full_dir, _ = ae_full
    part = tmp_path / "part"
    train_autoencoder(Blobs(20), part, steps=5, ckpt_every=5, resume=False, **AE_KW)
    assert load_raw(part / "last.pt")["training_state"]["data"] == {
        "epoch": 2, "batch": 1, "seed": 3, "world_size": 1, "batch_size": 8}
    train_autoencoder(Blobs(20), part, steps=10, ckpt_every=5, resume=part / "last.pt", **AE_KW)
    _assert_same_state(load_raw(full_dir / "last.pt")["training_state"],
                       load_raw(part / "last.pt")["training_state"])
    a = load_checkpoint(full_dir / "autoencoder.pt").ae_state
    b = load_checkpoint(part / "autoencoder.pt").ae_state
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the log of the resumed run continues the first one and matches the uninterrupted log
    drop = ("wall_s", "samples_per_s")
    la = [{k: v for k, v in r.items() if k not in drop} for r in _records(full_dir)]
    lb = [{k: v for k, v in r.items() if k not in drop} for r in _records(part)]
    assert la == lb and [r["step"] for r in lb] == list(range(1, 11))


def _records(d):
    from src_training.train.trainlog import read_log

    return read_log(d / "log.jsonl")


def test_diffusion_resume_is_exact(ae_full, tmp_path):
    _, ae = ae_full
    kw = dict(batch_size=8, lr=1e-3, ema=0.9, log_every=5, sample_every=1000, seed=4,
              device="cpu", progress=False)
    full, part = tmp_path / "full", tmp_path / "part"
    train_diffusion(Blobs(20), ae, full, steps=8, ckpt_every=8, resume=False, **kw)
    train_diffusion(Blobs(20), ae, part, steps=3, ckpt_every=8, resume=False, **kw)
    train_diffusion(Blobs(20), ae, part, steps=8, ckpt_every=8, **kw)  # auto-resume from last.pt
    _assert_same_state(load_raw(full / "last.pt")["training_state"],
                       load_raw(part / "last.pt")["training_state"])


def test_resume_refuses_another_config(ae_full):
    full_dir, _ = ae_full
    kw = dict(AE_KW, preset="tiny")
    with pytest.raises(ValueError, match="autoencoder config"):
        train_autoencoder(Blobs(20, channels=1), full_dir, steps=12, **kw)
    with pytest.raises(ValueError, match="exported model"):
        train_autoencoder(Blobs(20), full_dir, steps=12, resume=full_dir / "autoencoder.pt", **kw)


class _Killed(BaseException):
    """Stands in for the process dying (not an Exception, so nothing in the loop catches it)."""


def test_a_run_killed_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".last.pt.stale123.tmp").write_bytes(b"left by a SIGKILL")  # removed at start
    real_save = torch.save
    calls = []

    def dying_save(obj, f, *a, **kw):
        calls.append(1)
        if len(calls) == 2:  # the second checkpoint: write half a file, then "die"
            f.write(b"PK\x03\x04 half a zip")
            raise _Killed()
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(_Killed):
        train_autoencoder(Blobs(20), out, steps=9, ckpt_every=3, resume=False, **AE_KW)
    monkeypatch.setattr(torch, "save", real_save)
    ck = load_checkpoint(out / "last.pt")
    assert ck.training_state["step"] == 3
    assert ck.build_autoencoder() is not None
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []
    # and training continues from it
    train_autoencoder(Blobs(20), out, steps=9, ckpt_every=3, **AE_KW)
    assert load_raw(out / "last.pt")["training_state"]["step"] == 9


class _Interrupting(Blobs):
    """Raises KeyboardInterrupt (or sends SIGTERM) when item number ``at`` is fetched."""

    def __init__(self, at: int, sigterm: bool = False) -> None:
        super().__init__(20)
        self.at, self.sigterm, self.calls = at, sigterm, 0

    def __getitem__(self, i):
        self.calls += 1
        if self.calls == self.at:
            if self.sigterm:
                os.kill(os.getpid(), signal.SIGTERM)
            else:
                raise KeyboardInterrupt
        return super().__getitem__(i)


def test_ctrl_c_saves_the_last_finished_step(ae_full, tmp_path):
    out = tmp_path / "run"
    # item 1 is probed, 4 are read for the sample grid, then 8 per step: 5 + 6*8 + 3 is in step 7
    data = _Interrupting(at=5 + 6 * 8 + 3)
    with pytest.raises(TrainingInterrupted) as info:
        train_autoencoder(data, out, steps=10, ckpt_every=5, resume=False, **AE_KW)
    assert info.value.step == 6 and info.value.checkpoint == out / "last.pt"
    assert load_raw(out / "last.pt")["training_state"]["step"] == 6
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
    # rerunning the same call finishes the run exactly as if nothing had happened
    train_autoencoder(Blobs(20), out, steps=10, ckpt_every=5, **AE_KW)
    _assert_same_state(load_raw(ae_full[0] / "last.pt")["training_state"],
                       load_raw(out / "last.pt")["training_state"])


def test_sigterm_stops_after_the_current_step(tmp_path):
    out = tmp_path / "run"
    data = _Interrupting(at=5 + 3 * 8 + 2, sigterm=True)  # during step 4
    with pytest.raises(TrainingInterrupted) as info:
        train_autoencoder(data, out, steps=10, ckpt_every=5, resume=False, **AE_KW)
    assert info.value.reason == "SIGTERM" and info.value.step == 4
    assert load_raw(out / "last.pt")["training_state"]["step"] == 4
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
