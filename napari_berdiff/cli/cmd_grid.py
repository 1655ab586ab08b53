"""``berdiff grid PREPARED_DIR --model CKPT --L 50 100 200 --P 0.1 0.3 0.5 --out DIR``: the paper's
Fig. 3 on your data.

Each L is one detector sweep over all P; writes ``grid.csv``, ``grid_dice.png``,
``masked_fraction_box.png``, ``grid_slices.csv`` and ``grid.json`` into ``--out`` (docs/cli.md),
keeping existing files unless ``--overwrite``.
"""

from __future__ import annotations

import csv
import io
import json
import sys

from ..core.inference.settings import DEFAULTS, GRID_L, GRID_P
from . import model_args

FILES = ("grid.csv", "grid_dice.png", "masked_fraction_box.png", "grid_slices.csv", "grid.json")


def register(sub) -> None:
    p = sub.add_parser("grid", help="Dice over a grid of L and P and masked-fraction box plots "
                                    "(paper Fig. 3)")
    p.add_argument("prepared", metavar="PREPARED_DIR")
    model_args.add_model_args(p)
    p.add_argument("--L", type=int, nargs="+", default=list(GRID_L))
    p.add_argument("--P", type=float, nargs="+", default=list(GRID_P))
    p.add_argument("--steps", type=int, default=None, help="sampler steps (min(S, L); default L)")
    p.add_argument("--seed", type=int, default=DEFAULTS.seed)
    model_args.add_batch_size_arg(p, default=10)
    p.add_argument("--max-slices", type=int, default=None, help="at most N test slices")
    model_args.add_postprocess_args(p, ["min_size"])
    p.add_argument("--box-L", type=int, default=None,
                   help=f"the L of the box plots (default: the grid's L closest to {DEFAULTS.L})")
    p.add_argument("--out", required=True)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def _plots(res: dict, files: dict, box_L: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    Ls, Ps = res["Ls"], res["Ps"]
    grid = np.array([[c["dice"] for c in res["cells"] if c["L"] == L] for L in Ls])
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(Ps), 1.0 + 0.7 * len(Ls)))
    im = ax.imshow(grid, cmap="viridis", aspect="auto", origin="lower")
    ax.set_xticks(range(len(Ps)), [f"{p:g}" for p in Ps])
    ax.set_yticks(range(len(Ls)), [str(v) for v in Ls])
    ax.set_xlabel("threshold P")
    ax.set_ylabel("noise level L")
    ax.set_title("Dice (paper protocol)")
    for i in range(len(Ls)):
        for j in range(len(Ps)):
            v = grid[i, j]
            ax.text(j, i, "n/a" if not np.isfinite(v) else f"{v:.3f}", ha="center", va="center",
                    color="w", fontsize=8)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(files["grid_dice.png"], dpi=120)
    plt.close(fig)

    li = Ls.index(box_L)
    frac, healthy = res["slices"]["masked_fraction"][li], res["slices"]["healthy"]
    fig, ax = plt.subplots(figsize=(1.5 + 1.3 * len(Ps), 3.5))
    data, pos, colors = [], [], []
    for j in range(len(Ps)):
        for d, (sel, col) in enumerate(((healthy, "tab:blue"), (~healthy, "tab:red"))):
            data.append(frac[j][sel] if sel.any() else np.array([np.nan]))
            pos.append(3 * j + d)
            colors.append(col)
    bp = ax.boxplot(data, positions=pos, widths=0.8, patch_artist=True, showfliers=False)
    for patch, col in zip(bp["boxes"], colors):
        patch.set_facecolor(col)
        patch.set_alpha(0.6)
    ax.set_xticks([3 * j + 0.5 for j in range(len(Ps))], [f"P={p:g}" for p in Ps])
    ax.set_ylabel("masked fraction")
    ax.set_title(f"L={box_L}: healthy (blue) vs diseased (red) slices")
    fig.tight_layout()
    fig.savefig(files["masked_fraction_box.png"], dpi=120)
    plt.close(fig)


