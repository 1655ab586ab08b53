"""Schedule, forward process and posterior against the test vectors of docs/method.md §1-§3."""

import numpy as np
import pytest
import torch

from napari_berdiff.core.diffusion.schedule import BernoulliSchedule, linear_betas, step_grid

SCHED = BernoulliSchedule()
CORNERS_Z = torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=torch.float64)
CORNERS_X = torch.tensor([0.0, 1.0, 0.0, 1.0], dtype=torch.float64)


@pytest.mark.parametrize(
    "t, expected",
    [(1, 0.9999), (10, 0.9981052048), (100, 0.8970181457), (200, 0.6590385082),
     (500, 0.07858724288), (1000, 4.035829765e-05)],
)
def test_abar_reference_values(t, expected):
    assert SCHED.abar[t] == pytest.approx(expected, rel=1e-9)


def test_schedule_conventions():
    betas = linear_betas()
    assert betas.dtype == np.float64 and len(betas) == 1000
    assert betas[0] == 1e-4 and betas[-1] == 0.02
    assert SCHED.abar[0] == 1.0 and len(SCHED.abar) == 1001


@pytest.mark.parametrize(
    "t, row",
    [
        (1, [0, 1, 0, 1]),
        (2, [0.0000000030, 0.5452915002, 0.4547084998, 0.9999999970]),
        (10, [0.0000001129, 0.1472737656, 0.8527262344, 0.9999998871]),
        (200, [0.0004143243, 0.0099034179, 0.9900965821, 0.9995856757]),
        (1000, [0.0099991846, 0.0100008154, 0.9899991846, 0.9900008154]),
    ],
)
def test_posterior_ordinary_step_vectors(t, row):
    got = SCHED.posterior(CORNERS_Z, CORNERS_X, t)
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), row, atol=1e-8, rtol=0)


def test_posterior_non_binary_x0():
    z = torch.tensor([1.0, 0.0], dtype=torch.float64)
    x = torch.tensor([0.3, 0.3], dtype=torch.float64)
    np.testing.assert_allclose(SCHED.posterior(z, x, 200).numpy(), [0.9965101214, 0.0011824572], atol=1e-8)


@pytest.mark.parametrize(
    "t, s, row, cont",
    [
        (200, 190, [0.0036967611, 0.0965148591, 0.9034851409, 0.9963032389], 0.9662195325),
        (200, 100, [0.0082340370, 0.7380312089, 0.2619687911, 0.9917659630], 0.7552279997),
        (20, 10, [0.0000018440, 0.6721958831, 0.3278041169, 0.9999981560], None),
    ],
)
def test_posterior_strided_vectors(t, s, row, cont):
    np.testing.assert_allclose(SCHED.posterior(CORNERS_Z, CORNERS_X, t, s).numpy(), row, atol=1e-8, rtol=0)
    if cont is not None:
        got = SCHED.posterior(torch.tensor([1.0], dtype=torch.float64), torch.tensor([0.3], dtype=torch.float64), t, s)
        assert float(got) == pytest.approx(cont, abs=1e-8)


def test_posterior_per_item_steps_match_scalar_steps():
    z = CORNERS_Z.repeat(2)
    x = CORNERS_X.repeat(2)
    t = torch.tensor([200] * 4 + [20] * 4)
    s = torch.tensor([190] * 4 + [10] * 4)
    got = SCHED.posterior(z.view(8, 1), x.view(8, 1), t, s).view(-1)
    ref = torch.cat([SCHED.posterior(CORNERS_Z, CORNERS_X, 200, 190), SCHED.posterior(CORNERS_Z, CORNERS_X, 20, 10)])
    assert torch.allclose(got, ref, rtol=1e-12, atol=0)  # (not assert_close: seconds of imports)


def test_posterior_rejects_s_not_below_t():
    with pytest.raises(ValueError):
        SCHED.posterior(CORNERS_Z, CORNERS_X, 10, 10)
    with pytest.raises(ValueError):
        SCHED.posterior(CORNERS_Z, CORNERS_X, 1001)


