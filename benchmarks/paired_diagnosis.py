"""Does the mask find the anomaly? Paired diagnosis on generated anomalies and their healthy twins.

A diseased input and its pseudo-healthy twin (the same generated subject with and without the
lesion: ``synth-brats`` subjects of the same seed, ``synth-oct`` B-scans with ``twin=True``) are
encoded with the model's autoencoder (deterministically, ``p > 0.5``). The bits where the two codes
differ are what the diffusion model should flag and restore ("anomaly bits"); bits in latent cells
that touch no anomaly pixel and agree in both codes are "healthy bits". Two levels:

- one U-Net call at noise level t (the diseased code noised to t): over the bits the noise left
  alone, the mean flip probability ``eps_hat`` on anomaly vs healthy bits, the share above P (what
  the sampler's first step masks) and their AUROC; and how many of the noise flips it recognises;
- the whole masked sampler (L, P, S as in the detector) from the diseased code: the share of
  anomaly / healthy bits in the final mask, the share of anomaly bits restored to the healthy
  twin's value, and whether the masked fraction ranks the diseased input above its twin
  (the paired image-level AUROC: the share of pairs where it does, ties counting half).

    python benchmarks/paired_diagnosis.py napari_berdiff/weights/brats_small.pt --kind brats
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from napari_berdiff.core.inference import preprocess
from napari_berdiff.core.models.checkpoint import load_checkpoint
from napari_berdiff.core.synth.brain import make_case
from napari_berdiff.core.synth.oct import make_bscan
from napari_berdiff.core.inference.detector import Detector, normalize_stack
from napari_berdiff.core.evaluation.metrics import auroc
from napari_berdiff.core.diffusion.sampler import masked_sampler, run_sampler

CHANNELS = ("flair", "t1", "t1ce", "t2")


def _seeds(base: int, n: int) -> list[int]:
    return [int(np.random.SeedSequence([base, k]).generate_state(1)[0]) for k in range(n)]


def brats_pairs(n_subjects: int, per_subject: int, seed: int, kind: str = "tumour",
                size=(240, 240, 155)):
    """(diseased, twin, label) slice stacks (N, 4, H, W) / (N, H, W): axial slices through the
    lesion (evenly spaced over those with >= 0.5% of the slice labelled), per-volume normalised."""
    xs, hs, ls = [], [], []
    for s in _seeds(seed, n_subjects):
        sick, well = make_case(s, kind, size=size), make_case(s, "healthy", size=size)
        seg = sick["seg"] > 0
        area = seg.sum(axis=(0, 1))
        cand = np.flatnonzero(area >= 0.005 * seg.shape[0] * seg.shape[1])
        if len(cand) == 0:
            continue
        pick = cand[np.linspace(0, len(cand) - 1, min(per_subject, len(cand))).round().astype(int)]
        vols = []
        for case in (sick, well):
            v = np.stack([case[c] for c in CHANNELS]).astype(np.float32)
            vols.append(normalize_stack(v, "percentile", channel_axis=0))
        xs.append(np.moveaxis(vols[0][..., pick], -1, 0))
        hs.append(np.moveaxis(vols[1][..., pick], -1, 0))
        ls.append(np.moveaxis(seg[..., pick], -1, 0))
    return np.concatenate(xs), np.concatenate(hs), np.concatenate(ls)


def oct_pairs(n: int, seed: int):
    """(diseased, twin, label) B-scans (N, 1, 496, 512) / (N, 496, 512)."""
    xs, hs, ls = [], [], []
    for s in _seeds(seed, n):
        img, mask, _ = make_bscan(s, True)
        twin, _, _ = make_bscan(s, True, twin=True)
        xs.append(img[None])
        hs.append(twin[None])
        ls.append(mask > 0)
    return np.stack(xs), np.stack(hs), np.stack(ls)


def _codes(det: Detector, x: np.ndarray, geom) -> torch.Tensor:
    with torch.inference_mode():
        xb = preprocess.to_model(torch.from_numpy(np.ascontiguousarray(x)), geom)
        return (det.autoencoder.encode(xb).float() > 0.5).float()


def _cells(labels: np.ndarray, geom, h: int) -> np.ndarray:
    """(N, h, h) bool: latent cells touched by the label (after the model's geometry)."""
    lab = torch.from_numpy(labels[:, None].astype(np.float32))
    lab = preprocess.to_model(lab, geom)
    return (torch.nn.functional.adaptive_max_pool2d(lab, h)[:, 0] > 0.05).numpy()


def make_pairs(kind: str, n: int, per_subject: int, seed: int, cache: str | None = None):
    """The pairs of :func:`oct_pairs` / :func:`brats_pairs`, read from or written to the
    ``.npz`` file ``cache`` when given (generating BraTS-like subjects takes seconds each)."""
    if cache and Path(cache).is_file():
        d = np.load(cache)
        return d["x"], d["h"], d["lab"]
    x, h, lab = oct_pairs(n, seed) if kind == "oct" else brats_pairs(n, per_subject, seed, kind)
    if cache:
        np.savez_compressed(cache, x=x, h=h, lab=lab)
    return x, h, lab


def measure(model: str, kind: str, n: int, per_subject: int, ts: list[int], L: int,
            Ps: list[float], steps: int, seed: int, cache: str | None = None) -> dict:
    ck = load_checkpoint(model)
    det = Detector.from_checkpoint(ck, device="cpu")
    t0 = time.perf_counter()
    x, h, lab = make_pairs(kind, n, per_subject, seed, cache)
    gen_s = time.perf_counter() - t0
    spacing = (1.0, 1.0) if kind != "oct" else None
    geom = preprocess.plan(x.shape[-2:], det.image_size, det.preprocess_mode, det.canvas_for(spacing))
    za, zh = _codes(det, x, geom), _codes(det, h, geom)
    side = za.shape[-1]
    lesion = torch.from_numpy(_cells(lab, geom, side))[:, None].expand_as(za)
    diff = za != zh
    healthy = (~lesion) & ~diff
    out = {"model": model, "kind": kind, "pairs": int(len(x)), "anomaly_bits": int(diff.sum()),
           "anomaly_bits_share": float(diff.float().mean()), "generate_s": round(gen_s, 1),
           "unet": [], "sampler": []}
    gen = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        for t in ts:
            if t > det.max_L:
                continue
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
            out["unet"].append(row)
        both = torch.cat([za, zh])
        thresholds = [0.0] + [float(P) for P in Ps]
        res = run_sampler(masked_sampler(det.unet.flip_prob, both, det.schedule, L, thresholds,
                                         steps=steps, seeds=list(range(2 * len(x)))))
        K, N = len(thresholds), len(x)
        z0 = res.z0.view(2 * N, K, *za.shape[1:])
        masks = res.mask.view(2 * N, K, *za.shape[1:]) if res.mask is not None else None
        frac = res.masked_fraction.view(2 * N, K)
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
            out["sampler"].append(row)
    return out


def print_report(r: dict) -> None:
    print(f"{r['model']}: {r['pairs']} {r['kind']} pairs, anomaly bits "
          f"{r['anomaly_bits']} ({r['anomaly_bits_share']:.2%} of all bits)")
    Ps = [k[len("over_P"):-len("_anomaly")] for k in r["unet"][0] if k.endswith("_anomaly")
          and k.startswith("over_P")] if r["unet"] else []
    print("| t | noise rate | eps_hat anomaly / healthy | AUROC | "
          + " | ".join(f"> P={p} anomaly / healthy | noise flips > {p}" for p in Ps) + " |")
    print("|---" * (4 + 2 * len(Ps)) + "|")
    for u in r["unet"]:
        cells = [f"{u[f'over_P{p}_anomaly']:.3f} / {u[f'over_P{p}_healthy']:.3f} | "
                 f"{u['noise_recall'][p]:.3f}" for p in Ps]
        print(f"| {u['t']} | {u['noise_rate']:.3f} | {u['eps_anomaly']:.3f} / "
              f"{u['eps_healthy']:.3f} | {u['auroc']:.3f} | " + " | ".join(cells) + " |")
    print("\n| sampler L, P | mask anomaly / healthy bits | anomaly bits restored | healthy bits "
          "kept | masked fraction diseased / twin | paired AUROC |")
    print("|---|---|---|---|---|---|")
    for s in r["sampler"]:
        m = (f"{s['mask_anomaly']:.3f} / {s['mask_healthy']:.3f}" if "mask_anomaly" in s else "all")
        f = (f"{s['masked_fraction_diseased']:.3f} / {s['masked_fraction_twin']:.3f} | "
             f"{s['paired_auroc']:.2f}" if "paired_auroc" in s else "n/a | n/a")
        print(f"| {s['L']}, {s['P']:g} | {m} | {s['restored_anomaly']:.3f} | "
              f"{s['kept_healthy']:.3f} | {f} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="diffusion checkpoint (model.pt, last.pt or a bundled file)")
    ap.add_argument("--kind", default="tumour", choices=("tumour", "cavity", "ventricle", "oct"),
                    help="BraTS-like lesion kind, or oct (drusen)")
    ap.add_argument("--pairs", type=int, default=8, help="subjects (BraTS) or B-scans (OCT) (8)")
    ap.add_argument("--per-subject", type=int, default=5, help="BraTS slices per subject (5)")
    ap.add_argument("--t", type=int, nargs="+", default=[50, 200])
    ap.add_argument("--L", type=int, default=200)
    ap.add_argument("--P", type=float, nargs="+", default=[0.3, 0.5])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--seed", type=int, default=24680, help="held-out seeds (default 24680)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--pairs-cache", default=None, metavar="NPZ",
                    help="keep the generated pairs in this file and reuse them (same settings!)")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    r = measure(a.model, a.kind, a.pairs, a.per_subject, a.t, a.L, a.P, a.steps, a.seed, a.pairs_cache)
    print_report(r)
    if a.json:
        Path(a.json).write_text(json.dumps(r, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
