"""Invariants of the masked sampler (docs/method.md §5, Algorithm 1)."""

import pytest
import torch

from napari_berdiff.core.diffusion.sampler import (binary_posterior, masked_sampler, resolve_seeds,
                                                  run_sampler, trajectory_seed)
from napari_berdiff.core.diffusion.schedule import BernoulliSchedule, step_grid

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
    assert binary_posterior(SCHED, z.double(), x, t, s).dtype == torch.float32  # x0's dtype
    ref = SCHED.posterior(z.double(), x.double(), t, s)
    assert float((fast.double() - ref).abs().max()) < 1e-6


def test_per_image_seeds():
    assert resolve_seeds(7, 3) == [7, 8, 9]  # documented: image b gets seed + b
    assert resolve_seeds([4, 2], 2) == [4, 2]
    drawn = resolve_seeds(torch.Generator().manual_seed(0), 2000)
    assert drawn == resolve_seeds(torch.Generator().manual_seed(0), 2000)
    assert len(set(drawn)) == 2000 and max(drawn) > 2**40  # a wide range: no collisions
    with pytest.raises(ValueError, match="got 3 seeds for 2 images"):
        resolve_seeds([1, 2, 3], 2)


def test_trajectory_seed_depends_on_image_seed_and_threshold():
    assert trajectory_seed(0, 0.5) == trajectory_seed(0, 0.5)
    assert trajectory_seed(0, 0.5) != trajectory_seed(1, 0.5)
    assert trajectory_seed(0, 0.5) != trajectory_seed(0, 0.6)


def test_bad_arguments_are_rejected_clearly():
    z = codes()
    with pytest.raises(ValueError, match="binary"):
        run_sampler(masked_sampler(MixingModel(4), z * 0.5 + 0.2, SCHED, 10, 0.5))
    with pytest.raises(ValueError, match="threshold P must not be NaN"):
        run_sampler(masked_sampler(MixingModel(4), z, SCHED, 10, [0.5, float("nan")]))
    with pytest.raises(ValueError, match="L must"):
        run_sampler(masked_sampler(MixingModel(4), z, SCHED, 0, 0.5))
    with pytest.raises(ValueError, match="S must"):
        run_sampler(masked_sampler(MixingModel(4), z, SCHED, 10, 0.5, steps=20))
    with pytest.raises(ValueError, match="seeds"):
        run_sampler(masked_sampler(MixingModel(4), z, SCHED, 10, 0.5, seeds=[1, 2, 3]))
    with pytest.raises(ValueError, match=r"z must be \(B, C, h, w\), got shape \(4, 6, 6\)"):
        run_sampler(masked_sampler(MixingModel(4), z[0], SCHED, 10, 0.5))
    with pytest.raises(ValueError, match="need at least one threshold P"):
        run_sampler(masked_sampler(MixingModel(4), z, SCHED, 10, []))
    with pytest.raises(ValueError, match=r"L must lie in 1..1000, got 1001"):
        run_sampler(masked_sampler(MixingModel(4), z, SCHED, 1001, 0.5))
    run_sampler(masked_sampler(MixingModel(4), z, SCHED, 1000, 0.5, steps=2))  # L = T is valid


def test_defaults_are_p_one_half_seed_0_and_a_sampled_last_step():
    z = codes()
    default = collect(masked_sampler(MixingModel(4), z, SCHED, 40))[1]
    explicit = collect(masked_sampler(MixingModel(4), z, SCHED, 40, 0.5, seeds=0,
                                      deterministic_last_step=False))[1]
    assert torch.equal(default.z0, explicit.z0) and torch.equal(default.mask, explicit.mask)
    assert torch.all(default.thresholds == 0.5)
    for other in (dict(seeds=1), dict(deterministic_last_step=True)):
        changed = collect(masked_sampler(MixingModel(4), z, SCHED, 40, 0.5, **other))[1]
        assert not torch.equal(changed.z0, default.z0), other


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.cuda
def test_sampler_runs_on_cuda_and_matches_its_own_seed():
    z = codes().cuda()
    model = MixingModel(4)
    model.w = model.w.cuda()
    a = collect(masked_sampler(model, z, SCHED, 50, [0.3, 0.7], seeds=2))[1]
    b = collect(masked_sampler(model, z, SCHED, 50, [0.3, 0.7], seeds=2))[1]
    assert a.z0.is_cuda and torch.equal(a.z0, b.z0)


# ----------------------------------------------------------------------------- Algorithm 1, exactly
# The tests below check the sampler step by step against SPEC sections 2, 3 and 5 with a
# deterministic model whose output depends on t. They reproduce the trajectory's uniform draws
# (the sampler's documented randomness: one generator per (image, P), seeded by trajectory_seed;
# one uniform per bit for the noising to L, then one per bit at every step) and compare bit by bit.


class StepModel:
    """A fixed function of (z_t, t) that records the steps it is called with. Its output changes
    with t (``sin(0.9 t)``), so a network evaluated at t-1 or at s gives other flip probabilities,
    and it is quantised to eighths so that ``eps_hat == P`` happens (the mask uses ``>``)."""

    def __init__(self, C, seed=0):
        self.w = torch.randn(C, C, generator=torch.Generator().manual_seed(seed))
        self.calls = []

    def eps(self, z_t, t):
        mix = torch.einsum("dc,bchw->bdhw", self.w, z_t.float() - 0.5)
        return torch.round(8 * torch.sigmoid(mix + 2 * torch.sin(0.9 * t.double()).float()
                                             .view(-1, 1, 1, 1))) / 8

    def __call__(self, z_t, t):
        assert t.dtype == torch.long and t.shape == (z_t.shape[0],)
        self.calls.append(t.clone())
        return self.eps(z_t, t)


