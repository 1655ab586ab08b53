"""The masked anomaly sampler (docs/method.md §5, the paper's Algorithm 1) as a generator over steps.

One sampler drives the widget, the CLI, the evaluation and the tests. It runs a batch of codes
against thresholds ``P_1..P_K``, one trajectory per (image, P) with its own seeded generator, so a
slice gives the same result alone or in a batch (docs/design-notes.md, "Sampler randomness").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Generator, Sequence

import numpy as np
import torch

from .schedule import BernoulliSchedule, step_grid
from .thresholds import p_key

FlipModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``model(z_t, t) -> eps_hat``: flip probabilities in [0,1]; ``t`` a (B,) LongTensor of 1-based steps."""


@dataclass
class SamplerStep:
    """What the sampler yields after each network evaluation (tensors live on the work device).

    ``index`` counts from 0 to ``n_steps - 1``; ``t`` is the step evaluated and ``s`` the step
    sampled next (0 at the end). ``mask`` is the mask *after* this step's update, ``z_t`` the
    code the network saw and ``eps_hat`` its flip probabilities. Consumers must copy what they keep.
    """

    index: int
    n_steps: int
    t: int
    s: int
    mask: torch.Tensor
    z_t: torch.Tensor
    eps_hat: torch.Tensor


@dataclass
class SamplerOutput:
    """The sampler's return value: final codes, final masks and the masked fraction per trajectory."""

    z0: torch.Tensor
    mask: torch.Tensor
    masked_fraction: torch.Tensor  # (B*K,) float: the image-level anomaly score (docs/method.md §5)
    thresholds: torch.Tensor  # (B*K,) the P of each trajectory


def trajectory_seed(image_seed: int, threshold: float) -> int:
    """Seed of the trajectory for one (image, P) pair: independent of batch composition."""
    key = p_key(threshold)
    return int(np.random.SeedSequence([int(image_seed) & 0xFFFFFFFF, 0x5A3F, key & 0xFFFFFFFF])
               .generate_state(1, dtype=np.uint64)[0] >> 1)


def _generators(seeds: Sequence[int], device: torch.device) -> list[torch.Generator]:
    gens = []
    for sd in seeds:
        g = torch.Generator(device=device)
        g.manual_seed(int(sd))
        gens.append(g)
    return gens


def _rand_per_item(shape: tuple[int, ...], gens: list[torch.Generator], device, dtype) -> torch.Tensor:
    """Uniform draws with one generator per leading item, so each item's stream is its own."""
    out = torch.empty((len(gens), *shape), device=device, dtype=dtype)
    for i, g in enumerate(gens):
        out[i].uniform_(0, 1, generator=g)  # the same stream as torch.rand(shape, generator=g)
    return out


def binary_posterior(schedule: BernoulliSchedule, z_t: torch.Tensor, x0: torch.Tensor, t: int,
                     s: int) -> torch.Tensor:
    """``P(z_s = 1 | z_t, x0)`` (docs/method.md §3) for a *binary* ``z_t``: the fast form the sampler uses.

    With ``a = abar_t/abar_s`` and ``b = abar_s``: ``th1 = (a z_t + (1-a)/2) (b x0 + (1-b)/2)``
    and ``th0 = (a (1-z_t) + (1-a)/2) (b (1-x0) + (1-b)/2)``, where ``1 - z_t`` is exact for bits,
    so every factor is formed without cancellation. The scalars are float64, the tensor arithmetic
    runs in ``x0``'s dtype (float32 in the sampler: several times faster than
    :meth:`BernoulliSchedule.posterior`'s float64) and agrees with the float64 form to ~1e-6.
    """
    ab = schedule.abar
    a = float(ab[int(t)] / ab[int(s)])
    b = float(ab[int(s)])
    lo_a, lo_b = (1.0 - a) / 2.0, (1.0 - b) / 2.0
    z = z_t.to(x0.dtype)
    th1 = (z * a).add_(lo_a).mul_((x0 * b).add_(lo_b))
    th0 = (1.0 - z).mul_(a).add_(lo_a).mul_((1.0 - x0).mul_(b).add_(lo_b))
    return th1.div_(th0.add_(th1))


