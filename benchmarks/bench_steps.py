"""Few-step sampling: accuracy and cost of S strided steps against S = L.

Prints per (S, P) Dice, AUPRC, image AUROC, network evaluations and time (docs/benchmarks.md)::

    .venv/bin/python benchmarks/bench_steps.py data/prep_brats128_heldout --bundled brats \
        --L 200 --steps 200 100 50 20 10 --P 0.3 0.5 --max-slices 40 --out docs/results/steps_brats
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("prepared")
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--model")
    g.add_argument("--bundled", choices=("brats", "oct"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--L", type=int, default=200)
    ap.add_argument("--steps", type=int, nargs="+", default=[200, 100, 50, 20, 10])
    ap.add_argument("--P", type=float, nargs="+", default=[0.3, 0.5])
    ap.add_argument("--max-slices", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None)
    return ap.parse_args(argv)


def main(argv=None) -> int:
    a = parse(argv)
    import torch

    from napari_berdiff.cli.cmd_evaluate import load_splits
    from napari_berdiff.core.inference.detector import Detector
    from napari_berdiff.core.evaluation.grid import grid_sweep
    from napari_berdiff.weights import bundled_path

    if a.threads:
        torch.set_num_threads(a.threads)
    path = a.model or bundled_path(a.bundled)
    det = Detector.from_checkpoint(str(path), device=a.device)
    test, _ = load_splits(a.prepared, a.max_slices, None, use_val=False)
    Ss = sorted({min(int(s), a.L) for s in a.steps}, reverse=True)
    rows = []
    for S in Ss:
        t0 = time.perf_counter()
        res = grid_sweep(det, test, [a.L], a.P, steps=S, seed=a.seed, batch_size=a.batch_size)
        wall = time.perf_counter() - t0
        for c in res["cells"]:
            rows.append({"L": a.L, "S": S, "P": c["P"], "dice": c["dice"], "dice_std": c["dice_std"],
                         "auprc": c["auprc"], "image_auroc": c["image_auroc_fraction"],
                         "n_diseased": c["n_diseased"], "evals_per_trajectory": S,
                         "wall_s": wall, "s_per_slice": wall / len(test.healthy)})
        print(f"S={S:4d}: {wall:7.1f} s for {len(test.healthy)} slices x {len(a.P)} P", flush=True)
    ref = {r["P"]: r for r in rows if r["S"] == Ss[0]}
    for r in rows:
        r["dice_minus_ref"] = r["dice"] - ref[r["P"]]["dice"]
        r["auprc_minus_ref"] = r["auprc"] - ref[r["P"]]["auprc"]
        r["speedup"] = ref[r["P"]]["wall_s"] / r["wall_s"]
    head = (f"| S | P | Dice | AUPRC | image AUROC | Dice - (S={Ss[0]}) | AUPRC - (S={Ss[0]}) | "
            "network evals | s / slice (all P) | speed-up |")
    lines = [f"L = {a.L}, {len(test.healthy)} test slices ({ref[a.P[0]]['n_diseased']} diseased), "
             f"model {Path(str(path)).name} ({det.model_hash}), device {det.device}", "", head,
             "|" + "---|" * 10]
    for r in rows:
        lines.append(f"| {r['S']} | {r['P']:g} | {r['dice']:.3f} | {r['auprc']:.3f} | "
                     f"{r['image_auroc']:.3f} | {r['dice_minus_ref']:+.3f} | "
                     f"{r['auprc_minus_ref']:+.3f} | {r['S']} | {r['s_per_slice']:.2f} | "
                     f"{r['speedup']:.1f}x |")
    md = "\n".join(lines) + "\n"
    print(md)
    if a.out:
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "steps.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        (out / "steps.md").write_text(md)
        (out / "steps.json").write_text(json.dumps({"command": " ".join(sys.argv), "rows": rows},
                                                   indent=1, default=float))
        _plot(rows, a.P, out / "steps.png")
    return 0


def _plot(rows, Ps, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8, 3.2))
    for P in Ps:
        rs = [r for r in rows if r["P"] == P]
        ax1.plot([r["S"] for r in rs], [r["dice"] for r in rs], "o-", label=f"P={P:g}")
    rs = [r for r in rows if r["P"] == Ps[0]]
    ax2.plot([r["S"] for r in rs], [r["s_per_slice"] for r in rs], "o-k")
    for ax, lab in ((ax1, "Dice (paper protocol)"), (ax2, "s / slice (all P, CPU)")):
        ax.set_xscale("log")
        ax.set_xlabel("sampler steps S")
        ax.set_ylabel(lab)
    ax1.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
