"""Does the U-Net see the anomaly? Its flip probabilities on the anomaly's bits vs the healthy bits.

The masked sampler (docs/method.md §5) masks a bit when ``eps_hat > P``. It can only find an anomaly if the
U-Net, looking at a noised code ``z_t``, says "flipped" more often for the bits of the anomaly
(which a model of healthy codes should find improbable) than for healthy bits that were left
alone by the noise. This encodes the diseased slices of a prepared split (deterministically,
``prob > 0.5``), noises the codes to each ``t``, and over the bits the noise did NOT flip compares
``eps_hat`` in latent cells that lie inside the labelled anomaly (at least half of the cell's
pixels) with cells that touch no anomaly pixel:

- ``auroc``: AUROC of ``eps_hat`` for anomaly vs healthy bits (0.5: the U-Net is blind to it);
- ``mask_rate_anomaly`` / ``mask_rate_healthy``: fraction of those bits with ``eps_hat > P``;
- ``noise_recall``: fraction of the bits the noise did flip that have ``eps_hat > P`` (how well
  it recognises noise, which is what it was trained on).

It reads a full model or a diffusion run's ``last.pt`` (its EMA weights), so it can watch a
training run (about a minute on one CPU thread for 60 slices of a "small-f4" model):

    .venv/bin/python benchmarks/unet_anomaly.py napari_berdiff/weights/oct_small.pt \
        data/prep_oct128_heldout --split test --max-slices 60 --t 50 100 200 --threads 1
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.diseased_slices import cell_fraction, load_diseased, parse, parser  # noqa: E402
from napari_berdiff.core.evaluation.metrics import auroc  # noqa: E402


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


def measure(ckpt_path: str, data: str, split: str, max_slices: int | None, ts: list[int],
            P: float, batch: int, seed: int) -> dict:
    ck, s, factor = load_diseased(ckpt_path, data, split, max_slices)
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
        sc, an = np.concatenate(scores), np.concatenate(is_anom)
        rows.append({
            "t": t, "flip_probability": schedule.flip_probability(t),
            "auroc": auroc(sc, an),
            "eps_anomaly": float(sc[an].mean()), "eps_healthy": float(sc[~an].mean()),
            "mask_rate_anomaly": float((sc[an] > P).mean()),
            "mask_rate_healthy": float((sc[~an] > P).mean()),
            "noise_recall": noise_hits / max(noise_n, 1),
            "anomaly_bits": int(an.sum()), "healthy_bits": int((~an).sum()),
        })
    return {"checkpoint": ckpt_path, "data": data, "split": split, "slices": len(s), "P": P,
            "cell_pixels": factor, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__, max_slices=60, batch=16)
    ap.add_argument("--t", type=int, nargs="+", default=[50, 100, 200], help="noise levels")
    a = parse(ap, argv)
    res = measure(a.model, a.data, a.split, a.max_slices, a.t, a.P, a.batch, a.seed)
    print(f"{res['checkpoint']} on {res['slices']} diseased slices of {a.data} ({a.split}); "
          f"latent cell = {res['cell_pixels']}x{res['cell_pixels']} pixels; bits the noise left alone:")
    print("| t | noise flips | AUROC anomaly vs healthy | eps_hat anomaly / healthy | "
          f"masked (eps_hat > {a.P}) anomaly / healthy | noise flips recognised |")
    print("|---|---|---|---|---|---|")
    for r in res["rows"]:
        print(f"| {r['t']} | {r['flip_probability']:.3f} | {r['auroc']:.3f} | "
              f"{r['eps_anomaly']:.3f} / {r['eps_healthy']:.3f} | "
              f"{r['mask_rate_anomaly']:.3f} / {r['mask_rate_healthy']:.3f} | {r['noise_recall']:.3f} |")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