def trajectory_streams(seeds, ps):
    """The generators of trajectories ``b * K + k`` as the sampler seeds them."""
    return [torch.Generator().manual_seed(trajectory_seed(sd, p)) for sd in seeds for p in ps]


def draw(gens, shape):
    return torch.stack([torch.rand(shape, generator=g) for g in gens])


def agree_away_from_ties(got, u, prob, tol=1e-5):
    """``got == (u < prob)`` wherever u is not within ``tol`` of prob (float32 vs float64)."""
    clear = (u.double() - prob.double()).abs() > tol
    return torch.equal(got[clear], (u.double() < prob.double())[clear].float())


@pytest.mark.parametrize("L, S, ps", [(200, 20, [0.5, 1.0, 0.25]), (30, None, [0.5]),
                                      (37, 5, [0.0, 0.625])])
def test_network_is_evaluated_at_the_grid_steps_t_not_t_minus_1_or_s(L, S, ps):
    model = StepModel(4)
    steps, _ = collect(masked_sampler(model, codes(), SCHED, L, ps, steps=S, seeds=2))
    grid = step_grid(L, S)
    assert [s[1] for s in steps] == grid[:-1] and [s[2] for s in steps] == grid[1:]
    counted = []
    run_sampler(masked_sampler(StepModel(4), codes(), SCHED, L, ps, steps=S, seeds=2),
                on_step=lambda st: counted.append((st.index, st.n_steps)))
    assert counted == [(i, len(grid) - 1) for i in range(len(grid) - 1)]
    n_active = 2 * sum(p < 1 for p in ps)
    assert len(model.calls) == len(grid) - 1
    for t, got in zip(grid, model.calls):
        assert got.tolist() == [t] * n_active, (t, got)


@pytest.mark.parametrize("L", [1, 200])
def test_the_input_is_noised_to_exactly_level_L(L):
    z = codes(B=2, C=8, h=32, w=32, seed=4)
    ps = [0.5, 0.25]
    steps, _ = collect(masked_sampler(StepModel(8), z, SCHED, L, ps, steps=1, seeds=[6, 9]))
    u = draw(trajectory_streams([6, 9], ps), z.shape[1:])
    p_L = (1 - SCHED.abar[L]) / 2  # SPEC 5.2: z_L = z XOR Bernoulli((1 - abar_L)/2)
    expected = (z.repeat_interleave(2, dim=0) + (u.double() < p_L).float()) % 2
    assert torch.equal(steps[0][4], expected)
    # the check can tell L from L +- 1: some draws fall between the neighbouring flip rates
    lo, hi = (1 - SCHED.abar[max(L - 1, 0)]) / 2, (1 - SCHED.abar[L + 1]) / 2
    assert int(((u.double() >= lo) & (u.double() < hi)).sum()) > 0


@pytest.mark.parametrize("L, S, ps, det_last", [(200, 20, [0.5, 0.0, 0.375], False),
                                                (12, None, [0.5, 1.0], True),
                                                (100, 7, [0.625], False)])
def test_every_step_follows_algorithm_1_with_the_spec_posterior(L, S, ps, det_last):
    """Each step against SPEC 5 computed here in float64: eps_hat = f(z_t, t), mask growth with
    ``eps_hat > P``, stitching with the input code, and z_s ~ Bernoulli(posterior(z_t, x0, t, s))
    with SPEC 3's posterior (so a jump to another s or z_t and x0 swapped give other bits)."""
    B = 2
    z = codes(B=B, C=4, h=12, w=12, seed=5)
    seeds = [3, 8]
    model = StepModel(4, seed=1)
    steps, out = collect(masked_sampler(model, z, SCHED, L, ps, steps=S, seeds=seeds,
                                        deterministic_last_step=det_last))
    K, grid = len(ps), step_grid(L, S)
    gens = trajectory_streams(seeds, ps)
    shape = z.shape[1:]
    z_in = z.repeat_interleave(K, dim=0)
    thr = torch.tensor(ps).repeat(B).view(-1, 1, 1, 1)
    active = (thr < 1).view(-1)
    u = draw(gens, shape)
    z_t = (z_in + (u.double() < (1 - SCHED.abar[L]) / 2).float()) % 2
    mask = torch.zeros_like(z_in, dtype=torch.bool)
    next_codes = [s[4] for s in steps[1:]] + [out.z0]
    n_compared = 0
    for (i, t, s, got_mask, got_zt, got_eps), z_next in zip(steps, next_codes):
        assert (t, s) == (grid[i], grid[i + 1])
        assert torch.equal(got_zt, z_t), f"step {i}: the code the network sees"
        eps = torch.zeros_like(z_t)
        eps[active] = model.eps(z_t[active], torch.full((int(active.sum()),), t))
        assert torch.equal(got_eps, eps), f"step {i}: eps_hat"
        mask = mask | (eps > thr) | (thr <= 0)
        assert torch.equal(got_mask, mask), f"step {i}: mask"
        x0 = torch.where(mask, (z_t - eps).abs(), z_in).double()
        prob = SCHED.posterior(z_t.double(), x0, t, s) if s > 0 else x0
        if s == 0 and det_last:
            assert torch.equal(z_next, (prob > 0.5).float()), f"step {i}: last step"
        else:
            u = draw(gens, shape)
            assert agree_away_from_ties(z_next, u, prob), f"step {i} (t={t} -> s={s})"
            n_compared += 1
        z_t = z_next
    assert n_compared >= len(grid) - 2
    assert torch.equal(out.mask, mask)
    assert torch.allclose(out.masked_fraction, mask.flatten(1).float().mean(1))