def run(args) -> int:
    from pathlib import Path

    from ..core.io.atomic import AtomicFiles
    from ..core.io.outputs import check_outputs
    from . import CLIError

    out = Path(args.out)
    files = {name: out / name for name in FILES}
    check_outputs(files.values(), args.overwrite)  # before any slow import or work
    from ..core.diffusion.thresholds import unique_ps
    from ..core.evaluation.grid import grid_sweep
    from ..core.io.jsonable import to_jsonable
    from .cmd_evaluate import load_splits

    Ls, Ps = sorted(set(args.L)), unique_ps(args.P)
    if min(Ls) < 1:
        raise CLIError("--L values must be >= 1")
    model_args.check_run_args(args)
    box_L = args.box_L if args.box_L is not None else min(Ls, key=lambda v: abs(v - DEFAULTS.L))
    if box_L not in Ls:
        raise CLIError(f"--box-L {box_L} is not among --L {Ls}")
    test, _ = load_splits(args.prepared, args.max_slices, None, use_val=False)
    det = model_args.load_detector(args)
    if int(test.images.shape[1]) != det.in_channels:
        raise CLIError(f"{args.prepared} has {test.images.shape[1]} channel(s) but the model "
                       f"expects {det.in_channels}")
    bar = model_args.progress_bar("grid", disable=args.no_progress)
    try:
        res = grid_sweep(det, test, Ls, Ps, steps=args.steps, seed=args.seed,
                         batch_size=model_args.resolve_batch_size(det, args.batch_size),
                         min_size=args.min_size,
                         progress=bar.update_to)
    finally:
        bar.close()
    sl = res["slices"]
    info = {k: v for k, v in res.items() if k != "slices"} | {
        "box_L": box_L, "prepared": str(args.prepared), "n_slices": len(sl["healthy"]),
        "checkpoint": str(args.model or f"bundled:{args.bundled}"), "command": " ".join(sys.argv),
        "model_hash": det.model_hash}
    out.mkdir(parents=True, exist_ok=True)
    with AtomicFiles() as af:
        tmp = {name: af.temp(path) for name, path in files.items()}
        tmp["grid.csv"].write_text(_cells_csv(res["cells"], to_jsonable))
        tmp["grid_slices.csv"].write_text(_slices_csv(sl, Ls, Ps))
        tmp["grid.json"].write_text(json.dumps(to_jsonable(info), indent=2) + "\n")
        _plots(res, tmp, box_L)
    _print_table(res["cells"], Ls, Ps)
    print("outputs: " + ", ".join(str(p) for p in files.values()))
    return 0


def _cells_csv(cells: list[dict], to_jsonable) -> str:
    """``grid.csv``: one row per (L, P) cell."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(cells[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(to_jsonable(cells))
    return buf.getvalue()


def _slices_csv(sl: dict, Ls: list[int], Ps: list[float]) -> str:
    """``grid_slices.csv``: the masked fraction and Dice of every slice at every (L, P)."""
    import numpy as np

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["L", "P", "case_id", "slice_index", "healthy", "masked_fraction", "dice"])
    for li, L in enumerate(Ls):
        for k, P in enumerate(Ps):
            for i in range(len(sl["healthy"])):
                d = sl["dice"][li, k, i]
                w.writerow([L, P, sl["case_id"][i], int(sl["slice_index"][i]),
                            bool(sl["healthy"][i]), float(sl["masked_fraction"][li, k, i]),
                            "" if not np.isfinite(d) else float(d)])
    return buf.getvalue()


def _print_table(cells: list[dict], Ls: list[int], Ps: list[float]) -> None:
    """The Dice grid as a Markdown table on stdout."""
    import numpy as np

    print("| L \\ P | " + " | ".join(f"{p:g}" for p in Ps) + " |")
    print("|---|" + "---|" * len(Ps))
    for L in Ls:
        row = [c for c in cells if c["L"] == L]
        print(f"| {L} | " + " | ".join("n/a" if not np.isfinite(c["dice"]) else f"{c['dice']:.3f}"
                                      for c in row) + " |")
