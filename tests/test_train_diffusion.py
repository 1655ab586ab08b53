"""Diffusion training: a short run learns, the final file holds both networks and the detector
builds from it; the CLI stage 2 carries the data's metadata forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _train_data import Blobs, loss_series, make_prepared_dir
from napari_berdiff.core.models.checkpoint import load_checkpoint, load_raw
from napari_berdiff.core.inference.detector import Detector
from src_training.train.train_autoencoder import train_autoencoder
from src_training.train.train_diffusion import train_diffusion


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ae_ckpt(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("ae")
    meta = {"channel_names": ["t1", "flair"], "preprocess": {"mode": "pad"}, "modality": "brats"}
    return train_autoencoder(Blobs(24), out, preset="tiny", steps=30, batch_size=8, lr=2e-3,
                             ema=0.9, ckpt_every=30, sample_every=30, log_every=10, device="cpu",
                             resume=False, meta=meta, progress=False)


def test_diffusion_learns_and_the_detector_loads_the_result(ae_ckpt, tmp_path):
    out = tmp_path / "diff"
    path = train_diffusion(Blobs(24, as_tuple=True), ae_ckpt, out, steps=40, batch_size=16,
                           lr=3e-3, ema=0.9, ckpt_every=20, log_every=5, sample_every=40,
                           sample_L=20, seed=1, device="cpu", resume=False, progress=False,
                           meta={"name": "blobs-test"})
    assert path == out / "model.pt"
    bce = loss_series(out / "log.jsonl", "bce")
    assert len(bce) == 8
    # a smoke test only: a wrong training step lowers the loss too (test_diffusion_step.py checks
    # the step exactly)
    assert bce[0] == pytest.approx(np.log(2), abs=0.02)  # zero-initialised output: p = 1/2
    assert sum(bce[-3:]) / 3 < sum(bce[:2]) / 2 - 0.015, bce
    assert (out / "samples" / "step_0000040.png").is_file()

    ck = load_checkpoint(path)
    ae_src = load_checkpoint(ae_ckpt)
    assert ck.ae_config == ae_src.ae_config and ck.unet_config is not None
    assert ck.unet_config.latent_channels == ck.ae_config.latent_channels
    assert all(torch.equal(v, ae_src.ae_state[k]) for k, v in ck.ae_state.items())
    assert ck.schedule == {"T": 1000, "beta_start": 1e-4, "beta_end": 0.02}
    # meta: the autoencoder's carried forward, plus this stage's training record
    assert ck.meta["channel_names"] == ["t1", "flair"] and ck.meta["preprocess"] == {"mode": "pad"}
    assert ck.meta["modality"] == "brats" and ck.meta["name"] == "blobs-test"
    assert ck.meta["training"]["stage"] == "diffusion" and ck.meta["training"]["steps"] == 40
    assert ck.meta["training"]["preset"] == "tiny"  # inferred from the autoencoder
    assert ck.meta["autoencoder_training"]["stage"] == "autoencoder"
    assert ck.meta["autoencoder_sha256"] == ae_src.sha256 and ck.meta["trained_with"]
    # the U-Net weights are the EMA weights of the last training state
    ts = load_raw(out / "last.pt")["training_state"]
    assert all(torch.equal(v, ts["emas"]["unet"]["shadow"][k]) for k, v in ck.unet_state.items())

    det = Detector.from_checkpoint(path, device="cpu")
    img = Blobs(1, seed=5).x[0].numpy()
    res = det.detect(img, L=10, P=0.5, normalize="none")
    assert res.reconstruction.shape == (1, 1, 2, 32, 32)
    assert res.anomaly_map.shape == (1, 1, 32, 32) and np.isfinite(res.anomaly_map).all()


def test_unet_config_must_match_the_latent(ae_ckpt, tmp_path):
    with pytest.raises(ValueError, match="does not match the autoencoder's latent"):
        train_diffusion(Blobs(4), ae_ckpt, tmp_path / "x", preset="small", steps=1, device="cpu")
    with pytest.raises(ValueError, match="expects 2"):
        train_diffusion(Blobs(4, channels=1), ae_ckpt, tmp_path / "y", steps=1, device="cpu")


def test_cli_train_diffusion(ae_ckpt, tmp_path, capsys):
    from napari_berdiff.cli import main

    data = make_prepared_dir(tmp_path / "prepared", n=12, channels=2)
    out = tmp_path / "run"
    code = main(["train-diffusion", str(data), "--ae", str(ae_ckpt), "--out", str(out),
                 "--steps", "4", "--batch-size", "4", "--ckpt-every", "2", "--sample-every",
                 "100", "--sample-L", "5", "--device", "cpu", "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert capsys.readouterr().out.strip().endswith("model.pt")
    ck = load_checkpoint(out / "model.pt")
    assert ck.meta["channel_names"] == ["t1", "flair"]  # the AE's meta wins over the data's
    assert ck.meta["training"]["dataset"] == str(data)
    code = main(["train-diffusion", str(data), "--ae", str(tmp_path / "missing.pt"), "--out",
                 str(out), "--device", "cpu", "--quiet"])
    assert code == 2 and "checkpoint file not found" in capsys.readouterr().err


def test_init_starts_from_another_runs_unet(ae_ckpt, tmp_path, capsys):
    from napari_berdiff.cli import main

    first = train_diffusion(Blobs(12), ae_ckpt, tmp_path / "a", steps=6, batch_size=4, lr=3e-3,
                            ema=0.5, ckpt_every=6, sample_every=100, seed=1, device="cpu",
                            resume=False, progress=False)
    data = make_prepared_dir(tmp_path / "prepared", n=12, channels=2)
    out = tmp_path / "b"
    code = main(["train-diffusion", str(data), "--ae", str(ae_ckpt), "--out", str(out), "--init",
                 str(first), "--steps", "1", "--batch-size", "2", "--lr", "0", "--ema", "0.5",
                 "--sample-every", "100", "--device", "cpu", "--quiet"])
    assert code == 0, capsys.readouterr().err
    src, tuned = load_checkpoint(first), load_checkpoint(out / "model.pt")
    # lr 0: one step moves nothing, so the result holds exactly the initial weights
    assert all(torch.equal(v, src.unet_state[k]) for k, v in tuned.unet_state.items())
    assert tuned.meta["training"]["init_unet_sha256"] == src.sha256
    code = main(["train-diffusion", str(data), "--ae", str(ae_ckpt), "--out", str(tmp_path / "c"),
                 "--init", str(ae_ckpt), "--steps", "1", "--device", "cpu", "--quiet"])
    assert code == 2 and "holds no diffusion U-Net" in capsys.readouterr().err


def test_t_max_limits_the_training_steps_and_is_recorded(ae_ckpt, tmp_path):
    from napari_berdiff.core.diffusion.schedule import BernoulliSchedule

    seen = []

    class Recording(BernoulliSchedule):
        def q_sample(self, z0, t, generator=None):
            seen.extend(t.tolist())
            return super().q_sample(z0, t, generator=generator)

    path = train_diffusion(Blobs(12), ae_ckpt, tmp_path / "a", steps=8, batch_size=8, t_max=5,
                           schedule=Recording(), sample_every=100, device="cpu", resume=False,
                           progress=False)
    assert sorted(set(seen)) == [1, 2, 3, 4, 5]  # 64 draws: every step in 1..t_max, no other
    ck = load_checkpoint(path)
    assert ck.meta["max_L"] == 5 and ck.meta["training"]["t_max"] == 5
    with pytest.raises(ValueError, match="t_max must be in"):
        train_diffusion(Blobs(4), ae_ckpt, tmp_path / "b", steps=1, t_max=0, device="cpu")
