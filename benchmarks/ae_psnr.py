"""Does the autoencoder reproduce anomalies? PSNR of healthy vs diseased slices, AE only.

docs/method.md §8: the method needs an autoencoder that reconstructs diseased slices about as well as healthy
ones, otherwise its blur, not the diffusion model, does the detecting. This prints the AE-only
PSNR (docs/method.md §8, whole slice) of the healthy and the diseased slices of a prepared split, their
gap, the diseased slices' PSNR with the anomaly's pixels left out (the gap also holds what is not
the anomaly: diseased slices show more tissue than the healthy ones at the top and bottom of a
volume, so "the anomaly itself costs X dB" is the part the anomaly is to blame for), and the mean
squared error inside vs outside the labelled anomalies. It reads an
autoencoder file, a full model or a training ``last.pt`` (its EMA weights), so it can watch a
training run:

    .venv/bin/python benchmarks/ae_psnr.py runs/brats_ae/last.pt data/prep_brats128_heldout \
        --split val --max-slices 120 --threads 1
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from napari_berdiff.core.models.checkpoint import load_checkpoint  # noqa: E402
from napari_berdiff.core.evaluation.report import pick_slices  # noqa: E402
from napari_berdiff.core.evaluation.metrics import psnr  # noqa: E402
from src_training.train.datasets import load_eval_split  # noqa: E402


def measure(ckpt_path: str, data: str, split: str, max_slices: int | None, batch: int,
            seed: int) -> dict:
    ck = load_checkpoint(ckpt_path)
    ae = ck.build_autoencoder("cpu")
    s = load_eval_split(data, split)
    s = s.subset(pick_slices(len(s), max_slices))
    ck.check_channels(s.images.shape[1], f"{data} ({split})")
    gen = torch.Generator().manual_seed(seed)
    values, inside, outside, without = [], [], [], []
    with torch.no_grad():
        for i in range(0, len(s), batch):
            x = torch.from_numpy(np.ascontiguousarray(s.images[i:i + batch]))
            z = ae.sample_bits(ae.encode(x), generator=gen)
            rec = ae.decode(z).clamp(0, 1).numpy()
            for j in range(rec.shape[0]):
                xi, ri, lab = s.images[i + j], rec[j], s.labels[i + j].astype(bool)
                values.append(psnr(xi, ri))
                sq = (xi - ri) ** 2
                err = sq.sum(0)
                if lab.any():
                    # the same slice's PSNR (same peak) with the anomaly's pixels left out: what
                    # the gap would be if the anomaly were reproduced as well as the rest
                    mse_rest = float(sq[:, ~lab].mean())
                    without.append(20 * np.log10(float(xi.max()) / np.sqrt(max(mse_rest, 1e-12))))
                    inside.append(float(err[lab].mean()))
                    outside.append(float(err[~lab & (xi.max(0) > 0)].mean()))
    v = np.asarray(values)
    h, d = v[s.healthy], v[~s.healthy]
    out = {
        "checkpoint": str(ckpt_path), "data": str(data), "split": split, "slices": int(len(v)),
        "healthy": int(h.size), "diseased": int(d.size),
        "psnr_healthy": float(np.mean(h)) if h.size else float("nan"),
        "psnr_diseased": float(np.mean(d)) if d.size else float("nan"),
        "psnr_diseased_without_anomaly": float(np.mean(without)) if without else float("nan"),
        "err_in_anomaly": float(np.mean(inside)) if inside else float("nan"),
        "err_outside_anomaly": float(np.mean(outside)) if outside else float("nan"),
    }
    out["gap_db"] = out["psnr_healthy"] - out["psnr_diseased"]
    out["anomaly_cost_db"] = out["psnr_diseased_without_anomaly"] - out["psnr_diseased"]
    out["err_ratio"] = out["err_in_anomaly"] / out["err_outside_anomaly"] if outside else float("nan")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", help="autoencoder.pt, a full model or a training last.pt")
    ap.add_argument("data", help="prepared directory with val/test splits")
    ap.add_argument("--split", default="val", choices=["val", "test"])
    ap.add_argument("--max-slices", type=int, default=None, help="evenly spaced subset")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None, help="also write the figures here")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    r = measure(a.checkpoint, a.data, a.split, a.max_slices, a.batch_size, a.seed)
    print(f"{r['checkpoint']}: {r['slices']} {a.split} slices ({r['healthy']} healthy, "
          f"{r['diseased']} diseased)")
    print(f"  PSNR healthy {r['psnr_healthy']:.2f} dB, diseased {r['psnr_diseased']:.2f} dB, "
          f"gap {r['gap_db']:+.2f} dB")
    print(f"  PSNR diseased with the anomaly's pixels left out {r['psnr_diseased_without_anomaly']:.2f}"
          f" dB: the anomaly itself costs {r['anomaly_cost_db']:.2f} dB")
    print(f"  squared error in anomalies {r['err_in_anomaly']:.4f} vs rest of the image "
          f"{r['err_outside_anomaly']:.4f} (ratio {r['err_ratio']:.2f})")
    if a.json:
        Path(a.json).write_text(json.dumps(r, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
