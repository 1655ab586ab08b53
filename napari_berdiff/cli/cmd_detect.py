"""``berdiff detect INPUT... --out DIR``: headless anomaly detection over files and folders.

Inputs: BraTS case folders (4-channel models), NIfTI volumes (3D for 1-channel models, 4D with
channels last), 2D images (OCT; 1-channel models), or folders holding any of these (searched
recursively; the --out folder and earlier outputs are never taken for inputs). Outputs per input
(see :mod:`napari_berdiff.core.io.outputs`), named ``<stem>_berdiff_<kind>`` where ``<stem>`` mirrors
the input's path below the folder argument it was found in (an input given directly: its name):
anomaly map, segmentation mask and reconstruction (NIfTI with the source affine, or TIFF/PNG for
2D images), a per-slice scores CSV and a provenance JSON; for an OCT volume that carries pixel
annotations (drusen), ``<stem>_berdiff_reference.json`` with the Dice and AUPRC against them
(:mod:`napari_berdiff.core.evaluation.reference`), summed up in one printed line.

Safety: settings wrong for every input (L, steps, min-size, slices syntax, --out a file) end the
run with one line and exit status 2 before any input is read. Existing outputs are never replaced
without ``--overwrite`` (checked for every input before any work starts), and an input file never,
not even with it; files are written under temporary names and renamed when complete, so Ctrl-C or
SIGTERM (SLURM, torchrun) leaves no partial output: finished inputs are kept, the exit status is
130 (SIGINT) or 143 (SIGTERM). A failing input is reported on stderr in one line naming it and the
others still run; the exit status is 1 when some inputs failed and 2 when all did. When no input
can run at all (a missing path, an empty folder) the run ends with one line and exit status 2
before anything is created; an --out folder the run created stays only if something was written
into it. Mask folders of an OCT2017-style tree (``*_masks``) are skipped with a note.

Several processes: under ``torchrun --nproc_per_node=N berdiff detect ...`` (or with ``RANK`` and
``WORLD_SIZE`` set by hand) process ``RANK`` takes inputs ``[RANK::WORLD_SIZE]`` of the sorted input
list; no process group is created, and with ``--device auto`` each process uses
``cuda:LOCAL_RANK`` when CUDA is available. Output names do not depend on the split, so the
processes never collide.
"""

from __future__ import annotations

import os
import sys

from ..core.inference.settings import DEFAULTS
from . import model_args


