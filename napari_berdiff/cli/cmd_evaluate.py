"""``berdiff evaluate PREPARED_DIR --model CKPT``: the method and its baselines on a test split.

Runs :func:`napari_berdiff.core.evaluation.evaluate.evaluate` (paper and strict protocols, image-level
AUROC, PSNR on healthy and diseased slices, time and memory; baselines unmasked, autoencoder only
and intensity threshold), prints the Markdown table and, with ``--out``, writes
``evaluation.json``, ``evaluation.csv``, ``evaluation.md`` and ``per_slice.csv`` (existing files are
kept unless ``--overwrite``; this is checked before the run starts).
"""

from __future__ import annotations

import sys

from . import model_args


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="evaluate a model and the baselines on a prepared "
                                        "test split (Dice, AUPRC, AUROC, PSNR, ...)")
    p.add_argument("prepared", metavar="PREPARED_DIR", help="a prepared dataset directory")
    model_args.add_model_args(p)
    model_args.add_sampling_args(
        p, "sampler steps S <= L (default L; 20 matched 200 within 0.012 Dice)")
    model_args.add_batch_size_arg(p, default=8)
    p.add_argument("--max-slices", type=int, default=None,
                   help="evaluate at most N test slices (evenly spaced over the split)")
    p.add_argument("--max-val-slices", type=int, default=None,
                   help="at most N validation slices for the thresholds (default: --max-slices)")
    p.add_argument("--no-val", action="store_true",
                   help="skip the validation split (no strict Dice, no threshold-baseline Dice)")
    p.add_argument("--baselines", nargs="*", default=["unmasked", "ae_only", "threshold"],
                   choices=["unmasked", "ae_only", "threshold"])
    model_args.add_postprocess_args(p, ["min_size"])
    p.add_argument("--brain-mask", action="store_true",
                   help="score only pixels inside the brain (input > 0); default: whole slice")
    p.add_argument("--timing-slices", type=int, default=2,
                   help="slices timed alone at batch size 1 per method (0: skip)")
    p.add_argument("--source", default=None,
                   help="raw data folder, for the per-kind breakdown of synthetic BraTS cases "
                        "(default: the prepared meta's source)")
    p.add_argument("--out", default=None, help="folder for the JSON/CSV/Markdown reports")
    p.add_argument("--overwrite", action="store_true", help="replace existing report files")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def load_splits(prepared, max_slices, max_val_slices, use_val: bool = True):
    """Test and validation splits (stored uint8, subset evenly) of a prepared directory."""
    from src_training.train.datasets import load_eval_split

    from ..core.evaluation.report import pick_slices

    test = load_eval_split(prepared, "test", decode=False)
    if len(test) == 0:
        from . import CLIError

        raise CLIError(f"{prepared} has an empty test split; nothing to evaluate")
    test = test.subset(pick_slices(len(test), max_slices))
    val = None
    if use_val:
        val = load_eval_split(prepared, "val", decode=False)
        val = val.subset(pick_slices(len(val), max_val_slices if max_val_slices is not None
                                     else max_slices))
    return test, val


def run(args) -> int:
    from ..core.io.outputs import check_outputs
    from ..core.evaluation.report import (anomaly_kinds, markdown_table, report_files,
                                          write_reports)
    from . import CLIError

    if args.out:  # before any slow import or work
        check_outputs(report_files(args.out).values(), args.overwrite)
    from ..core.evaluation.evaluate import evaluate

    if args.steps is not None and not 1 <= args.steps <= args.L:
        raise CLIError(f"--steps must lie in 1..L={args.L}")
    model_args.check_run_args(args)
    test, val = load_splits(args.prepared, args.max_slices, args.max_val_slices, not args.no_val)
    det = model_args.load_detector(args)
    if int(test.images.shape[1]) != det.in_channels:
        raise CLIError(f"{args.prepared} has {test.images.shape[1]} channel(s) "
                       f"({', '.join(test.meta.get('channels', []))}) but the model expects "
                       f"{det.in_channels}")
    bar = model_args.progress_bar("evaluate", disable=args.no_progress)
    try:
        results = evaluate(det, test, val, L=args.L, P=args.P, steps=args.steps, seed=args.seed,
                           batch_size=model_args.resolve_batch_size(det, args.batch_size),
                           baselines=tuple(args.baselines),
                           min_size=args.min_size, brain_mask=args.brain_mask,
                           timing_slices=args.timing_slices,
                           kinds=anomaly_kinds(test, args.source),
                           progress=bar.update_to)
    finally:
        bar.close()
    results["config"]["prepared"] = str(args.prepared)
    results["config"]["checkpoint"] = str(args.model or f"bundled:{args.bundled}")
    results["config"]["command"] = " ".join(sys.argv)
    print(markdown_table(results))
    if args.out:
        files = write_reports(results, args.out, overwrite=args.overwrite)
        print("reports: " + ", ".join(str(p) for p in files.values()))
    return 0
