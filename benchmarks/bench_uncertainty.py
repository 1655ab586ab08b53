"""Uncertainty: what K stochastic reconstructions per slice gain in AUPRC, and what they cost.

For a trained model and the test split of a prepared directory, runs the detector with K = each of
``--K`` samples per slice (:class:`napari_berdiff.core.inference.uncertainty.Sampled`; the K
copies share the network calls) and prints, per K:

* AUPRC pooled over every pixel-labelled test pixel of the filtered map of the mean
  reconstruction (the map ``berdiff detect --samples K`` writes; comparable across slices) and
  the gain over K = 1;
* the paper protocol's mean AUPRC and Dice over the diseased slices;
* the pooled AUPRC of the spread itself (does the uncertainty point at the anomaly?);
* seconds per slice and the cost over K = 1 (same process, same slices).

    .venv/bin/python benchmarks/bench_uncertainty.py data/prep_brats128_heldout --bundled brats \\
        --K 1 4 8 --max-slices 60 --threads 1 --json docs/results/uncertainty_brats.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("prepared")
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--model")
    g.add_argument("--bundled", choices=("brats", "oct"))
    ap.add_argument("--K", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--L", type=int, default=200)
    ap.add_argument("--P", type=float, default=0.5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-slices", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=32, help="trajectories per network call")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None)
    return ap.parse_args(argv)


def run_k(det, test, K: int, a) -> dict:
    from napari_berdiff.core.evaluation.splits import as_float, pixel_labelled
    from napari_berdiff.core.evaluation.metrics import auprc, paper_slice_metrics
    from napari_berdiff.core.inference.postprocess import paper_anomaly_map
    from napari_berdiff.core.inference.uncertainty import Sampled

    sd = Sampled(det, K)
    lab = pixel_labelled(test)
    diseased = ~np.asarray(test.healthy, bool) & lab
    maps, spreads, ys, paper = [], [], [], []
    t = 0.0
    chunk = max(1, a.batch_size // K)
    for s in range(0, len(test), chunk):
        e = min(s + chunk, len(test))
        x = as_float(test.images[s:e])
        t0 = time.perf_counter()
        res = sd.detect(x, L=a.L, P=[a.P], steps=a.steps, seed=a.seed, indices=list(range(s, e)),
                        batch_size=a.batch_size, normalize="none", skip_empty=False)
        t += time.perf_counter() - t0
        m = paper_anomaly_map(x, res.reconstruction[0])
        y = np.asarray(test.labels[s:e]).astype(bool)
        for i in range(e - s):
            if not lab[s + i]:
                continue
            maps.append(m[i].ravel())
            spreads.append(res.spread[0, i].ravel())
            ys.append(y[i].ravel())
            if diseased[s + i]:
                paper.append(paper_slice_metrics(x[i], res.reconstruction[0, i], y[i], amap=m[i]))
    y_all = np.concatenate(ys)
    return {"K": K, "auprc_pooled": auprc(np.concatenate(maps), y_all),
            "auprc_spread": auprc(np.concatenate(spreads), y_all) if K > 1 else float("nan"),
            "paper_auprc": float(np.nanmean([p["auprc"] for p in paper])),
            "paper_dice": float(np.nanmean([p["dice"] for p in paper])),
            "seconds_per_slice": t / len(test), "n_slices": len(test),
            "n_diseased": int(diseased.sum())}


def main(argv=None) -> int:
    a = parse(argv)
    import torch

    from napari_berdiff.cli.cmd_evaluate import load_splits
    from napari_berdiff.core.inference.detector import Detector
    from napari_berdiff.weights import bundled_path

    if a.threads:
        torch.set_num_threads(a.threads)
    path = a.model or bundled_path(a.bundled)
    det = Detector.from_checkpoint(str(path), device=a.device)
    test, _ = load_splits(a.prepared, a.max_slices, None, use_val=False)
    rows = [run_k(det, test, K, a) for K in sorted(set(a.K))]
    base = rows[0]
    print(f"{path}: {a.prepared} test split, {base['n_slices']} slices ({base['n_diseased']} "
          f"diseased), L={a.L}, P={a.P}, S={a.steps}, {torch.get_num_threads()} thread(s)")
    print("| K | AUPRC pooled | gain vs K=1 | AUPRC (paper) | Dice (paper) | AUPRC of the spread "
          "| s / slice | cost vs K=1 |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        r["gain_pct"] = 100.0 * (r["auprc_pooled"] / base["auprc_pooled"] - 1.0)
        r["cost_x"] = r["seconds_per_slice"] / base["seconds_per_slice"]
        spread = "n/a" if r["K"] == 1 else f"{r['auprc_spread']:.3f}"
        print(f"| {r['K']} | {r['auprc_pooled']:.3f} | {r['gain_pct']:+.1f}% | "
              f"{r['paper_auprc']:.3f} | {r['paper_dice']:.3f} | {spread} | "
              f"{r['seconds_per_slice']:.2f} | {r['cost_x']:.1f}x |")
    if a.json:
        Path(a.json).write_text(json.dumps({"model": str(path), "prepared": a.prepared,
                                            "settings": vars(a), "rows": rows}, indent=2,
                                           default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
