"""Benchmark: re-segmenting a kept anomaly map at a new absolute threshold (a threshold slider).

    .venv/bin/python benchmarks/bench_threshold.py                 # the default shapes
    .venv/bin/python benchmarks/bench_threshold.py --repeats 50 --json out.json

For each slice shape (BraTS 4 x 240 x 240, an OCT B-scan 1 x 496 x 512, a 1 x 128 x 128 image)
it times, with :class:`napari_berdiff.core.inference.triage.KeptMaps` on a realistic map (smooth
healthy error plus a lesion):

* ``first``: the first threshold on a slice: the 5x5 median filter per channel, the comparison and
  the connected-component pass (what a slider move costs on a slice not shown before);
* ``move``: every later move on that slice (comparison + components; the filtered map is
  cached), at thresholds spread over the map's range, and the FPR lookup beside it.

Times are medians (and the slowest) over ``--repeats`` moves, in milliseconds, one thread. No
model is run: the cost does not depend on the weights. The target is < 100 ms per move.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

SHAPES = {"brats 4x240x240": (4, 240, 240), "oct 1x496x512": (1, 496, 512),
          "image 1x128x128": (1, 128, 128)}


def case(shape, seed=0):
    """(x, rec) of one slice: smooth tissue, a reconstruction with a small error everywhere and a
    lesion the reconstruction misses."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    c, h, w = shape
    x = ndimage.gaussian_filter(rng.random((c, h, w)), (0, 6, 6)).astype(np.float32)
    x = (x - x.min()) / (x.max() - x.min())
    rec = np.clip(x + 0.03 * rng.standard_normal(x.shape), 0, 1).astype(np.float32)
    yy, xx = np.mgrid[:h, :w]
    lesion = (yy - h / 3) ** 2 + (xx - w / 2) ** 2 < (min(h, w) / 10) ** 2
    x[:, lesion] = np.clip(x[:, lesion] + 0.4, 0, 1)
    return x[None], rec[None]


def bench(shape, repeats: int) -> dict:
    from napari_berdiff.core.inference.calibration import Calibration
    from napari_berdiff.core.inference.triage import KeptMaps

    x, rec = case(shape)
    cal = Calibration.from_values(np.random.default_rng(1).gamma(1.0, 0.002, 200_000))
    firsts, moves, lookups = [], [], []
    for _ in range(max(3, repeats // 10)):
        kept = KeptMaps(x, rec, calibration=cal)
        t0 = time.perf_counter()
        kept.segment(0, 0.05)
        firsts.append(time.perf_counter() - t0)
    amap = kept.map(0)
    thresholds = np.quantile(amap, np.linspace(0.5, 0.999, repeats))
    for t in thresholds:
        t0 = time.perf_counter()
        kept.segment(0, float(t))
        moves.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        kept.fpr(float(t))
        lookups.append(time.perf_counter() - t0)

    def ms(v):
        return {"median_ms": 1e3 * float(np.median(v)), "max_ms": 1e3 * float(np.max(v))}

    return {"first": ms(firsts), "move": ms(moves), "fpr_lookup": ms(lookups),
            "moves": len(moves)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    out = {name: bench(shape, args.repeats) for name, shape in SHAPES.items()}
    print("| slice | first threshold on a slice (filter + segment) | each later move | FPR lookup |")
    print("|---|---|---|---|")
    for name, r in out.items():
        print(f"| {name} | {r['first']['median_ms']:.1f} ms (max {r['first']['max_ms']:.1f}) | "
              f"{r['move']['median_ms']:.2f} ms (max {r['move']['max_ms']:.2f}) | "
              f"{r['fpr_lookup']['median_ms']:.3f} ms |")
    worst = max(r["move"]["max_ms"] for r in out.values())
    print(f"slowest move: {worst:.1f} ms (target < 100 ms); the first threshold on a slice also "
          "filters it (KeptMaps.precompute() does that for all slices once, after the run)")
    import os

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"load average at the end: {load:.1f} on {os.cpu_count()} CPU(s) (others' work slows "
          "every figure)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
