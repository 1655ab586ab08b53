"""The diffusion training step, exactly (SPEC section 4): what ``DiffusionTask.noisy_pair`` draws
and what ``train_step`` feeds the U-Net and the loss.

A short training run cannot tell a wrong method from a right one (the loss falls either way), so
these tests check the pieces: a fresh binary code z0 ~ Bernoulli(E(x)), t uniform in 1..t_max
(1-based, as the sampler passes it), z_t = q_sample(z0, t) (tested bit for bit in
test_schedule.py), the U-Net called on (z_t, t) and the loss the BCE against z_t XOR z0. They build
the task from a random tiny model, without training anything.
"""

from __future__ import annotations

import math

import pytest
import torch

from _plugin_helpers import tiny_checkpoint
from napari_berdiff.core.diffusion.schedule import BernoulliSchedule
from napari_berdiff.core.models.checkpoint import load_checkpoint
from src_training.train.corruption import Corruption, corrupt_codes, corrupt_images
from src_training.train.distributed import DistInfo
from src_training.train.train_diffusion import DiffusionTask, unet_config_for
from src_training.train.train_state import resolve_amp

pytestmark = pytest.mark.usefixtures("one_thread")


class RecordingSchedule(BernoulliSchedule):
    """Records the arguments and the result of every ``q_sample`` call."""

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "calls", [])

    def q_sample(self, z0, t, generator=None, s=0):
        out = super().q_sample(z0, t, generator=generator, s=s)
        self.calls.append((z0.clone(), t.clone() if torch.is_tensor(t) else t, s, out.clone()))
        return out


@pytest.fixture(scope="module")
def ck(tmp_path_factory):
    return load_checkpoint(tiny_checkpoint(tmp_path_factory.mktemp("m") / "tiny.pt", channels=2))


def make_task(ck, t_max=None, cached=False, lr=1e-3):
    torch.manual_seed(0)
    cfg, _ = unet_config_for(ck, "tiny")
    info = DistInfo()
    task = DiffusionTask(ck, cfg, RecordingSchedule(), info, amp=resolve_amp("off", info.device),
                         lr=lr, weight_decay=0.0, ema=0.9, meta={}, samples=torch.zeros(1, 2, 32, 32),
                         sample_L=10, t_max=t_max)
    with torch.no_grad():  # the output conv starts at zero (logits 0): give it some signal
        for p in task.unet.parameters():
            p.add_(0.1 * torch.randn_like(p))
    task.codes_cached = cached
    return task


