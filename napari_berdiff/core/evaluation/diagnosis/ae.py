"""Does the autoencoder reproduce anomalies? PSNR of healthy vs diseased slices, AE only.

Prints the AE-only PSNR of the healthy and diseased slices of a split, their gap, the diseased
slices' PSNR with the anomaly's pixels left out ("the anomaly itself costs X dB") and the squared
error inside vs outside the anomalies (docs/training.md).
"""

from __future__ import annotations

import numpy as np
import torch

from ..metrics import psnr
from ..report import pick_slices


def _nanmean(values) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


def measure(ck, split, info: dict, max_slices: int | None, batch: int, seed: int) -> dict:
    """The figures of ``ck``'s autoencoder on at most ``max_slices`` slices of ``split`` (evenly
    spaced); ``info`` (checkpoint, data, split names) leads the returned dict."""
    ae = ck.build_autoencoder("cpu")
    s = split.subset(pick_slices(len(split), max_slices))
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
    out = {**info, "slices": int(len(v)), "healthy": int(h.size), "diseased": int(d.size),
           "psnr_healthy": _nanmean(h), "psnr_diseased": _nanmean(d),
           "psnr_diseased_without_anomaly": _nanmean(without),
           "err_in_anomaly": _nanmean(inside), "err_outside_anomaly": _nanmean(outside)}
    out["gap_db"] = out["psnr_healthy"] - out["psnr_diseased"]
    out["anomaly_cost_db"] = out["psnr_diseased_without_anomaly"] - out["psnr_diseased"]
    out["err_ratio"] = out["err_in_anomaly"] / out["err_outside_anomaly"] if outside else float("nan")
    return out


def report(r: dict) -> str:
    """The printed summary of :func:`measure`'s figures."""
    return "\n".join([
        f"{r['checkpoint']}: {r['slices']} {r['split']} slices ({r['healthy']} healthy, "
        f"{r['diseased']} diseased)",
        f"  PSNR healthy {r['psnr_healthy']:.2f} dB, diseased {r['psnr_diseased']:.2f} dB, "
        f"gap {r['gap_db']:+.2f} dB",
        f"  PSNR diseased with the anomaly's pixels left out {r['psnr_diseased_without_anomaly']:.2f}"
        f" dB: the anomaly itself costs {r['anomaly_cost_db']:.2f} dB",
        f"  squared error in anomalies {r['err_in_anomaly']:.4f} vs rest of the image "
        f"{r['err_outside_anomaly']:.4f} (ratio {r['err_ratio']:.2f})",
    ])
