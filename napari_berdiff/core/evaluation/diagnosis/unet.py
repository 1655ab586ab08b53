"""Does the U-Net see the anomaly? Its flip probabilities on the anomaly's bits vs the healthy bits.

Noises the deterministic codes of the diseased slices to each t and compares, over the bits the
noise left alone, ``eps_hat`` in latent cells inside the anomaly with cells that touch none:
AUROC, the shares above P and how many noise flips it recognises (docs/training.md).
"""

from __future__ import annotations

import numpy as np
import torch

from ..metrics import auroc
from .slices import cell_fraction


def cell_labels(labels: np.ndarray, factor: int) -> np.ndarray:
    """Per latent cell of a (B, H, W) pixel mask: 1 inside the anomaly (>= half the cell's pixels
    labelled), 0 healthy (no labelled pixel), -1 partial (left out)."""
    frac = cell_fraction(labels, factor)
    out = np.full(frac.shape, -1, dtype=np.int8)
    out[frac >= 0.5] = 1
    out[frac == 0] = 0
    return out


def split_bits(eps: np.ndarray, z: np.ndarray, z_t: np.ndarray, cells: np.ndarray, P: float):
    """From one batch: the ``eps_hat`` of the bits the noise left alone in anomaly or healthy
    cells, whether each is an anomaly bit, and (hits, count) of ``eps_hat > P`` over the bits the
    noise flipped. ``eps``, ``z``, ``z_t``: (B, C, h, w); ``cells``: (B, h, w) from
    :func:`cell_labels`."""
    flipped = z_t != z
    cells = np.broadcast_to(cells[:, None], eps.shape)
    keep = ~flipped & (cells >= 0)
    return eps[keep], cells[keep] == 1, int((eps[flipped] > P).sum()), int(flipped.sum())


def _row(t: int, schedule, sc: np.ndarray, an: np.ndarray, P: float, noise_hits: int,
         noise_n: int) -> dict:
    return {
        "t": t, "flip_probability": schedule.flip_probability(t),
        "auroc": auroc(sc, an),
        "eps_anomaly": float(sc[an].mean()), "eps_healthy": float(sc[~an].mean()),
        "mask_rate_anomaly": float((sc[an] > P).mean()),
        "mask_rate_healthy": float((sc[~an] > P).mean()),
        "noise_recall": noise_hits / max(noise_n, 1),
        "anomaly_bits": int(an.sum()), "healthy_bits": int((~an).sum()),
    }


def measure(ck, s, factor: int, info: dict, ts: list[int], P: float, batch: int,
            seed: int) -> dict:
    """The figures per noise level in ``ts`` on the diseased slices ``s`` (latent cells of
    ``factor`` pixels); ``info`` (checkpoint, data, split names) leads the returned dict."""
    ae, unet, schedule = ck.build_autoencoder("cpu"), ck.build_unet("cpu"), ck.build_schedule()
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for t in ts:
        scores, is_anom, noise_hits, noise_n = [], [], 0, 0
        with torch.inference_mode():
            for i in range(0, len(s), batch):
                x = torch.from_numpy(np.ascontiguousarray(s.images[i:i + batch]))
                z = (ae.encode(x) > 0.5).float()
                z_t = schedule.q_sample(z, t, generator=gen)
                eps = unet.flip_prob(z_t, t).numpy()
                cells = cell_labels(s.labels[i:i + batch].astype(bool), factor)
                sc, an, hits, n = split_bits(eps, z.numpy(), z_t.numpy(), cells, P)
                scores.append(sc)
                is_anom.append(an)
                noise_hits, noise_n = noise_hits + hits, noise_n + n
        rows.append(_row(t, schedule, np.concatenate(scores), np.concatenate(is_anom), P,
                         noise_hits, noise_n))
    return {**info, "slices": len(s), "P": P, "cell_pixels": factor, "rows": rows}


def report(res: dict) -> str:
    """The printed table of :func:`measure`'s figures."""
    lines = [f"{res['checkpoint']} on {res['slices']} diseased slices of {res['data']} "
             f"({res['split']}); latent cell = {res['cell_pixels']}x{res['cell_pixels']} pixels; "
             "bits the noise left alone:",
             "| t | noise flips | AUROC anomaly vs healthy | eps_hat anomaly / healthy | "
             f"masked (eps_hat > {res['P']}) anomaly / healthy | noise flips recognised |",
             "|---|---|---|---|---|---|"]
    for r in res["rows"]:
        lines.append(f"| {r['t']} | {r['flip_probability']:.3f} | {r['auroc']:.3f} | "
                     f"{r['eps_anomaly']:.3f} / {r['eps_healthy']:.3f} | "
                     f"{r['mask_rate_anomaly']:.3f} / {r['mask_rate_healthy']:.3f} | "
                     f"{r['noise_recall']:.3f} |")
    return "\n".join(lines)
