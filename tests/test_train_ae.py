"""Autoencoder training: losses, EMA, a short run that learns, the checkpoint it writes, the CLI."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from _train_data import Blobs, loss_series, make_prepared_dir
from napari_berdiff.core.models.checkpoint import load_checkpoint, load_raw
from src_training.train import losses
from src_training.train.ema import EMA
from src_training.train.train_autoencoder import train_autoencoder

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- losses, EMA


def test_hinge_and_reconstruction_losses():
    real = torch.tensor([2.0, 0.5, -1.0])
    fake = torch.tensor([-2.0, 0.0, 0.5])
    # relu(1 - real) = [0, .5, 2] -> 2.5/3 ; relu(1 + fake) = [0, 1, 1.5] -> 2.5/3
    assert losses.hinge_d_loss(real, fake).item() == pytest.approx(5.0 / 3.0)
    assert losses.hinge_g_loss(fake).item() == pytest.approx(0.5)  # -mean(-2, 0, .5)
    a, b = torch.zeros(2, 1, 2, 2), torch.full((2, 1, 2, 2), 0.5)
    assert losses.reconstruction_loss(a, b, "l1").item() == pytest.approx(0.5)
    assert losses.reconstruction_loss(a, b, "mse").item() == pytest.approx(0.25)
    a = torch.full((2, 1, 2, 2), 0.2)
    assert losses.reconstruction_loss(a, b).item() == pytest.approx(0.3)  # the default is l1
    with pytest.raises(ValueError, match="unknown reconstruction loss"):
        losses.reconstruction_loss(a, b, "l2")


def test_adaptive_weight_matches_manual_and_is_clamped():
    w = torch.randn(3, 4, requires_grad=True)
    x = torch.randn(5, 4)
    y = x @ w.T
    rec = (y ** 2).mean()
    g = 1e-3 * y.mean()
    gr = torch.autograd.grad(rec, w, retain_graph=True)[0].norm()
    gg = torch.autograd.grad(g, w, retain_graph=True)[0].norm()
    expect = min(float(gr / (gg + 1e-4)), 1.0)
    got = losses.adaptive_weight(rec, g, w)
    assert not got.requires_grad
    assert got.item() == pytest.approx(expect, rel=1e-5)
    assert got.item() == 1.0  # a tiny adversarial gradient: the weight is clamped
    small = losses.adaptive_weight(1e-4 * rec, 100 * g, w, scale=1024.0)
    manual = float(1e-4 * gr / (100 * gg + 1e-4))
    assert small.item() == pytest.approx(manual, rel=1e-4)


def test_flip_bce_is_bce_of_the_flip_indicator():
    g = torch.Generator().manual_seed(0)
    z0 = torch.bernoulli(torch.full((4, 8, 3, 3), 0.5), generator=g)
    zt = torch.bernoulli(torch.full((4, 8, 3, 3), 0.5), generator=g)
    logits = torch.randn(4, 8, 3, 3, generator=g) * 5
    target = (z0 + zt) % 2
    manual = F.binary_cross_entropy(torch.sigmoid(logits.double()), target.double())
    assert losses.flip_bce_loss(logits, zt, z0).item() == pytest.approx(manual.item(), rel=1e-5)
    assert losses.flip_bce_loss(torch.zeros(2, 2), torch.zeros(2, 2), torch.ones(2, 2)).item() == \
        pytest.approx(math.log(2))


def test_lpips_never_downloads(capsys, monkeypatch, tmp_path):
    assert losses.load_lpips("off") is None
    # pretend lpips is installed but its weights are missing
    monkeypatch.setattr(losses, "lpips_weight_files", lambda net="vgg": [tmp_path / "vgg.pth"])
    assert losses.load_lpips("auto") is None
    err = capsys.readouterr().err
    assert "LPIPS weights not found at" in err and "continuing without the perceptual term" in err
    with pytest.raises(FileNotFoundError, match="LPIPS weights not found"):
        losses.load_lpips("on")


def test_lpips_modes_and_messages(capsys, monkeypatch, tmp_path):
    missing = tmp_path / "vgg.pth"
    monkeypatch.setattr(losses, "lpips_weight_files", lambda net="vgg": [missing])
    assert losses.load_lpips(False) is None and losses.load_lpips(None) is None
    assert capsys.readouterr().err == ""  # off: not even a message
    assert losses.load_lpips() is None  # the default is auto: a message, no error
    assert "LPIPS weights not found" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        losses.load_lpips(True)  # True means on
    with pytest.raises(ValueError, match="lpips must be off, auto or on"):
        losses.load_lpips("sometimes")
    with pytest.raises(ValueError, match="unknown LPIPS network 'resnet'"):
        losses.load_lpips("auto", net="resnet")
    # the files are there but the package cannot build the network: auto goes on, on refuses
    missing.write_bytes(b"")
    monkeypatch.setitem(sys.modules, "lpips", None)  # import lpips -> ImportError
    assert losses.load_lpips("auto") is None
    assert "LPIPS could not be built (ModuleNotFoundError" in capsys.readouterr().err
    with pytest.raises(ValueError, match="LPIPS could not be built"):
        losses.load_lpips("on")


def test_lpips_weight_files_are_the_package_heads_and_the_hub_backbone(monkeypatch, tmp_path):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert losses.lpips_weight_files() is None
    spec = types.SimpleNamespace(submodule_search_locations=[str(tmp_path / "pkg")])
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: spec if name == "lpips" else None)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    assert losses.lpips_weight_files("alex") == [
        tmp_path / "pkg" / "weights" / "v0.1" / "alex.pth",
        tmp_path / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"]
    assert losses.lpips_weight_files()[1].name == "vgg16-397923af.pth"


def test_lpips_loss_compares_each_channel_as_a_grey_rgb_image():
    seen = []

    class Fake(torch.nn.Module):  # stands in for lpips.LPIPS: one distance per image pair
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))

        def forward(self, a, r):
            seen.append((a, r))
            return (self.w * (a - r).abs()).mean(dim=(1, 2, 3), keepdim=True)

    loss = losses.LPIPSLoss(Fake())
    assert not loss.net.training and not loss.net.w.requires_grad
    assert loss.train() is loss
    assert not loss.net.training  # stays in eval mode inside a training model
    g = torch.Generator().manual_seed(0)
    x, x_rec = torch.rand(2, 3, 4, 5, generator=g), torch.rand(2, 3, 4, 5, generator=g)
    out = loss(x_rec, x)
    (a, r), = seen
    assert a.shape == (6, 3, 4, 5) and torch.equal(a[:, 0], a[:, 2])  # grey RGB per channel
    assert torch.allclose(a[:, 1], x_rec.reshape(6, 4, 5) * 2 - 1)  # scaled to [-1, 1]
    assert torch.allclose(r[:, 1], x.reshape(6, 4, 5) * 2 - 1)
    assert out.item() == pytest.approx(float((2 * (x_rec - x)).abs().mean()), rel=1e-6)


def test_lpips_is_built_from_the_files_on_disk_and_never_downloads(capsys, monkeypatch, tmp_path):
    asked, built = [], []
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"")

    def files(net="vgg"):
        asked.append(net)
        return [weights]

    class FakeLPIPS(torch.nn.Module):  # the lpips package's class, as load_lpips calls it
        def __init__(self, **kw):
            super().__init__()
            built.append(kw)

    monkeypatch.setattr(losses, "lpips_weight_files", files)
    monkeypatch.setitem(sys.modules, "lpips", types.SimpleNamespace(LPIPS=FakeLPIPS))
    loss = losses.load_lpips("on", net="alex")
    assert isinstance(loss, losses.LPIPSLoss) and isinstance(loss.net, FakeLPIPS)
    assert asked == ["alex"] and built == [dict(net="alex", pretrained=True, verbose=False)]
    # without the package: auto says so and goes on, on refuses with the reason
    monkeypatch.setattr(losses, "lpips_weight_files", lambda net="vgg": None)
    assert losses.load_lpips("auto") is None
    assert "LPIPS is not installed (no `lpips` package); continuing" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match=r"LPIPS is not installed \(no `lpips` package\) "
                                                r"\(the perceptual loss was requested"):
        losses.load_lpips("on")


def test_ema_update_and_state_dict():
    m = torch.nn.Linear(3, 2)
    ema = EMA(m, 0.9)
    before = {k: v.clone() for k, v in ema.shadow.state_dict().items()}
    with torch.no_grad():
        for p in m.parameters():
            p.add_(1.0)
    ema.update(m)
    for k, v in ema.shadow.state_dict().items():
        assert torch.allclose(v, 0.9 * before[k] + 0.1 * (before[k] + 1.0))
    other = EMA(torch.nn.Linear(3, 2), 0.5)
    other.load_state_dict(ema.state_dict())
    assert other.decay == 0.9 and other.num_updates == 1
    for k, v in other.shadow.state_dict().items():
        assert torch.equal(v, ema.shadow.state_dict()[k])


# ----------------------------------------------------------------------------- a short run


def test_code_entropy_is_the_mean_binary_entropy():
    assert losses.code_entropy(torch.full((2, 3), 0.5)).item() == pytest.approx(math.log(2))
    assert losses.code_entropy(torch.tensor([0.0, 1.0])).item() == pytest.approx(0.0, abs=1e-4)
    p = torch.tensor([0.1, 0.8])
    h = -(p * p.log() + (1 - p) * (1 - p).log()).mean()
    assert losses.code_entropy(p).item() == pytest.approx(h.item(), rel=1e-6)


def test_entropy_weight_makes_the_code_nearly_deterministic(tmp_path):
    kw = dict(preset="tiny", steps=40, batch_size=8, lr=3e-3, disc_weight=0, ckpt_every=40,
              log_every=10, sample_every=100, seed=0, device="cpu", resume=False, progress=False)
    ent = {}
    for w in (0.0, 0.5):
        out = tmp_path / f"w{w}"
        path = train_autoencoder(Blobs(24), out, entropy_weight=w, **kw)
        ent[w] = loss_series(out / "log.jsonl", "code_entropy")
        assert load_checkpoint(path).meta["training"]["entropy_weight"] == w
    assert len(ent[0.0]) == len(ent[0.5]) == 4
    assert ent[0.5][-1] < 0.5 * ent[0.0][-1], ent  # logged every time, lowered by the penalty
    with pytest.raises(ValueError, match="entropy_weight"):
        train_autoencoder(Blobs(4), tmp_path / "bad", entropy_weight=-1, **kw)


def test_autoencoder_learns_and_writes_a_loadable_checkpoint(tmp_path):
    out = tmp_path / "ae"
    meta = {"channel_names": ["t1", "flair"], "preprocess": {"mode": "pad"}}
    path = train_autoencoder(Blobs(24, as_tuple=True), out, preset="tiny", steps=40, batch_size=8,
                             lr=2e-3, gan_start=31, ckpt_every=20, log_every=5, sample_every=20,
                             seed=0, device="cpu", resume=False, meta=meta, progress=False)
    assert path == out / "autoencoder.pt"
    rec = loss_series(out / "log.jsonl", "rec")
    assert len(rec) == 8
    assert sum(rec[-2:]) / 2 < 0.7 * sum(rec[:2]) / 2, rec
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert "d" in log[-1] and "g" in log[-1] and "d" not in log[5]  # GAN from step 31 on
    assert all(r["samples_per_s"] > 0 and r["lr"] == pytest.approx(2e-3) for r in log)
    assert (out / "loss.png").is_file() and (out / "samples" / "step_0000040.png").is_file()
    ck = load_checkpoint(path)
    assert ck.unet_config is None and ck.training_state is None
    assert ck.meta["channel_names"] == ["t1", "flair"] and ck.meta["preprocess"] == {"mode": "pad"}
    assert ck.meta["training"]["steps"] == 40 and ck.meta["training"]["preset"] == "tiny"
    assert ck.meta["trained_with"]
    ae = ck.build_autoencoder()
    assert ae.config.in_channels == 2 and ae.config.image_size == 32
    # the released weights are the EMA weights of the final training state
    last = load_raw(out / "last.pt")
    ts = last["training_state"]
    assert ts["step"] == 40 and set(ts["models"]) == {"autoencoder", "discriminator"}
    for k, v in ck.ae_state.items():
        assert torch.equal(v, ts["emas"]["autoencoder"]["shadow"][k])
        assert torch.equal(v, last["autoencoder"]["state_dict"][k])
    assert not any(torch.equal(v, ts["models"]["autoencoder"][k]) for k, v in ck.ae_state.items()
                   if k.endswith("weight") and v.numel() > 16)


def test_bad_inputs_give_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="expects 32x32"):
        train_autoencoder(Blobs(4, size=16), tmp_path / "a", preset="tiny", steps=1, device="cpu")
    with pytest.raises(ValueError, match="unknown preset"):
        train_autoencoder(Blobs(4), tmp_path / "b", preset="huge", steps=1, device="cpu")
    with pytest.raises(FileNotFoundError, match="resume from not found"):
        train_autoencoder(Blobs(4), tmp_path / "c", preset="tiny", steps=1, device="cpu",
                          resume=tmp_path / "nope.pt")


# ----------------------------------------------------------------------------- the CLI


def _berdiff(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("berdiff")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "napari_berdiff.cli"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=timeout,
                          cwd=REPO, env=env)


def test_cli_train_ae_on_a_prepared_directory(tmp_path, capsys):
    from napari_berdiff.cli import main

    data = make_prepared_dir(tmp_path / "prepared", n=16, channels=2)
    out = tmp_path / "run"
    args = ["train-ae", str(data), "--out", str(out), "--config", "tiny", "--steps", "6",
            "--batch-size", "4", "--ckpt-every", "3", "--log-every", "2", "--device", "cpu",
            "--threads", "1", "--content-mix", "0.3", "--quiet"]
    r = _berdiff(*args)  # as a user runs it
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("autoencoder.pt")
    ck = load_checkpoint(out / "autoencoder.pt")
    assert ck.meta["channel_names"] == ["t1", "flair"]
    assert ck.meta["preprocess"] == {"mode": "pad"} and ck.meta["modality"] == "brats"
    assert "train-ae" in ck.meta["trained_with"] and ck.meta["training"]["dataset"] == str(data)
    assert ck.meta["training"]["content_mix"] == 0.3
    # rerunning with more steps continues from last.pt (in-process, to save a start-up)
    assert main([a if a != "6" else "8" for a in args]) == 0
    assert "resuming autoencoder training" in capsys.readouterr().out
    assert load_raw(out / "last.pt")["training_state"]["step"] == 8
    # a wrong config is one clear line and exit status 2
    assert main(["train-ae", str(data), "--out", str(tmp_path / "x"), "--config", "small",
                 "--steps", "1", "--device", "cpu", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("berdiff train-ae: error:")
    assert "expects 128x128" in err[0]