def images(n, seed=0):
    return torch.rand(n, 2, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("t_max", [1, 3, 7])
def test_training_steps_are_uniform_on_1_to_t_max(ck, t_max):
    task = make_task(ck, t_max=t_max, cached=True)
    torch.manual_seed(1)
    _, _, t = task.noisy_pair(torch.full((700, 8, 8, 8), 0.5))
    assert t.dtype == torch.long and t.shape == (700,)
    counts = torch.bincount(t, minlength=t_max + 2)
    assert counts[0] == 0 and counts[t_max + 1:].sum() == 0  # never 0, never above t_max
    assert torch.all(counts[1:t_max + 1] > 700 / t_max * 0.7)  # every step, about equally often


def test_training_steps_default_to_the_whole_schedule(ck):
    task = make_task(ck, cached=True)
    torch.manual_seed(2)
    _, _, t = task.noisy_pair(torch.full((5000, 1, 1, 1), 0.5))
    assert int(t.min()) >= 1 and int(t.max()) <= 1000
    assert int(t.min()) <= 3 and int(t.max()) >= 998  # both ends are reached


@pytest.mark.parametrize("cached", [False, True])
def test_noisy_pair_noises_a_fresh_binary_code_at_the_returned_t(ck, cached):
    task = make_task(ck, cached=cached)
    x = torch.full((64, 8, 8, 8), 0.3) if cached else images(64)
    probs = x if cached else task.encode(x)
    torch.manual_seed(3)
    z0, z_t, t = task.noisy_pair(x)
    assert z0.shape == probs.shape and set(torch.unique(z0).tolist()) == {0.0, 1.0}
    # z0 ~ Bernoulli(probs): its mean is the probabilities' (4 sigma), not their rounding
    n = probs.numel()
    sigma = math.sqrt(float((probs * (1 - probs)).sum())) / n
    assert abs(float(z0.mean() - probs.mean())) < 4 * sigma
    assert float((z0 != (probs > 0.5).float()).float().mean()) > 0.1
    # z_t is q_sample of exactly this z0 at exactly this t (q_sample is checked bit for bit)
    (src, t_arg, s_arg, out), = task.schedule.calls
    assert torch.equal(src, z0) and torch.equal(t_arg, t) and s_arg == 0 and torch.equal(out, z_t)
    # a fresh code each call
    z0b, _, _ = task.noisy_pair(x)
    assert not torch.equal(z0, z0b)


def test_train_step_feeds_the_unet_z_t_and_t_and_scores_the_flips(ck):
    task = make_task(ck, t_max=400)
    seen = []
    hooks = [task.unet.register_forward_pre_hook(lambda m, a: seen.append([v.clone() for v in a])),
             task.unet.register_forward_hook(lambda m, a, out: seen[-1].append(out.detach().clone()))]
    x = images(16, seed=4)
    torch.manual_seed(5)
    z0, z_t, t = task.noisy_pair(x)
    assert torch.any(z_t != z0)  # so that z0 in place of z_t shows
    before = [p.detach().clone() for p in task.unet.parameters()]
    ema_before = [p.detach().clone() for p in task.state.emas["unet"].shadow.parameters()]
    torch.manual_seed(5)  # the same draws again inside train_step
    out = task.train_step(x, 1)
    for h in hooks:
        h.remove()
    (zt_in, t_in, logits), = seen
    assert torch.equal(zt_in, z_t), "the U-Net must see the noised code z_t"
    assert torch.equal(t_in, t), "the U-Net must get the same 1-based t as the noise"
    # the loss: BCE (nats, mean over bits) between sigmoid(logits) and the flips z_t XOR z0
    y = (z_t != z0).double()
    p = torch.sigmoid(logits.double())
    manual = -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean()
    assert float(out["bce"]) == pytest.approx(float(manual), rel=1e-5)
    assert abs(float(manual) - math.log(2)) > 1e-3  # the logits are not all zero
    # one optimiser step moved the weights, and the EMA followed
    assert any(not torch.equal(a, b) for a, b in zip(before, task.unet.parameters()))
    assert any(not torch.equal(a, b)
               for a, b in zip(ema_before, task.state.emas["unet"].shadow.parameters()))


@pytest.mark.parametrize("kind", ["patch", "image"])
def test_corrupted_pairs_noise_the_corrupted_code_and_return_the_clean_one(ck, kind):
    """With a structured corruption z_t is noised from the corrupted code and z0 stays the clean
    code, so the target z_t XOR z0 counts the corrupted bits as flips (the same draws are
    reproduced here; the slow end-to-end version is in test_corruption.py)."""
    cor = Corruption(kind=kind, prob=1.0, min_area=0.3, max_area=0.3)
    task = make_task(ck, t_max=50)
    task.corruption = cor
    x = images(6, seed=7)
    torch.manual_seed(8)
    z0, z_t, t = task.noisy_pair(x)
    (src_arg, t_arg, _, out), = task.schedule.calls
    torch.manual_seed(8)
    if kind == "patch":
        clean = torch.bernoulli(task.encode(x).float())
        src = corrupt_codes(clean, cor)
    else:
        probs, mixed = task.encode(x).float(), task.encode(corrupt_images(x, cor)).float()
        u = torch.rand_like(probs)
        clean, src = (u < probs).float(), (u < mixed).float()
    assert torch.equal(z0, clean) and torch.equal(src_arg, src)
    assert torch.equal(t_arg, t) and torch.equal(out, z_t) and int(t.min()) >= 1
    assert int((src != clean).sum()) > 0  # the corruption did change bits
