"""``berdiff detect INPUT... --out DIR``: headless anomaly detection over files and folders.

Inputs: BraTS case folders (4-channel models), NIfTI volumes (3D for 1-channel models, 4D with
channels last), 2D images (OCT; 1-channel models), or folders holding any of these (searched
recursively; the --out folder and earlier outputs are never taken for inputs). Outputs per input
(see :mod:`napari_berdiff.core.io.batch_io`), named ``<stem>_berdiff_<kind>`` where ``<stem>`` mirrors
the input's path below the folder argument it was found in (an input given directly: its name):
anomaly map, segmentation mask and reconstruction (NIfTI with the source affine, or TIFF/PNG for
2D images), a per-slice scores CSV and a provenance JSON.

Safety: settings wrong for every input (L, steps, min-size, slices syntax, --out a file) end the
run with one line and exit status 2 before any input is read. Existing outputs are never replaced
without ``--overwrite`` (checked for every input before any work starts), and an input file never,
not even with it; files are written under temporary names and renamed when complete, so Ctrl-C or
SIGTERM (SLURM, torchrun) leaves no partial output: finished inputs are kept, the exit status is
130 (SIGINT) or 143 (SIGTERM). A failing input is reported on stderr in one line naming it and the
others still run; the exit status is 1 when any input failed.

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
    model_args.add_model_args(p)
    model_args.add_sampling_args(
        p, f"sampler steps S <= L (default min({DEFAULTS.steps}, L): 10x fewer network evaluations "
           "than S = L = 200 at the same Dice in our measurements; --steps L for every step)")
    model_args.add_batch_size_arg(p)
    p.add_argument("--slices", default=None, metavar="A:B",
                   help="only these axial slices, counted from the feet up in RAS order "
                        "(the last axis of a BraTS-style file; Python slice, e.g. 80:129)")
    model_args.add_postprocess_args(p)
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def _one_line(text: str) -> str:
    lines = [ln.strip() for ln in str(text).strip().splitlines() if ln.strip()]
    return (lines[0] + (" ..." if len(lines) > 1 else "")) if lines else ""


def _reason(item, err: Exception) -> str:
    """One line for a failed input, to follow its path: a DataError's reason without the repeated
    ``[file: ...]`` (kept when it names another file), the input's path cut to its name."""
    from ..core.io.readers import DataError

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

    from ..core.io.batch_io import check_slices_spec
    from . import CLIError

    if args.L < 1:
        raise CLIError(f"--L must be at least 1, got {args.L}")
    if args.steps is not None and not 1 <= args.steps <= args.L:
        raise CLIError(f"--steps must lie in 1..L={args.L}, got {args.steps}")
    if not math.isfinite(args.P):
        raise CLIError(f"--P must be a number, got {args.P}")
    if args.min_size < 0:
        raise CLIError(f"--min-size must be 0 or more, got {args.min_size}")
    for opt, v in (("--threshold", args.threshold), ("--abs-threshold", args.abs_threshold)):
        if v is not None and not math.isfinite(v):
            raise CLIError(f"{opt} must be a number, got {v}")
    try:
        check_slices_spec(args.slices)
    except ValueError as err:
        raise CLIError(str(err)) from None
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise CLIError(f"--out {args.out} is a file, not a folder")


def run(args) -> int:
    from ..core.io.batch_io import Interrupted, stop_on_signals

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


def _run(args, done: list[int]) -> int:
    from ..core.inference.batch_detect import DetectSettings, run_item
    from ..core.io.batch_io import (check_inputs_kept, check_outputs, discover_inputs, output_paths,
                                 shard)
    from . import CLIError

    _check_settings(args)
    skipped: list = []
    items = discover_inputs(args.inputs, exclude=args.out, skipped=skipped)
    if skipped:
        more = f" and {len(skipped) - 1} more" if len(skipped) > 1 else ""
        print(f"berdiff detect: note: skipped {skipped[0]}{more}: outputs of berdiff detect, "
              "not inputs", file=sys.stderr)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    mine = shard(items, rank, world)
    check_inputs_kept(items, args.out)
    check_outputs([p for it in mine if it.kind != "invalid"
                   for p in output_paths(it, args.out).values()], args.overwrite)
    detector = model_args.load_detector(args, local_rank=os.environ.get("LOCAL_RANK"))
    if args.L > detector.max_L:
        raise CLIError(f"--L {args.L} is beyond the noise levels this model was trained for "
                       f"(L <= {detector.max_L})")
    if args.slices and any(it.is_2d for it in mine):
        print("berdiff detect: note: --slices applies to volumes only; 2D images run whole",
              file=sys.stderr)
    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as err:
        raise CLIError(f"cannot create the output folder --out {args.out}: "
                       f"{err.strerror or err}") from None
    steps = args.steps if args.steps is not None else DEFAULTS.steps  # run with min(steps, L)
    settings = DetectSettings(L=args.L, P=args.P, steps=steps, seed=args.seed,
                              post=model_args.postprocess_from_args(args))
    tag = f"[rank {rank}/{world}] " if world > 1 else ""
    failed: list[tuple[str, str]] = []
    for it in mine:
        if it.kind == "invalid":
            failed.append((str(it.path), it.error or "invalid input"))
            print(f"berdiff detect: {tag}failed: {it.error}", file=sys.stderr)
            continue
        bar = model_args.progress_bar(f"{tag}{it.name}", disable=args.no_progress)
        try:
            summary = run_item(detector, it, args.out, settings, batch_size=args.batch_size,
                               slices=args.slices, progress=lambda t, b=bar: b.update_to(t.done, t.total),
                               extra={"rank": rank, "world_size": world})
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
    print(f"{tag}{done[0]} input(s) done, {len(failed)} failed; outputs in {args.out}")
    if failed:
        print(f"berdiff detect: {tag}{len(failed)} input(s) failed: "
              + ", ".join(p for p, _ in failed), file=sys.stderr)
        return 1
    return 0
