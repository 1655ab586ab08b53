"""The (L, P) grid of the paper's Fig. 3: paper-protocol Dice over noise levels and thresholds,
and the masked fraction of healthy vs diseased slices. Each L is one detector sweep over all P
(one batch per chunk of slices)."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from .splits import as_float, n_ticks, pixel_labelled
from .metrics import image_auroc, paper_slice_metrics, summarize
from ..inference.settings import DEFAULTS, POST

__all__ = ["grid_sweep"]


def grid_sweep(detector, split, Ls: Sequence[int], Ps: Sequence[float], *, steps: int | None = None,
               seed: int = DEFAULTS.seed, batch_size: int = 8, min_size: int = POST.min_size,
               median_size: int = POST.median_size,
               chunk_size: int | None = None,
               progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Run the detector at every L with all P in one sweep; returns ``{"cells": [...],
    "slices": {...}}``. A cell: L, P, paper Dice and AUPRC (mean, std over diseased pixel-labelled
    slices), image AUROC of the masked fraction and its median on healthy/diseased slices.
    ``slices`` holds per-slice masked fractions ``(len(Ls), len(Ps), N)`` and Dice values."""
    Ls, Ps = [int(v) for v in Ls], [float(v) for v in Ps]
    N = len(split)
    healthy = np.asarray(split.healthy, bool)
    scored = ~healthy & pixel_labelled(split)
    per = max(1, batch_size // len(Ps))
    chunk = int(chunk_size or 4 * per)
    total = _total_ticks(Ls, len(Ps), N, chunk, steps, batch_size)
    done = [0]

    def tick(_):
        done[0] += 1
        if progress is not None:
            progress(done[0], total)

    frac = np.full((len(Ls), len(Ps), N), np.nan)
    dice = np.full((len(Ls), len(Ps), N), np.nan)
    auprc = np.full((len(Ls), len(Ps), N), np.nan)
    for li, L in enumerate(Ls):
        S = None if steps is None else min(int(steps), L)
        for a in range(0, N, chunk):
            b = min(a + chunk, N)
            x = as_float(split.images[a:b])
            res = detector.detect(x, L=L, P=Ps, steps=S, seed=seed, indices=list(range(a, b)),
                                  batch_size=batch_size, normalize="none", progress=tick,
                                  skip_empty=False)
            frac[li, :, a:b] = res.masked_fraction
            labels = np.asarray(split.labels[a:b])
            for i in range(b - a):
                if not scored[a + i]:
                    continue
                for k in range(len(Ps)):
                    r = paper_slice_metrics(x[i], res.reconstruction[k, i], labels[i],
                                            median_size=median_size, min_size=min_size)
                    dice[li, k, a + i], auprc[li, k, a + i] = r["dice"], r["auprc"]
    cells = _cells(Ls, Ps, frac, dice, auprc, healthy, scored)
    return {"Ls": Ls, "Ps": Ps, "steps": steps, "seed": int(seed), "min_size": int(min_size),
            "cells": cells, "slices": {"masked_fraction": frac, "dice": dice,
                                       "healthy": healthy, "case_id": np.asarray(split.case_id),
                                       "slice_index": np.asarray(split.slice_index)}}


def _total_ticks(Ls: list[int], n_p: int, N: int, chunk: int, steps: int | None,
                 batch_size: int) -> int:
    """The progress ticks of the whole grid: sampler steps of every batch at every L."""
    from ..diffusion.schedule import step_grid

    total = 0
    for L in Ls:
        S = len(step_grid(L, None if steps is None else min(steps, L))) - 1
        total += sum(n_ticks(min(chunk, N - a), n_p, batch_size, S) for a in range(0, N, chunk))
    return total


def _cells(Ls, Ps, frac, dice, auprc, healthy, scored) -> list[dict[str, Any]]:
    """One summary row per (L, P) from the per-slice arrays."""
    cells = []
    for li, L in enumerate(Ls):
        for k, P in enumerate(Ps):
            d, ap = summarize(dice[li, k, scored]), summarize(auprc[li, k, scored])
            f = frac[li, k]
            cells.append({"L": L, "P": P, "dice": d["mean"], "dice_std": d["std"],
                          "auprc": ap["mean"], "auprc_std": ap["std"], "n_diseased": d["n"],
                          "image_auroc_fraction": image_auroc(f, ~healthy),
                          "fraction_healthy_median": float(np.median(f[healthy]))
                          if healthy.any() else float("nan"),
                          "fraction_diseased_median": float(np.median(f[~healthy]))
                          if (~healthy).any() else float("nan")})
    return cells