def register(sub) -> None:
    p = sub.add_parser("detect", help="detect anomalies in NIfTI volumes, BraTS cases or OCT "
                                      "images and write maps, segmentations and scores")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="files or folders (NIfTI, BraTS case folders, DICOM series folders, "
                        "OCT volume exports, PNG/JPEG/TIFF images; docs/inputs.md)")
    p.add_argument("--out", required=True,
                   help="output folder (inputs found in folders keep their relative paths there)")
    model_args.add_model_args(p, optional=True)
    model_args.add_sampling_args(
        p, f"sampler steps S <= L (default min({DEFAULTS.steps}, L): 10x fewer network evaluations "
           "than S = L = 200 at the same Dice in our measurements; --steps L for every step)")
    p.add_argument("--samples", type=int, default=DEFAULTS.samples, metavar="K",
                   help="stochastic reconstructions per slice (default %(default)s): with K > 1 "
                        "the map, mask and scores come from their mean and <stem>_berdiff_spread "
                        "holds their per-pixel standard deviation (uncertainty); K x the network "
                        "evaluations, batched like a P sweep")
    model_args.add_batch_size_arg(p)
    p.add_argument("--slices", default=None, metavar="A:B",
                   help="only these axial slices, counted from the feet up in RAS order "
                        "(the last axis of a BraTS-style file; Python slice, e.g. 80:129)")
    p.add_argument("--all-slices", action="store_true",
                   help="run every axial slice of a volume even when the model's calibration "
                        "covers only a range of such volumes (by default that range runs)")
    model_args.add_postprocess_args(p)
    from ..core.io.readers import NAN_POLICIES

    p.add_argument("--nan-policy", choices=NAN_POLICIES, default="raise",
                   help="NaN/Inf voxels of a volume: raise (default: the input fails, saying how "
                        "many) or zero (replace them with 0)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def _one_line(text: str) -> str:
    lines = [ln.strip() for ln in str(text).strip().splitlines() if ln.strip()]
    return (lines[0] + (" ..." if len(lines) > 1 else "")) if lines else ""


def _reason(item, err: Exception) -> str:
    """One line for a failed input, to follow its path: a DataError's reason without the repeated
    ``[file: ...]`` (kept when it names another file), the input's path cut to its name."""
    from ..core.io.files import DataError

    if isinstance(err, DataError):
        text = _one_line(err.reason)
        if err.path is not None and err.path != item.path and err.path.name not in text:
            text += f" [file: {err.path}]"
    else:
        text = _one_line(err) or type(err).__name__
    if str(item.path) != item.path.name:
        text = text.replace(str(item.path), item.path.name)
    return text


def _check_settings(args) -> None:
    """Settings wrong for every input: one line, exit status 2, before anything is read."""
    import math

    from ..core.inference.calibration import effective_mode
    from ..core.io.discovery import check_slices_spec
    from . import CLIError

    if args.L < 1:
        raise CLIError(f"--L must be at least 1, got {args.L}")
    if args.steps is not None and not 1 <= args.steps <= args.L:
        raise CLIError(f"--steps must lie in 1..L={args.L}, got {args.steps}")
    model_args.check_run_args(args)
    if args.min_size < 0:
        raise CLIError(f"--min-size must be 0 or more, got {args.min_size}")
    if args.samples < 1:
        raise CLIError(f"--samples must be at least 1, got {args.samples}")
    for opt, v in (("--threshold", args.threshold), ("--abs-threshold", args.abs_threshold)):
        if v is not None and not math.isfinite(v):
            raise CLIError(f"{opt} must be a number, got {v}")
    if args.fpr is not None and not (math.isfinite(args.fpr) and 0.0 < args.fpr < 1.0):
        raise CLIError(f"--fpr must lie in (0, 1), got {args.fpr}")
    mode = effective_mode(args.threshold_mode, args.abs_threshold)
    if mode == "absolute" and args.abs_threshold is None:
        raise CLIError("--threshold-mode absolute needs --abs-threshold T")
    if mode != "absolute" and args.abs_threshold is not None:
        raise CLIError(f"--abs-threshold contradicts --threshold-mode {mode}")
    if mode != "calibrated" and args.fpr is not None:
        raise CLIError(f"--fpr applies to --threshold-mode calibrated, not {mode}")
    try:
        check_slices_spec(args.slices)
    except ValueError as err:
        raise CLIError(str(err)) from None
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise CLIError(f"--out {args.out} is a file, not a folder")


def _threshold_rule(detector, args, settings):
    """The segmentation rule of this run; its notes (an uncalibrated model's fallback, settings
    other than those calibrated at, the calibrated slice range) are printed once, here."""
    from ..core.inference.calibration import Calibration, rule_for
    from . import CLIError

    try:
        rule = rule_for(detector.meta, settings.post)
        cal = Calibration.from_meta(detector.meta)
    except ValueError as err:
        raise CLIError(str(err)) from None
    notes = [rule.note] if rule.note else []
    if cal is not None and rule.mode != "paper":
        notes.append(cal.setting_note(settings.L, settings.P, settings.S))
    r = None if cal is None else cal.slice_range
    if r and r.get("depth") and not args.slices and not args.all_slices:
        notes.append(f"volumes of {r['depth']} slices run axial slices {r['first']}..{r['last']} "
                     "only, the range the model was calibrated on (--slices or --all-slices for "
                     "others)")
    for n in filter(None, notes):
        print(f"berdiff detect: note: {n}", file=sys.stderr)
    if not rule.note:
        print(f"berdiff detect: note: segmenting with {rule.description}", file=sys.stderr)
    return rule


TOP = 10  # inputs listed on the terminal; the summary CSV has all


def _report_ranking(rows: list[dict], out: str, rank: int, world: int, tag: str = "") -> None:
    """Write the summary (most anomalous first) and print its top: one process rebuilds it from
    every result in ``out`` (this run's and earlier ones'), so it is an index of the folder and
    replacing it loses nothing; under several processes each ranks its own inputs."""
    from ..core.inference.batch_detect import summary_path, summary_rows
    from ..core.inference.triage import RANK_BY, rank_inputs, summary_csv
    from ..core.io.atomic import atomic_write_text

    path = summary_path(out, rank, world)
    rows = rank_inputs(summary_rows(out) if world <= 1 else rows)
    atomic_write_text(path, summary_csv(rows))
    print(f"{tag}most anomalous first (by {' then '.join(RANK_BY)}; all {len(rows)} in {path}):")
    for r in rows[:TOP]:
        area = ("n/a (uncalibrated)" if r["area"] != r["area"] else
                f"{int(r['area'])} px = {100 * r['area_fraction']:.2f}% of foreground")
        print(f"{tag}{r['rank']:>4}. {r['input']}: peak {r['peak']:.4g} (slice {r['peak_slice']}), "
              f"area {area}, masked fraction {r['masked_fraction']:.3f}")


def run(args) -> int:
    from ..core.io.signals import Interrupted, stop_on_signals

    done: list[int] = [0]
    try:
        with stop_on_signals():
            return _run(args, done)
    except Interrupted as stop:
        import signal

        term = stop.signum == getattr(signal, "SIGTERM", None)
        print(f"berdiff detect: {'terminated (SIGTERM)' if term else 'interrupted'}; "
              f"{done[0]} input(s) finished (kept in {args.out}), no partial outputs left",
              file=sys.stderr)
        return 143 if term else 130


def _discover(args):
    """``(all inputs, this process's share, rank, world)``; notes for skipped outputs and mask
    folders; CLIError (one line, before anything is created) when no input can run."""
    from ..core.io.discovery import discover_inputs, shard
    from . import CLIError

    skipped: list = []
    masks: list = []
    items = discover_inputs(args.inputs, exclude=args.out, skipped=skipped, masks=masks)
    for found, what in ((skipped, "outputs of berdiff detect, not inputs"),
                        (masks, "ground-truth masks of an OCT2017-style tree, not B-scans")):
        if found:
            more = f" and {len(found) - 1} more" if len(found) > 1 else ""
            print(f"berdiff detect: note: skipped {found[0]}{more}: {what}", file=sys.stderr)
    bad = [it for it in items if it.kind == "invalid"]
    if len(bad) == len(items):
        if not bad:
            raise CLIError("no input to run (only outputs of berdiff detect were given)")
        more = f" (and {len(bad) - 1} more input(s) that cannot run)" if len(bad) > 1 else ""
        raise CLIError(f"{bad[0].error or 'invalid input: ' + str(bad[0].path)}{more}")
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    return items, shard(items, rank, world), rank, world


def _made_folders(out: str) -> list[str]:
    """Create ``out`` (and missing parents); return those created, deepest first."""
    from . import CLIError

    missing, d = [], os.path.abspath(out)
    while not os.path.exists(d):
        missing.append(d)
        d = os.path.dirname(d)
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as err:
        raise CLIError(f"cannot create the output folder --out {out}: "
                       f"{err.strerror or err}") from None
    return missing


def _run(args, done: list[int]) -> int:
    from ..core.inference.batch_detect import DetectSettings, item_outputs
    from ..core.io.outputs import check_inputs_kept, check_outputs
    from . import CLIError

    _check_settings(args)
    items, mine, rank, world = _discover(args)
    check_inputs_kept(items, args.out)
    check_outputs([p for it in mine if it.kind != "invalid"
                   for p in item_outputs(it, args.out, args.samples).values()], args.overwrite)
    if args.model is None and args.bundled is None:
        args.bundled, why = model_args.bundled_for(items)
        print(f"berdiff detect: note: no model named; using the bundled {args.bundled} model "
              f"({why}; --bundled or --model to choose)", file=sys.stderr)
    detector = model_args.load_detector(args, local_rank=os.environ.get("LOCAL_RANK"))
    if args.L > detector.max_L:
        raise CLIError(f"--L {args.L} is beyond the noise levels this model was trained for "
                       f"(L <= {detector.max_L})")
    steps = args.steps if args.steps is not None else DEFAULTS.steps  # run with min(steps, L)
    settings = DetectSettings(L=args.L, P=args.P, steps=steps, seed=args.seed,
                              samples=args.samples, post=model_args.postprocess_from_args(args))
    _threshold_rule(detector, args, settings)
    if args.slices and any(it.is_2d for it in mine):
        print("berdiff detect: note: --slices applies to volumes only; 2D images run whole",
              file=sys.stderr)
    made = _made_folders(args.out)
    tag = f"[rank {rank}/{world}] " if world > 1 else ""
    try:
        failed = _loop(args, detector, mine, settings, done, (rank, world, tag))
    finally:
        if done[0] == 0:  # nothing written (all failed, or stopped): leave no empty folders
            for d in made:
                try:
                    os.rmdir(d)
                except OSError:
                    break
    if failed and not done[0]:  # each failure said so in its line
        return 2
    print(f"{tag}{done[0]} input(s) done, {len(failed)} failed; outputs in {args.out}")
    if failed:
        print(f"berdiff detect: {tag}{len(failed)} input(s) failed: "
              + ", ".join(p for p, _ in failed), file=sys.stderr)
        return 1
    return 0


def _loop(args, detector, mine, settings, done: list[int], where) -> list[tuple[str, str]]:
    """Run every input of this process; returns the failed ones ``(path, reason)``."""
    from ..core.evaluation.reference import reference_line, reference_report
    from ..core.inference.batch_detect import run_item

    rank, world, tag = where
    failed: list[tuple[str, str]] = []
    ranked: list[dict] = []
    for it in mine:
        if it.kind == "invalid":
            failed.append((str(it.path), it.error or "invalid input"))
            print(f"berdiff detect: {tag}failed: {it.error}", file=sys.stderr)
            continue
        bar = model_args.progress_bar(f"{tag}{it.name}", disable=args.no_progress)
        try:
            summary = run_item(detector, it, args.out, settings, batch_size=args.batch_size,
                               slices=args.slices, nan_policy=args.nan_policy,
                               all_slices=args.all_slices,
                               progress=lambda t, b=bar: b.update_to(t.done, t.total),
                               extra={"rank": rank, "world_size": world},
                               reference=reference_report)
        except KeyboardInterrupt:
            raise
        except Exception as err:  # one bad input must not stop the others
            bar.close()  # before the message, so that the two do not share a line
            failed.append((str(it.path), _reason(it, err)))
            print(f"berdiff detect: {tag}failed: {it.path}: {failed[-1][1]}", file=sys.stderr)
            continue
        finally:
            bar.close()
        done[0] += 1
        dest = os.path.join(args.out, summary["name"])
        print(f"{tag}{it.path} -> {dest}_berdiff_* ({summary['slices']} slice(s), "
              f"{summary['seg_pixels']} segmented pixels)")
        if summary.get("reference"):  # an OCT volume with annotations: the figures against them
            print(f"{tag}{it.path}: against its annotation: {reference_line(summary['reference'])}"
                  f" ({dest}_berdiff_reference.json)")
        if summary["scores"].get("warning"):
            print(f"berdiff detect: {tag}warning: {it.path}: {summary['scores']['warning']}",
                  file=sys.stderr)
        ranked.append({"input": str(it.path), "outputs": f"{summary['name']}_berdiff_*",
                       "slices": summary["slices"], "seg_pixels": summary["seg_pixels"],
                       **summary["scores"]})
    if ranked:
        _report_ranking(ranked, args.out, rank, world, tag)
    return failed
