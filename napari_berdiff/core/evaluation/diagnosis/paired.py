"""Does the mask find the anomaly? Paired diagnosis on generated anomalies and their healthy twins.

The bits where the deterministic codes of a diseased input and its twin differ are "anomaly bits";
bits in cells away from the anomaly that agree are "healthy bits". Reports one U-Net call at each
t and the whole masked sampler: masks, restored bits and the paired image-level AUROC
(docs/benchmarks.md).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ...diffusion.sampler import masked_sampler, run_sampler
from ...inference import preprocess
from ...inference.detector import Detector
from ...models.checkpoint import load_checkpoint
from ..metrics import auroc
from .pairs import make_pairs


def _codes(det: Detector, x: np.ndarray, geom) -> torch.Tensor:
    with torch.inference_mode():
        xb = preprocess.to_model(torch.from_numpy(np.ascontiguousarray(x)), geom)
        return (det.autoencoder.encode(xb).float() > 0.5).float()


def _cells(labels: np.ndarray, geom, h: int) -> np.ndarray:
    """(N, h, h) bool: latent cells touched by the label (after the model's geometry)."""
    lab = torch.from_numpy(labels[:, None].astype(np.float32))
    lab = preprocess.to_model(lab, geom)
    return (torch.nn.functional.adaptive_max_pool2d(lab, h)[:, 0] > 0.05).numpy()


def _unet_row(det, za, diff, healthy, lesion, t: int, Ps, gen) -> dict:
    """One U-Net call on the diseased codes noised to ``t``."""
    z_t = det.schedule.q_sample(za, t, generator=gen)
    eps = det.unet.flip_prob(z_t, t)
    kept = z_t == za
    flipped = ~kept
    a, hb = eps[diff & kept], eps[healthy & kept]
    row = {"t": t, "noise_rate": det.schedule.flip_probability(t),
           "eps_anomaly": float(a.mean()), "eps_healthy": float(hb.mean()),
           "auroc": auroc(np.concatenate([a.numpy(), hb.numpy()]),
                          np.r_[np.ones(a.numel(), bool), np.zeros(hb.numel(), bool)]),
           "noise_recall": {}}
    for P in Ps:
        row[f"over_P{P:g}_anomaly"] = float((a > P).float().mean())
        row[f"over_P{P:g}_healthy"] = float((hb > P).float().mean())
        nf = eps[flipped & ~lesion]
        row["noise_recall"][f"{P:g}"] = float((nf > P).float().mean())
    return row


def _sampler_rows(det, za, zh, diff, healthy, L: int, Ps, steps: int) -> list[dict]:
    """The whole masked sampler from the diseased codes and their twins, P = 0 and each P."""
    N = len(za)
    thresholds = [0.0] + [float(P) for P in Ps]
    res = run_sampler(masked_sampler(det.unet.flip_prob, torch.cat([za, zh]), det.schedule, L,
                                     thresholds, steps=steps, seeds=list(range(2 * N))))
    K = len(thresholds)
    z0 = res.z0.view(2 * N, K, *za.shape[1:])
    masks = res.mask.view(2 * N, K, *za.shape[1:]) if res.mask is not None else None
    frac = res.masked_fraction.view(2 * N, K)
    rows = []
    for k, P in enumerate(thresholds):
        zo = z0[:N, k]
        row = {"L": L, "P": P, "steps": steps,
               "restored_anomaly": float((zo == zh)[diff].float().mean()),
               "kept_healthy": float((zo == za)[healthy].float().mean())}
        if masks is not None and P > 0:
            m = masks[:N, k].bool()
            row.update(mask_anomaly=float(m[diff].float().mean()),
                       mask_healthy=float(m[healthy].float().mean()))
            fa, fh = frac[:N, k].numpy(), frac[N:, k].numpy()
            row.update(masked_fraction_diseased=float(fa.mean()),
                       masked_fraction_twin=float(fh.mean()),
                       paired_auroc=float(np.mean((fa > fh) + 0.5 * (fa == fh))))
        rows.append(row)
    return rows


def measure(model: str, kind: str, n: int, per_subject: int, ts: list[int], L: int,
            Ps: list[float], steps: int, seed: int, cache: str | None = None) -> dict:
    """The paired figures of the model file ``model`` on ``n`` generated pairs of ``kind``."""
    det = Detector.from_checkpoint(load_checkpoint(model), device="cpu")
    t0 = time.perf_counter()
    x, h, lab = make_pairs(kind, n, per_subject, seed, cache)
    gen_s = time.perf_counter() - t0
    if x.shape[1] != det.in_channels:
        raise ValueError(f"{kind} pairs have {x.shape[1]} channel(s) but {model} expects "
                         f"{det.in_channels}")
    spacing = (1.0, 1.0) if kind != "oct" else None
    geom = preprocess.plan(x.shape[-2:], det.image_size, det.preprocess_mode, det.canvas_for(spacing))
    za, zh = _codes(det, x, geom), _codes(det, h, geom)
    lesion = torch.from_numpy(_cells(lab, geom, za.shape[-1]))[:, None].expand_as(za)
    diff = za != zh
    healthy = (~lesion) & ~diff
    out = {"model": model, "kind": kind, "pairs": int(len(x)), "anomaly_bits": int(diff.sum()),
           "anomaly_bits_share": float(diff.float().mean()), "generate_s": round(gen_s, 1),
           "unet": [], "sampler": []}
    gen = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        out["unet"] = [_unet_row(det, za, diff, healthy, lesion, t, Ps, gen)
                       for t in ts if t <= det.max_L]
        out["sampler"] = _sampler_rows(det, za, zh, diff, healthy, L, Ps, steps)
    return out


def report(r: dict) -> str:
    """The printed tables of :func:`measure`'s figures."""
    lines = [f"{r['model']}: {r['pairs']} {r['kind']} pairs, anomaly bits "
             f"{r['anomaly_bits']} ({r['anomaly_bits_share']:.2%} of all bits)"]
    Ps = [k[len("over_P"):-len("_anomaly")] for k in r["unet"][0] if k.endswith("_anomaly")
          and k.startswith("over_P")] if r["unet"] else []
    lines.append("| t | noise rate | eps_hat anomaly / healthy | AUROC | "
                 + " | ".join(f"> P={p} anomaly / healthy | noise flips > {p}" for p in Ps) + " |")
    lines.append("|---" * (4 + 2 * len(Ps)) + "|")
    for u in r["unet"]:
        cells = [f"{u[f'over_P{p}_anomaly']:.3f} / {u[f'over_P{p}_healthy']:.3f} | "
                 f"{u['noise_recall'][p]:.3f}" for p in Ps]
        lines.append(f"| {u['t']} | {u['noise_rate']:.3f} | {u['eps_anomaly']:.3f} / "
                     f"{u['eps_healthy']:.3f} | {u['auroc']:.3f} | " + " | ".join(cells) + " |")
    lines.append("\n| sampler L, P | mask anomaly / healthy bits | anomaly bits restored | "
                 "healthy bits kept | masked fraction diseased / twin | paired AUROC |")
    lines.append("|---|---|---|---|---|---|")
    for s in r["sampler"]:
        m = (f"{s['mask_anomaly']:.3f} / {s['mask_healthy']:.3f}" if "mask_anomaly" in s else "all")
        f = (f"{s['masked_fraction_diseased']:.3f} / {s['masked_fraction_twin']:.3f} | "
             f"{s['paired_auroc']:.2f}" if "paired_auroc" in s else "n/a | n/a")
        lines.append(f"| {s['L']}, {s['P']:g} | {m} | {s['restored_anomaly']:.3f} | "
                     f"{s['kept_healthy']:.3f} | {f} |")
    return "\n".join(lines)
