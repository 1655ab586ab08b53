"""Is the mask or the healing the bottleneck? The sampler with the true anomaly as its mask.

Masked sampling can fail in two ways: the U-Net does not flag the anomaly's bits (``eps_hat > P``
rarely fires there), or, where they are masked, its prediction ``x0_hat`` does not replace the
anomaly with healthy content (the noise at level L leaves too much of the anomaly in ``z_L``, or
the U-Net cannot inpaint). This separates the two on the diseased slices of a prepared split: it
runs docs/method.md §5's steps with the mask fixed to the latent cells that touch the labelled anomaly
(grown by ``--dilate`` cells, 4-connected; all channels) instead of the ``eps_hat > P`` mask,
and prints the paper-protocol Dice and AUPRC next to the autoencoder alone, masked sampling at P and unmasked
sampling, all from the same codes. Oracle well above masked: the mask is what fails. Oracle
near the autoencoder alone: the healing fails (try a larger L).

    .venv/bin/python benchmarks/oracle_mask.py napari_berdiff/weights/brats_small.pt \
        data/prep_brats128_heldout --max-slices 40 --L 200 --threads 1
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import binary_dilation

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.diseased_slices import cell_fraction, load_diseased, parse, parser  # noqa: E402
from napari_berdiff.core.evaluation.metrics import paper_slice_metrics  # noqa: E402
from napari_berdiff.core.diffusion.sampler import binary_posterior, masked_sampler, run_sampler  # noqa: E402
from napari_berdiff.core.diffusion.schedule import step_grid  # noqa: E402


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


def measure(ckpt_path: str, data: str, split: str, max_slices: int | None, L: int, steps: int,
            P: float, dilate: int, batch: int, seed: int) -> dict:
    ck, s, factor = load_diseased(ckpt_path, data, split, max_slices)
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
    return {"checkpoint": ckpt_path, "data": data, "split": split, "slices": len(s), "L": L,
            "steps": steps, "P": P, "dilate": dilate, "oracle_cell_fraction": float(np.mean(cell_frac)),
            "rows": rows}


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__, max_slices=40, batch=8)
    ap.add_argument("--L", type=int, default=200)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--dilate", type=int, default=1, help="grow the oracle mask by N latent cells")
    a = parse(ap, argv)
    res = measure(a.model, a.data, a.split, a.max_slices, a.L, a.steps, a.P, a.dilate, a.batch,
                  a.seed)
    print(f"{res['checkpoint']} on {res['slices']} diseased slices of {a.data} ({a.split}); "
          f"L={a.L}, S={a.steps}; oracle mask = {100 * res['oracle_cell_fraction']:.1f}% of the "
          f"latent cells")
    print("| method | Dice (paper) | AUPRC (paper) |\n|---|---|---|")
    for r in res["rows"]:
        print(f"| {r['method']} | {r['dice']:.3f} | {r['auprc']:.3f} |")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
