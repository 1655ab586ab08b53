"""Is the mask or the healing the bottleneck? The sampler with the true anomaly as its mask.

Runs Algorithm 1 (docs/method.md §5) with the mask fixed to the latent cells that touch the
labelled anomaly and prints Dice and AUPRC next to the autoencoder alone, masked and unmasked
sampling from the same codes. Oracle well above masked: the mask fails; oracle near the
autoencoder alone: the healing fails (docs/training.md).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.ndimage import binary_dilation

from ...diffusion.sampler import binary_posterior, masked_sampler, run_sampler
from ...diffusion.schedule import step_grid
from ..metrics import paper_slice_metrics
from .slices import cell_fraction


def fixed_mask_sample(model, z: torch.Tensor, mask: torch.Tensor, schedule, L: int, steps: int,
                      generator: torch.Generator) -> torch.Tensor:
    """Algorithm 1 with the mask fixed to ``mask`` (bool, like ``z``) from the first step: bits
    outside it keep ``z``'s value, bits inside it follow the U-Net's ``x0_hat``."""
    z_t = schedule.q_sample(z, L, generator=generator)
    grid = step_grid(L, steps)
    for t, s in zip(grid[:-1], grid[1:]):
        x0 = torch.where(mask, (z_t - model(z_t, t)).abs(), z)
        prob = binary_posterior(schedule, z_t, x0, t, s) if s > 0 else x0
        z_t = torch.bernoulli(prob, generator=generator)
    return z_t


def anomaly_cells(labels: np.ndarray, factor: int, dilate: int) -> np.ndarray:
    """(B, h, w) bool: latent cells with any labelled pixel, dilated by ``dilate`` cells."""
    cells = cell_fraction(labels, factor) > 0
    if dilate > 0:
        cells = np.stack([binary_dilation(c, iterations=dilate) for c in cells])
    return cells


def measure(ck, s, factor: int, info: dict, L: int, steps: int, P: float, dilate: int,
            batch: int, seed: int) -> dict:
    """Dice and AUPRC of the four methods on the diseased slices ``s`` (latent cells of
    ``factor`` pixels); ``info`` (checkpoint, data, split names) leads the returned dict."""
    ae, unet, schedule = ck.build_autoencoder("cpu"), ck.build_unet("cpu"), ck.build_schedule()
    gen = torch.Generator().manual_seed(seed)
    methods = ("autoencoder only", f"masked (P={P:g})", "oracle mask", "unmasked (P=0)")
    scores = {m: {"dice": [], "auprc": []} for m in methods}
    cell_frac = []
    with torch.inference_mode():
        for i in range(0, len(s), batch):
            x = torch.from_numpy(np.ascontiguousarray(s.images[i:i + batch]))
            labels = s.labels[i:i + batch].astype(bool)
            z = ae.sample_bits(ae.encode(x), generator=gen)
            cells = anomaly_cells(labels, factor, dilate)
            cell_frac.append(float(cells.mean()))
            mask = torch.from_numpy(cells)[:, None].expand_as(z)
            out = run_sampler(masked_sampler(unet.flip_prob, z, schedule, L, [P, 0.0], steps=steps,
                                             seeds=seed + i))
            codes = {methods[0]: z, methods[1]: out.z0[0::2], methods[3]: out.z0[1::2],
                     methods[2]: fixed_mask_sample(unet.flip_prob, z, mask, schedule, L, steps, gen)}
            for m, code in codes.items():
                rec = ae.decode(code).clamp(0, 1).numpy()
                for j in range(rec.shape[0]):
                    r = paper_slice_metrics(s.images[i + j], rec[j], labels[j])
                    scores[m]["dice"].append(r["dice"])
                    scores[m]["auprc"].append(r["auprc"])
    rows = [{"method": m, "dice": float(np.mean(v["dice"])), "auprc": float(np.nanmean(v["auprc"]))}
            for m, v in scores.items()]
    return {**info, "slices": len(s), "L": L, "steps": steps, "P": P, "dilate": dilate,
            "oracle_cell_fraction": float(np.mean(cell_frac)), "rows": rows}


def report(res: dict) -> str:
    """The printed table of :func:`measure`'s figures."""
    lines = [f"{res['checkpoint']} on {res['slices']} diseased slices of {res['data']} "
             f"({res['split']}); L={res['L']}, S={res['steps']}; oracle mask = "
             f"{100 * res['oracle_cell_fraction']:.1f}% of the latent cells",
             "| method | Dice (paper) | AUPRC (paper) |\n|---|---|---|"]
    lines += [f"| {r['method']} | {r['dice']:.3f} | {r['auprc']:.3f} |" for r in res["rows"]]
    return "\n".join(lines)