def test_forward_process_is_symmetric_and_has_the_paper_flip_rate():
    g = torch.Generator().manual_seed(0)
    n = 400_000
    z0 = torch.cat([torch.zeros(n // 2), torch.ones(n // 2)])
    zt = SCHED.q_sample(z0, 200, generator=g)
    expected = (1 - SCHED.abar[200]) / 2  # 0.1705
    flips_from_0 = zt[: n // 2].mean().item()
    flips_from_1 = 1 - zt[n // 2 :].mean().item()
    tol = 4 * np.sqrt(expected * (1 - expected) / (n // 2))
    assert abs(flips_from_0 - expected) < tol  # zeros do flip on (unlike the released code)
    assert abs(flips_from_1 - expected) < tol


def test_two_jumps_give_the_same_flip_rate_as_one():
    g = torch.Generator().manual_seed(1)
    n = 400_000
    z0 = (torch.rand(n, generator=g) < 0.5).float()
    one = SCHED.q_sample(z0, 300, generator=g)
    zs = SCHED.q_sample(z0, 120, generator=g)
    two = SCHED.q_sample(zs, 300, generator=g, s=120)
    p = SCHED.flip_probability(300)
    tol = 4 * np.sqrt(p * (1 - p) / n)
    assert abs((one != z0).float().mean().item() - p) < tol
    assert abs((two != z0).float().mean().item() - p) < tol
    # the composed probability is exact: (1 - a_ts)/2 combined with (1 - a_s)/2 gives (1 - a_t)/2
    p_s, p_ts = SCHED.flip_probability(120), SCHED.flip_probability(300, 120)
    assert p_s * (1 - p_ts) + (1 - p_s) * p_ts == pytest.approx(p, abs=1e-12)


def test_q_sample_per_item_steps_and_generator_determinism():
    z0 = torch.zeros(3, 1000)
    t = torch.tensor([1, 500, 1000])
    a = SCHED.q_sample(z0, t, generator=torch.Generator().manual_seed(5))
    b = SCHED.q_sample(z0, t, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    rates = a.mean(dim=1)
    assert rates[0] < 0.01 and 0.4 < rates[1] < 0.5 and 0.45 < rates[2] < 0.55


def test_step_grid():
    assert step_grid(5) == [5, 4, 3, 2, 1, 0]
    g = step_grid(200, 20)
    assert g[0] == 200 and g[-1] == 0 and len(g) == 21 and all(np.diff(g) == -10)
    g = step_grid(200, 7)
    assert len(g) == 8 and all(np.diff(g) < 0)
    with pytest.raises(ValueError):
        step_grid(10, 11)
    with pytest.raises(ValueError):
        step_grid(0)


def test_schedule_roundtrip():
    assert BernoulliSchedule.from_dict(SCHED.to_dict()) == SCHED
    other = BernoulliSchedule(T=50, beta_start=2e-4, beta_end=0.05)
    d = other.to_dict()
    assert d == {"T": 50, "beta_start": 2e-4, "beta_end": 0.05}
    back = BernoulliSchedule.from_dict({"T": "50", "beta_start": "2e-4", "beta_end": 0.05})
    assert back == other and back.T == 50 and len(back.abar) == 51
    assert back.abar[50] == pytest.approx(np.prod(1 - np.linspace(2e-4, 0.05, 50)), rel=1e-12)
    assert len(BernoulliSchedule(T=1).abar) == 2  # the smallest schedule is valid


@pytest.mark.parametrize("t, s", [(200, 0), (1, 0), (1000, 0), (300, 120), (2, 1)])
def test_flip_probability_is_the_spec_formula(t, s):
    expected = (1 - SCHED.abar[t] / SCHED.abar[s]) / 2
    assert SCHED.flip_probability(t, s) == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert SCHED.flip_probability(t) == pytest.approx((1 - SCHED.abar[t]) / 2, rel=1e-12)
    assert SCHED.flip_probability(200) == pytest.approx((1 - 0.6590385082) / 2, rel=1e-9)


def test_q_sample_flips_exactly_where_the_uniform_is_below_the_spec_rate():
    """``z_t = z_s XOR (u < (1 - abar_t/abar_s)/2)`` bit for bit, per item, for the documented
    draw (one ``torch.rand`` of the code's shape from the generator); the steps are 1-based."""
    g = torch.Generator().manual_seed(3)
    z0 = (torch.rand(5, 4, 64, 64, generator=g) < 0.5).float()
    t = torch.tensor([1, 10, 200, 201, 999])
    s = torch.tensor([0, 3, 150, 0, 500])
    for steps_from in (None, s):
        kw = {} if steps_from is None else {"s": steps_from}
        got = SCHED.q_sample(z0, t, generator=torch.Generator().manual_seed(9), **kw)
        u = torch.rand(z0.shape, generator=torch.Generator().manual_seed(9)).double()
        abar_s = torch.ones(5, dtype=torch.float64) if steps_from is None else \
            torch.from_numpy(SCHED.abar[s.numpy()])
        p = ((1 - torch.from_numpy(SCHED.abar[t.numpy()]) / abar_s) / 2).view(-1, 1, 1, 1)
        clear = (u - p).abs() > 1e-6
        assert torch.equal(got[clear], ((z0 + (u < p).double()) % 2)[clear].float())
        # the check tells t from t +- 1: some draws lie between the neighbouring flip rates
        p_lo = ((1 - torch.from_numpy(SCHED.abar[(t - 1).numpy()]) / abar_s) / 2).view(-1, 1, 1, 1)
        assert int(((u >= p_lo) & (u < p)).sum()) > 10
    # an integer step gives the same as a tensor of it
    one = SCHED.q_sample(z0[2:3], 200, generator=torch.Generator().manual_seed(2))
    many = SCHED.q_sample(z0[2:3], torch.tensor([200]), generator=torch.Generator().manual_seed(2))
    assert torch.equal(one, many)


def test_steps_outside_0_to_T_are_refused():
    z = torch.zeros(2, 3)
    for bad in (torch.tensor([0, 1001]), torch.tensor([-1, 5])):
        with pytest.raises(ValueError, match="0..1000"):
            SCHED.q_sample(z, bad)
    SCHED.q_sample(z, torch.tensor([0, 1000]))  # both ends are valid steps
    with pytest.raises(ValueError, match="outside 0..1000"):
        SCHED.flip_probability(1001)
    with pytest.raises(ValueError, match="s <= t"):
        SCHED.flip_probability(5, 6)
    with pytest.raises(ValueError):
        BernoulliSchedule(T=0)


def test_posterior_default_s_is_t_minus_1_for_tensor_steps_too():
    z = CORNERS_Z.repeat(3).view(12, 1)
    x = CORNERS_X.repeat(3).view(12, 1)
    t = torch.tensor([2] * 4 + [10] * 4 + [200] * 4)
    got = SCHED.posterior(z, x, t).view(3, 4)
    for row, tt in zip(got, (2, 10, 200)):
        np.testing.assert_allclose(row.numpy(), SCHED.posterior(CORNERS_Z, CORNERS_X, tt, tt - 1).numpy(),
                                   rtol=1e-12, atol=0)
    # a tensor t with an int s, and an int t with a tensor s
    np.testing.assert_allclose(SCHED.posterior(z, x, t, 1).view(3, 4)[2].numpy(),
                               SCHED.posterior(CORNERS_Z, CORNERS_X, 200, 1).numpy(), rtol=1e-12)
    np.testing.assert_allclose(SCHED.posterior(z, x, 200, torch.full((12,), 190)).view(3, 4)[0].numpy(),
                               [0.0036967611, 0.0965148591, 0.9034851409, 0.9963032389], atol=1e-8)


@pytest.mark.parametrize("t, s", [(torch.tensor([10, 20]), torch.tensor([9, 20])),
                                  (torch.tensor([10, 20]), torch.tensor([9, 25])),
                                  (torch.tensor([10, 20]), 15), (15, torch.tensor([3, 15]))])
def test_posterior_refuses_s_not_below_t_for_any_item(t, s):
    with pytest.raises(ValueError, match="posterior needs s < t for every item"):
        SCHED.posterior(torch.zeros(2, 1, dtype=torch.float64), torch.zeros(2, 1, dtype=torch.float64), t, s)


def test_posterior_dtype_follows_z_t_and_integer_codes_give_float32():
    x = CORNERS_X.float()
    out32 = SCHED.posterior(CORNERS_Z.float(), x, 200)
    out_int = SCHED.posterior(CORNERS_Z.long(), x, 200)
    assert out32.dtype == torch.float32 and out_int.dtype == torch.float32
    assert torch.equal(out32, out_int)
    np.testing.assert_allclose(out32.numpy(), [0.0004143243, 0.0099034179, 0.9900965821, 0.9995856757],
                               atol=1e-7)
    with pytest.raises(ValueError, match=r"posterior needs s < t, got s=5, t=5"):
        SCHED.posterior(CORNERS_Z, CORNERS_X, 5, 5)


def test_a_schedule_built_here_has_the_reference_values():
    """(Built inside the test, not at import: mutation tools only see code run by a test.)"""
    sched = BernoulliSchedule()
    assert sched.abar[0] == 1.0 and len(sched.abar) == 1001
    np.testing.assert_allclose(sched.abar[[1, 10, 100, 200, 500, 1000]],
                               [0.9999, 0.9981052048, 0.8970181457, 0.6590385082, 0.07858724288,
                                4.035829765e-05], rtol=1e-9)
    assert sched.betas.dtype == np.float64 and np.array_equal(sched.betas, linear_betas())
    np.testing.assert_allclose(sched.abar[1:], np.cumprod(1 - sched.betas), rtol=1e-15)
    with pytest.raises(ValueError, match="T must be >= 1, got 0"):
        BernoulliSchedule(T=0)


def test_flip_probability_edges_and_messages():
    assert SCHED.flip_probability(5, 5) == 0.0 and SCHED.flip_probability(0) == 0.0
    with pytest.raises(ValueError, match=r"step s=1001 outside 0..1000"):
        SCHED.flip_probability(1000, 1001)
    with pytest.raises(ValueError, match=r"step t=-1 outside 0..1000"):
        SCHED.flip_probability(-1)
    with pytest.raises(ValueError, match=r"need s <= t, got s=6, t=5"):
        SCHED.flip_probability(5, 6)


def test_q_sample_keeps_float_dtypes_and_converts_integer_codes():
    z = (torch.rand(2, 500, generator=torch.Generator().manual_seed(1)) < 0.5)
    ref = SCHED.q_sample(z.float(), 300, generator=torch.Generator().manual_seed(4))
    for code in (z, z.long(), z.to(torch.uint8)):
        got = SCHED.q_sample(code, 300, generator=torch.Generator().manual_seed(4))
        assert got.dtype == torch.float32 and torch.equal(got, ref)
    d = SCHED.q_sample(z.double(), 300, generator=torch.Generator().manual_seed(4))
    assert d.dtype == torch.float64 and torch.all((d == 0) | (d == 1))
    assert 0.3 < float((d != z.double()).float().mean()) < 0.5  # (1 - abar_300)/2 = 0.37


def test_step_grid_holds_python_ints_and_explains_bad_values():
    for grid in (step_grid(7), step_grid(200, 20), step_grid(100, 7)):
        assert all(type(v) is int for v in grid)
    with pytest.raises(ValueError, match=r"noise level L must be >= 1, got 0"):
        step_grid(0)
    with pytest.raises(ValueError, match=r"step count S must lie in 1..L=10, got 11"):
        step_grid(10, 11)
