"""``berdiff calibrate MODEL PREPARED_DIR (--out FILE | --in-place)``: calibrated thresholds.

Runs the model over the validation split of a prepared directory at the deployment settings
(L, P, S, seed as ``berdiff detect`` uses them) and writes a copy of the checkpoint whose
``meta["calibration"]`` holds the thresholds of the filtered anomaly map at the chosen
false-positive rates of healthy foreground pixels, the whole FPR curve, the Dice-optimal
threshold where labelled diseased slices exist, and how they were obtained
(:mod:`napari_berdiff.core.evaluation.calibrate`). The input file is never changed unless
``--in-place`` (then it is replaced atomically, through a temporary file).
"""

from __future__ import annotations

import math
from pathlib import Path

from ..core.inference.settings import DEFAULT_FPR, DEFAULTS, POST
from . import model_args


def register(sub) -> None:
    p = sub.add_parser("calibrate", help="store thresholds at chosen false-positive rates of "
                                         "healthy validation slices in a copy of a checkpoint")
    p.add_argument("model", metavar="MODEL", help="the checkpoint to calibrate (never changed "
                                                  "unless --in-place)")
    p.add_argument("prepared", metavar="PREPARED_DIR", help="a prepared dataset directory; its "
                                                            "validation split is used")
    dest = p.add_mutually_exclusive_group(required=True)
    dest.add_argument("--out", metavar="FILE", help="write the calibrated checkpoint here")
    dest.add_argument("--in-place", action="store_true",
                      help="replace MODEL (atomically) by its calibrated version")
    p.add_argument("--fpr", type=float, nargs="+", default=[DEFAULT_FPR], metavar="F",
                   help=f"false-positive rates to store thresholds for (share of healthy "
                        f"foreground pixels; default {DEFAULT_FPR:g}); the first is the default "
                        "of berdiff detect")
    model_args.add_sampling_args(p, f"sampler steps S (default min({DEFAULTS.steps}, L), as "
                                    "berdiff detect)")
    p.add_argument("--max-slices", type=int, default=None,
                   help="at most N validation slices (evenly spaced over the split)")
    p.add_argument("--from", dest="geometry", choices=("auto", "raw", "prepared"), default="auto",
                   help="raw: run the raw inputs the validation split was prepared from (its "
                        "meta.json 'source') exactly as berdiff detect runs them, so that the "
                        "thresholds are on the scale of detect's maps (full resolution); "
                        "prepared: the prepared slices at the model's size (quicker, but not on "
                        "that scale); auto (default): raw when the source folder exists")
    p.add_argument("--min-size", type=int, default=POST.min_size,
                   help="components smaller than this are removed (Dice-optimal threshold)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    model_args.add_speed_args(p)
    model_args.add_batch_size_arg(p)
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out FILE")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def _check(args) -> None:
    from . import CLIError

    for f in args.fpr:
        if not (math.isfinite(f) and 0.0 < f < 1.0):
            raise CLIError(f"--fpr must lie in (0, 1), got {f}")
    if args.L < 1:
        raise CLIError(f"--L must be at least 1, got {args.L}")
    if args.steps is not None and not 1 <= args.steps <= args.L:
        raise CLIError(f"--steps must lie in 1..L={args.L}, got {args.steps}")
    model_args.check_run_args(args)
    if args.max_slices is not None and args.max_slices < 1:
        raise CLIError(f"--max-slices must be at least 1, got {args.max_slices}")
    if args.out is not None:
        out, src = Path(args.out), Path(args.model)
        if out.exists() and src.exists() and out.resolve() == src.resolve():
            raise CLIError("--out is MODEL itself; pass --in-place to replace it")
        if out.is_dir():
            raise CLIError(f"--out {out} is a folder: give the file name to write")
        if out.exists() and not args.overwrite:
            raise CLIError(f"{out} exists; pass --overwrite to replace it")


def _describe(cal, dest) -> str:
    s = cal.source
    lines = [f"calibrated on {s['n_healthy_slices']} healthy of {s['n_slices']} validation slices "
             f"({s['n_pixels']:,} foreground pixels; {s['geometry'].split(':')[0]} geometry) at "
             f"L={s['L']}, P={s['P']:g}, S={s['steps']}, seed {s['seed']}:"]
    for f, t in sorted(cal.thresholds.items()):
        star = " (default of berdiff detect)" if f == cal.default_fpr else ""
        lines.append(f"  threshold {t:.4g} at FPR {f:.3g}{star}")
    d = cal.dice_optimal
    if d:
        lines.append(f"  Dice-optimal threshold {d['threshold']:.4g} (Dice {d['dice']:.3f} on "
                     f"{d['n_slices']} labelled slices, {d['n_diseased']} diseased; healthy FPR "
                     f"{d['fpr']:.3g})")
    else:
        lines.append("  no Dice-optimal threshold (no labelled diseased validation slices)")
    r = cal.slice_range
    if r:
        lines.append(f"  axial slices {r['first']}..{r['last']} of {r['depth']}-slice volumes "
                     "(berdiff detect runs this range of such volumes by default)")
    lines.append(f"wrote {dest}")
    return "\n".join(lines)


def _raw_root(args, val):
    """The raw data folder to calibrate on (None: the prepared slices), said on stderr."""
    import sys

    from . import CLIError

    src = (val.meta or {}).get("source")
    root = Path(src) if src else None
    if root is not None and not root.is_absolute():
        root = Path(args.prepared) / root
    found = root is not None and root.is_dir()
    if args.geometry == "raw" and not found:
        raise CLIError(f"--from raw: the raw data of {args.prepared} ({src or 'not recorded'}) "
                       "is not there; pass --from prepared")
    if args.geometry == "prepared" or not found:
        why = "as asked" if args.geometry == "prepared" else (
            f"the raw data ({src or 'not recorded'}) is not there")
        print(f"berdiff calibrate: note: calibrating on the prepared slices at the model's size "
              f"({why}); berdiff detect's maps of full-resolution inputs are on another scale, "
              "so their FPR can differ", file=sys.stderr)
        return None
    print(f"berdiff calibrate: note: calibrating on the raw inputs of the validation split "
          f"({root}), run as berdiff detect runs them", file=sys.stderr)
    return root


def run(args) -> int:
    from src_training.train.datasets import load_eval_split

    from ..core.evaluation.calibrate import calibrate
    from ..core.evaluation.report import pick_slices
    from ..core.inference.calibration import CALIBRATION_KEY
    from ..core.models.checkpoint import load_checkpoint, weights_sha256
    from ..core.models.export import write_meta
    from . import CLIError

    _check(args)
    ck = load_checkpoint(args.model)
    if ck.ae_config is None or ck.unet_config is None:
        raise CLIError(f"{args.model} needs both an autoencoder and a U-Net to be calibrated")
    val = load_eval_split(args.prepared, "val", decode=False)
    if len(val) == 0:
        raise CLIError(f"{args.prepared} has an empty validation split; nothing to calibrate on")
    val = val.subset(pick_slices(len(val), args.max_slices))
    args.bundled = None
    det = model_args.load_detector(args)
    if int(val.images.shape[1]) != det.in_channels:
        raise CLIError(f"{args.prepared} has {val.images.shape[1]} channel(s) but the model "
                       f"expects {det.in_channels}")
    if args.L > det.max_L:
        raise CLIError(f"--L {args.L} is beyond the noise levels this model was trained for "
                       f"(L <= {det.max_L})")
    steps = min(args.steps if args.steps is not None else DEFAULTS.steps, args.L)
    root = _raw_root(args, val)
    bar = model_args.progress_bar("calibrate", disable=args.no_progress)
    try:
        cal = calibrate(det, val, L=args.L, P=args.P, steps=steps, seed=args.seed,
                        batch_size=args.batch_size, fprs=args.fpr, min_size=args.min_size,
                        source_root=root,
                        source={"prepared": str(Path(args.prepared).resolve()),
                                "model_sha256": ck.sha256, "weights_sha256": weights_sha256(ck)},
                        progress=bar.update_to)
    finally:
        bar.close()
    dest = Path(args.model) if args.in_place else Path(args.out)
    try:
        write_meta(args.model, dest, {CALIBRATION_KEY: cal.to_meta()}, overwrite=args.overwrite)
    except FileExistsError as err:  # appeared while calibrating
        raise CLIError(str(err)) from None
    print(_describe(cal, dest))
    return 0
