"""Bernoulli noise schedule, forward noising and the (strided) posterior (docs/method.md §1-§3).

Steps are 1-based (t = 1..T, ``abar_0 = 1``); the schedule is computed in float64 and cast at use.
The forward process is the paper's symmetric one, not the released code's (docs/method.md §2).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

T_DEFAULT = 1000
BETA_START = 1e-4
BETA_END = 0.02


def linear_betas(T: int = T_DEFAULT, start: float = BETA_START, end: float = BETA_END) -> np.ndarray:
    """``beta_t = linspace(start, end, T)[t-1]`` in float64 (index 0 holds beta_1)."""
    return np.linspace(start, end, T, dtype=np.float64)


@dataclass(frozen=True)
class BernoulliSchedule:
    """Linear Bernoulli schedule with ``abar`` indexed by the 1-based step (``abar[0] = 1``)."""

    T: int = T_DEFAULT
    beta_start: float = BETA_START
    beta_end: float = BETA_END

    def __post_init__(self) -> None:
        if self.T < 1:
            raise ValueError(f"T must be >= 1, got {self.T}")
        betas = linear_betas(self.T, self.beta_start, self.beta_end)
        abar = np.concatenate([[1.0], np.cumprod(1.0 - betas)])
        object.__setattr__(self, "_betas", betas)
        object.__setattr__(self, "_abar", abar)

    # -- schedule values -------------------------------------------------------------------
    @property
    def betas(self) -> np.ndarray:
        """float64 array of length T; ``betas[t-1]`` is beta_t."""
        return self._betas  # type: ignore[attr-defined]

    @property
    def abar(self) -> np.ndarray:
        """float64 array of length T+1; ``abar[t]`` is abar_t, ``abar[0] = 1``."""
        return self._abar  # type: ignore[attr-defined]

    def to_dict(self) -> dict:
        return {"T": self.T, "beta_start": self.beta_start, "beta_end": self.beta_end}

    @classmethod
    def from_dict(cls, d: dict) -> "BernoulliSchedule":
        return cls(T=int(d["T"]), beta_start=float(d["beta_start"]), beta_end=float(d["beta_end"]))

    def _check_step(self, t: int, name: str = "t", allow_zero: bool = True) -> int:
        t = int(t)
        lo = 0 if allow_zero else 1
        if not lo <= t <= self.T:
            raise ValueError(f"step {name}={t} outside {lo}..{self.T}")
        return t

    def _abar_tensor(self, t, like: torch.Tensor) -> torch.Tensor:
        """abar_t as a tensor broadcastable against ``like`` (t: int or (B,) tensor)."""
        if isinstance(t, torch.Tensor):
            idx = t.detach().to("cpu", torch.long)
            if idx.numel() and (idx.min() < 0 or idx.max() > self.T):
                raise ValueError(f"steps must lie in 0..{self.T}")
            vals = torch.from_numpy(self.abar[idx.numpy()])
            vals = vals.to(device=like.device, dtype=like.dtype)
            return vals.reshape(-1, *([1] * (like.dim() - 1))) if vals.dim() else vals
        return torch.tensor(self.abar[self._check_step(t)], dtype=like.dtype, device=like.device)

    # -- forward process -------------------------------------------------------------------
    def flip_probability(self, t: int, s: int = 0) -> float:
        """Probability that a bit differs between z_s and z_t (s < t): ``(1 - abar_t/abar_s)/2``."""
        t, s = self._check_step(t), self._check_step(s, "s")
        if s > t:
            raise ValueError(f"need s <= t, got s={s}, t={t}")
        return float((1.0 - self.abar[t] / self.abar[s]) / 2.0)

    def q_sample(
        self,
        z0: torch.Tensor,
        t,
        generator: torch.Generator | None = None,
        s=0,
    ) -> torch.Tensor:
        """Noise ``z_s`` to step ``t``: ``z_t = z_s XOR Bernoulli((1 - abar_t/abar_s)/2)``.

        ``t`` (and ``s``) are ints or (B,) tensors of 1-based steps. With the default ``s = 0``
        this is Eq. (2) of the paper; jumps compose exactly (0 -> s -> t equals 0 -> t).
        """
        work = z0.float() if not z0.is_floating_point() else z0
        a = self._abar_tensor(t, work.double()) / self._abar_tensor(s, work.double())
        flip = ((1.0 - a) / 2.0).to(work.dtype)
        u = torch.rand(work.shape, generator=generator, device=work.device, dtype=work.dtype)
        eps = (u < flip).to(work.dtype)
        return (work + eps) % 2  # XOR on {0,1}

    # -- posterior -------------------------------------------------------------------------
    def posterior(self, z_t: torch.Tensor, x0: torch.Tensor, t, s=None) -> torch.Tensor:
        """``P(z_s = 1 | z_t, x0)`` for a jump t -> s < t (docs/method.md §3).

        ``x0`` may be continuous in [0, 1]. ``s`` defaults to ``t - 1`` (the ordinary step).
        Computed in float64 internally for accuracy, returned in ``z_t``'s floating dtype.
        """
        out_dtype = z_t.dtype if z_t.is_floating_point() else torch.float32
        zt = z_t.double()
        x = x0.double()
        if s is None:
            if isinstance(t, torch.Tensor):
                s = t - 1
            else:
                s = int(t) - 1
        abar_t = self._abar_tensor(t, zt)
        abar_s = self._abar_tensor(s, zt)
        if isinstance(t, torch.Tensor) or isinstance(s, torch.Tensor):
            # compare the steps, not abar: s == t has abar_s == abar_t and must be refused too
            if bool(torch.any(torch.as_tensor(s).cpu() >= torch.as_tensor(t).cpu())):
                raise ValueError("posterior needs s < t for every item")
        elif not int(s) < int(t):
            raise ValueError(f"posterior needs s < t, got s={s}, t={t}")
        a = abar_t / abar_s
        b = abar_s
        th1 = (a * zt + (1 - a) / 2) * (b * x + (1 - b) / 2)
        th0 = (a * (1 - zt) + (1 - a) / 2) * (b * (1 - x) + (1 - b) / 2)
        return (th1 / (th1 + th0)).to(out_dtype)


def step_grid(L: int, S: int | None = None) -> list[int]:
    """The steps the sampler visits from ``L`` down: ``[t_1 = L, ..., t_S, 0]``.

    With ``S = L`` (default) every step ``L, L-1, ..., 1`` followed by 0. With ``S < L`` an evenly
    spaced integer grid (``round(linspace(L, 0, S + 1))``); consecutive entries are the jumps
    ``t -> s`` the sampler takes with the exact strided posterior.
    """
    L = int(L)
    if L < 1:
        raise ValueError(f"noise level L must be >= 1, got {L}")
    S = L if S is None else int(S)
    if not 1 <= S <= L:
        raise ValueError(f"step count S must lie in 1..L={L}, got {S}")
    grid = np.rint(np.linspace(L, 0, S + 1)).astype(int).tolist()
    assert len(set(grid)) == len(grid), grid  # spacing >= 1 when S <= L
    return grid
