"""Invariants of the masked sampler (docs/method.md §5, Algorithm 1)."""

import pytest
import torch

from napari_berdiff.core.diffusion.sampler import binary_posterior, masked_sampler, run_sampler, trajectory_seed
from napari_berdiff.core.diffusion.schedule import BernoulliSchedule

SCHED = BernoulliSchedule()


class OracleModel:
    """Knows the healthy code ``target``: its flip probability is the true flip indicator, blurred
    a little so that thresholds matter (``eps = 0.05 + 0.9 * |z_t - target|``)."""

    def __init__(self, target):
        self.target = target
        self.calls = 0

    def __call__(self, z_t, t):
        self.calls += 1
        assert t.dtype == torch.long and t.shape == (z_t.shape[0],)
        tgt = self.target.repeat_interleave(z_t.shape[0] // self.target.shape[0], dim=0)
        return 0.05 + 0.9 * (z_t - tgt).abs()


class MixingModel:
    """A fixed random function of (z_t, t) standing in for a network (used for determinism tests)."""

    def __init__(self, C, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.w = torch.randn(C, C, generator=g)

    def __call__(self, z_t, t):
        mix = torch.einsum("dc,bchw->bdhw", self.w, z_t - 0.5)
        return torch.sigmoid(2 * mix + 0.001 * t.view(-1, 1, 1, 1).float())


def codes(B=2, C=4, h=6, w=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(B, C, h, w, generator=g) < 0.5).float()


def collect(gen):
    steps = []
    out = run_sampler(gen, on_step=lambda s: steps.append(
        (s.index, s.t, s.s, s.mask.clone(), s.z_t.clone(), s.eps_hat.clone())))
    return steps, out


def test_p_at_least_one_returns_the_input_code_exactly():
    z = codes()
    _, out = collect(masked_sampler(MixingModel(4), z, SCHED, 200, [1.0, 1.5], steps=20, seeds=3))
    assert torch.equal(out.z0, z.repeat_interleave(2, dim=0))
    assert torch.all(out.masked_fraction == 0)


def test_p_zero_masks_everything_at_the_first_step():
    z = codes()
    steps, out = collect(masked_sampler(MixingModel(4), z, SCHED, 50, 0.0, seeds=1))
    assert steps[0][3].all()
    assert torch.all(out.masked_fraction == 1)


def test_unmasked_sampler_with_an_oracle_restores_the_healthy_code():
    target = codes(seed=1)
    z = codes(seed=2)
    _, out = collect(masked_sampler(OracleModel(target), z, SCHED, 100, 0.0, seeds=0,
                                    deterministic_last_step=True))
    assert torch.equal(out.z0, target)


def test_masked_sampler_changes_only_masked_bits_and_keeps_the_rest():
    target = codes(seed=1)
    z = target.clone()
    z[:, :, :2, :2] = 1 - z[:, :, :2, :2]  # an "anomaly": a corner that differs from healthy
    _, out = collect(masked_sampler(OracleModel(target), z, SCHED, 200, 0.5, steps=50, seeds=0,
                                    deterministic_last_step=True))
    # masked bits take the model's (healthy) estimate, unmasked bits are copied from the input
    assert torch.equal(out.z0[out.mask], target[out.mask])
    assert torch.equal(out.z0[~out.mask], z[~out.mask])
    # the anomalous corner is (nearly all) masked and restored; the rest mostly kept
    assert out.mask[:, :, :2, :2].float().mean() > 0.9
    assert (out.z0[:, :, :2, :2] == target[:, :, :2, :2]).float().mean() > 0.9
    assert out.mask[:, :, 2:, 2:].float().mean() < 0.5
    assert 0 < out.masked_fraction.min() and out.masked_fraction.max() < 1


def test_mask_never_shrinks_and_steps_follow_the_grid():
    z = codes()
    steps, out = collect(masked_sampler(MixingModel(4), z, SCHED, 200, [0.3, 0.6, 0.9], steps=20, seeds=7))
    assert [s[1] for s in steps] == list(range(200, 0, -10))
    assert [s[2] for s in steps] == list(range(190, -1, -10))
    for prev, nxt in zip(steps, steps[1:]):
        assert torch.all(nxt[3] >= prev[3])
    assert torch.equal(steps[-1][3], out.mask)
    # lower thresholds mask at least as much at the first step
    m0 = steps[0][3].view(2, 3, -1).float().mean(-1)
    assert torch.all(m0[:, 0] >= m0[:, 1]) and torch.all(m0[:, 1] >= m0[:, 2])


def test_trajectories_with_p_at_least_one_skip_the_network():
    seen = []

    def model(z_t, t):
        seen.append(z_t.shape[0])
        return torch.full_like(z_t, 0.3)

    z = codes(B=2)
    out = collect(masked_sampler(model, z, SCHED, 20, [0.5, 1.0, 0.2], seeds=1))[1]
    assert seen == [4] * 20  # 2 images x 2 thresholds below 1
    assert torch.equal(out.z0[1::3], z)
    collect(masked_sampler(model, z, SCHED, 5, [1.0], seeds=1))
    assert seen[20:] == []  # nothing to evaluate at all


def test_number_of_network_calls_is_the_step_count():
    model = OracleModel(codes())
    collect(masked_sampler(model, codes(), SCHED, 200, 0.5, steps=20))
    assert model.calls == 20
    model = OracleModel(codes())
    collect(masked_sampler(model, codes(), SCHED, 30, 0.5))
    assert model.calls == 30


def test_same_seed_same_output_and_different_seed_differs():
    z = codes()
    a = collect(masked_sampler(MixingModel(4), z, SCHED, 100, 0.4, seeds=11))[1]
    b = collect(masked_sampler(MixingModel(4), z, SCHED, 100, 0.4, seeds=11))[1]
    c = collect(masked_sampler(MixingModel(4), z, SCHED, 100, 0.4, seeds=12))[1]
    assert torch.equal(a.z0, b.z0) and torch.equal(a.mask, b.mask)
    assert not torch.equal(a.z0, c.z0)


def test_generator_seeding_is_deterministic():
    z = codes()
    a = collect(masked_sampler(MixingModel(4), z, SCHED, 60, 0.4, seeds=torch.Generator().manual_seed(3)))[1]
    b = collect(masked_sampler(MixingModel(4), z, SCHED, 60, 0.4, seeds=torch.Generator().manual_seed(3)))[1]
    assert torch.equal(a.z0, b.z0)


def test_batch_equals_one_by_one_and_sweep_equals_single_threshold():
    z = codes(B=3)
    model = MixingModel(4)
    ps = [0.2, 0.5, 0.8]
    batch = collect(masked_sampler(model, z, SCHED, 80, ps, steps=40, seeds=[5, 9, 13]))[1]
    for b, seed in enumerate([5, 9, 13]):
        for k, p in enumerate(ps):
            one = collect(masked_sampler(model, z[b : b + 1], SCHED, 80, p, steps=40, seeds=[seed]))[1]
            i = b * len(ps) + k
            assert torch.equal(batch.z0[i], one.z0[0])
            assert torch.equal(batch.mask[i], one.mask[0])
            assert float(batch.thresholds[i]) == pytest.approx(p)


@pytest.mark.parametrize("t, s", [(2, 1), (10, 9), (200, 199), (1000, 999), (200, 190),
                                  (200, 100), (20, 10), (200, 1)])
def test_fast_binary_posterior_equals_the_float64_posterior(t, s):
    g = torch.Generator().manual_seed(t)
    z = (torch.rand(4000, generator=g) < 0.5).float()
    x = torch.rand(4000, generator=g)
    x[:50], x[50:100], x[100:150] = 0.0, 1.0, 0.3
    fast = binary_posterior(SCHED, z, x, t, s)
    assert fast.dtype == torch.float32
    ref = SCHED.posterior(z.double(), x.double(), t, s)
    assert float((fast.double() - ref).abs().max()) < 1e-6


def test_trajectory_seed_depends_on_image_seed_and_threshold():
    assert trajectory_seed(0, 0.5) == trajectory_seed(0, 0.5)
    assert trajectory_seed(0, 0.5) != trajectory_seed(1, 0.5)
    assert trajectory_seed(0, 0.5) != trajectory_seed(0, 0.6)


def test_bad_arguments_are_rejected_clearly():
    z = codes()
    with pytest.raises(ValueError, match="binary"):
        run_sampler(masked_sampler(MixingModel(4), z * 0.5 + 0.2, SCHED, 10, 0.5))
    with pytest.raises(ValueError, match="L must"):
        run_sampler(masked_sampler(MixingModel(4), z, SCHED, 0, 0.5))
    with pytest.raises(ValueError, match="S must"):
        run_sampler(masked_sampler(MixingModel(4), z, SCHED, 10, 0.5, steps=20))
    with pytest.raises(ValueError, match="seeds"):
        run_sampler(masked_sampler(MixingModel(4), z, SCHED, 10, 0.5, seeds=[1, 2, 3]))
    with pytest.raises(ValueError):
        run_sampler(masked_sampler(MixingModel(4), z[0], SCHED, 10, 0.5))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.cuda
def test_sampler_runs_on_cuda_and_matches_its_own_seed():
    z = codes().cuda()
    model = MixingModel(4)
    model.w = model.w.cuda()
    a = collect(masked_sampler(model, z, SCHED, 50, [0.3, 0.7], seeds=2))[1]
    b = collect(masked_sampler(model, z, SCHED, 50, [0.3, 0.7], seeds=2))[1]
    assert a.z0.is_cuda and torch.equal(a.z0, b.z0)