def masked_sampler(
    model: FlipModel,
    z: torch.Tensor,
    schedule: BernoulliSchedule,
    L: int,
    thresholds: Sequence[float] | float = 0.5,
    *,
    steps: int | None = None,
    seeds: Sequence[int] | int | torch.Generator = 0,
    deterministic_last_step: bool = False,
) -> Generator[SamplerStep, None, SamplerOutput]:
    """Algorithm 1 over a batch of codes and thresholds; a generator yielding :class:`SamplerStep`.

    Args:
        model: maps ``(z_t, t)`` to flip probabilities ``eps_hat`` (sigmoid already applied).
        z: (B, C, h, w) binary codes of the inputs (0/1 floats), e.g. Bernoulli samples of E(x).
        L: noise level (1..T). ``steps`` (S, default L) evenly spaced steps with the exact
            strided posterior.
        thresholds: P values; P >= 1 never masks (output code == z; the network is not evaluated
            for those trajectories and their ``eps_hat`` is reported as 0), P <= 0 masks
            everything at the first step (plain, unmasked partial diffusion).
        seeds: one int per image, a single int (image b gets ``seed + b``), or a torch.Generator
            from which per-image seeds are drawn.
        deterministic_last_step: take ``x0_stitched > 0.5`` at the last step instead of sampling.

    Returns (as the generator's return value) a :class:`SamplerOutput` whose trajectory
    ``b * K + k`` belongs to image ``b`` and threshold ``k``.
    """
    L, p_list = _checked_args(z, schedule, L, thresholds)
    grid = step_grid(L, steps)
    B, K = z.shape[0], len(p_list)
    image_seeds = resolve_seeds(seeds, B)
    device = z.device
    work = torch.float32
    with torch.inference_mode():
        z_in = z.to(work).repeat_interleave(K, dim=0)  # (B*K, C, h, w), trajectory b*K + k
        if not torch.all((z_in == 0) | (z_in == 1)):
            raise ValueError("the input code z must be binary (0/1)")
        thr = torch.tensor(p_list, dtype=work, device=device).repeat(B)
        gens = _generators([trajectory_seed(image_seeds[i // K], p_list[i % K]) for i in range(B * K)], device)
        thr4 = thr.view(-1, 1, 1, 1)
        mask_all = thr4 <= 0
        active = thr < 1
        n_active = int(active.sum())
        shape = tuple(z_in.shape[1:])
        # z_L = z XOR Bernoulli((1 - abar_L)/2)
        u = _rand_per_item(shape, gens, device, work)
        z_t = (z_in + (u < schedule.flip_probability(L)).to(work)) % 2
        mask = torch.zeros_like(z_in, dtype=torch.bool)
    n = len(grid) - 1
    for i in range(n):
        t, s = grid[i], grid[i + 1]
        with torch.inference_mode():
            t_vec = torch.full((B * K,), t, dtype=torch.long, device=device)
            eps_hat = _flip_probabilities(model, z_t, t_vec, active, n_active == B * K)
            x0_hat = (z_t - eps_hat).abs()
            mask = mask | (eps_hat > thr4) | mask_all
            x0_st = torch.where(mask, x0_hat, z_in)
            if s > 0:
                prob = binary_posterior(schedule, z_t, x0_st, t, s)
            else:
                prob = x0_st
            if s == 0 and deterministic_last_step:
                z_next = (prob > 0.5).to(work)
            else:
                u = _rand_per_item(shape, gens, device, work)
                z_next = (u < prob).to(work)
        yield SamplerStep(index=i, n_steps=n, t=t, s=s, mask=mask, z_t=z_t, eps_hat=eps_hat)
        z_t = z_next
    with torch.inference_mode():
        frac = mask.flatten(1).float().mean(dim=1)
    return SamplerOutput(z0=z_t, mask=mask, masked_fraction=frac, thresholds=thr)


def _checked_args(z, schedule, L, thresholds) -> tuple[int, list[float]]:
    """``(L, [P, ...])`` of :func:`masked_sampler`'s arguments, or ValueError naming the bad one."""
    if z.dim() != 4:
        raise ValueError(f"z must be (B, C, h, w), got shape {tuple(z.shape)}")
    L = int(L)
    if not 1 <= L <= schedule.T:
        raise ValueError(f"noise level L must lie in 1..{schedule.T}, got {L}")
    p_list = [float(thresholds)] if np.isscalar(thresholds) else [float(p) for p in thresholds]
    if not p_list:
        raise ValueError("need at least one threshold P")
    if any(np.isnan(p) for p in p_list):
        raise ValueError("threshold P must not be NaN")
    return L, p_list


def _flip_probabilities(model, z_t, t_vec, active, all_active: bool) -> torch.Tensor:
    """``eps_hat`` of the trajectories; those with P >= 1 (not ``active``) never mask, so the
    network is skipped for them and their ``eps_hat`` is 0."""
    if all_active:
        return model(z_t, t_vec).to(z_t.dtype)
    eps_hat = torch.zeros_like(z_t)
    if bool(active.any()):
        eps_hat[active] = model(z_t[active], t_vec[active]).to(z_t.dtype)
    return eps_hat


def resolve_seeds(seeds: Sequence[int] | int | torch.Generator, n: int) -> list[int]:
    """Per-image integer seeds from an int (``seed + b``), a sequence, or a torch.Generator."""
    if isinstance(seeds, torch.Generator):
        return [int(v) for v in torch.randint(0, 2**62, (n,), generator=seeds).tolist()]
    if isinstance(seeds, (int, np.integer)):
        return [int(seeds) + b for b in range(n)]
    seeds = [int(s) for s in seeds]
    if len(seeds) != n:
        raise ValueError(f"got {len(seeds)} seeds for {n} images")
    return seeds


def drive(gen: Generator, on_item: Callable | None = None):
    """Run any generator to the end, calling ``on_item`` on each yielded item; return its value."""
    while True:
        try:
            item = next(gen)
        except StopIteration as stop:
            return stop.value
        if on_item is not None:
            on_item(item)


def relay(gen: Generator, convert: Callable):
    """A generator yielding ``convert(item)`` for each item of ``gen`` (items it maps to None are
    dropped) and returning ``gen``'s value: ``value = yield from relay(gen, convert)``."""
    while True:
        try:
            item = next(gen)
        except StopIteration as stop:
            return stop.value
        out = convert(item)
        if out is not None:
            yield out


def run_sampler(gen: Generator[SamplerStep, None, SamplerOutput],
                on_step: Callable[[SamplerStep], None] | None = None) -> SamplerOutput:
    """Drive a sampler generator to the end (optionally calling ``on_step``) and return its output."""
    return drive(gen, on_step)
