"""Command-line front of the dataset preparation: ``python -m src_training.prepare`` and
``berdiff prepare-brats | prepare-oct | prepare-folder`` share these parsers. Only argparse is
imported at module level so that building the ``berdiff`` parser stays fast."""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import Sequence

from src_training.prepare import defaults as D


def add_kind_parsers(sub, name_format: str = "{}") -> dict:
    """Add one sub-parser per dataset kind (brats, oct, folder) to ``sub``; each sets ``kind``.
    Shared by ``python -m src_training.prepare`` and ``berdiff prepare-*``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("src", help="the source folder")
    common.add_argument("out", help="the prepared directory to write (must not exist)")
    common.add_argument("--image-size", type=int, default=D.IMAGE_SIZE,
                        help="model input size (default %(default)d)")
    common.add_argument("--seed", type=int, default=D.SEED,
                        help="seed of the split (default %(default)d)")
    common.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    common.add_argument("--workers", type=int, default=D.WORKERS,
                        help="worker processes (default %(default)d: none)")
    common.add_argument("--quiet", action="store_true", help="no progress bar")
    b = sub.add_parser(name_format.format("brats"), parents=[common],
                       help="prepare BraTS2020/2021/2023 case folders (4 channels: FLAIR, T1, T1ce, T2)")
    b.add_argument("--split", type=float, nargs=3, default=D.BRATS.split,
                   metavar=("TRAIN", "VAL", "TEST"))
    b.add_argument("--drop-bottom", type=int, default=D.BRATS.drop_bottom)
    b.add_argument("--drop-top", type=int, default=D.BRATS.drop_top)
    o = sub.add_parser(name_format.format("oct"), parents=[common],
                       help="prepare an OCT2017 (Kermany) folder: NORMAL for training, the rest for testing")
    o.add_argument("--keep-aspect", action="store_true")
    o.add_argument("--val-fraction", type=float, default=D.OCT.val_fraction)
    o.add_argument("--max-per-class", type=int, default=D.OCT.max_per_class)
    o.add_argument("--normal-test-fraction", type=float, default=D.OCT.normal_test_fraction,
                   help="flat layout: share of the NORMAL patients held out as healthy test images "
                        "(default %(default)g: all non-val NORMAL images train)")
    o.add_argument("--skip-bad", action="store_true",
                   help="leave out unreadable images (listed at the end and in meta.json) "
                        "instead of stopping at the first")
    f = sub.add_parser(name_format.format("folder"), parents=[common],
                       help="prepare any folder of NIfTI volumes or images as healthy training data")
    f.add_argument("--channels", type=int, default=D.FOLDER.channels)
    f.add_argument("--keep-aspect", action="store_true")
    f.add_argument("--val-fraction", type=float, default=D.FOLDER.val_fraction)
    f.add_argument("--drop-bottom", type=int, default=D.FOLDER.drop_bottom)
    f.add_argument("--drop-top", type=int, default=D.FOLDER.drop_top)
    for p in (b, f):
        p.add_argument("--nan-policy", choices=("raise", "zero"), default=D.NAN_POLICY)
        p.add_argument("--skip-bad", action="store_true",
                       help="leave out unreadable inputs (listed at the end and in meta.json) "
                            "instead of stopping at the first")
    for kind, p in (("brats", b), ("oct", o), ("folder", f)):
        p.set_defaults(kind=kind, prog=p.prog)
    return {"brats": b, "oct": o, "folder": f}


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m src_training.prepare", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_kind_parsers(ap.add_subparsers(dest="command", required=True))
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m src_training.prepare``: bad input ends in one line on stderr, exit status 2."""
    a = _parser().parse_args(argv)
    try:
        return run_args(a)
    except KeyboardInterrupt:
        print(f"{a.prog}: interrupted", file=sys.stderr)
        return 130
    except (CLIError, ValueError, OSError) as e:
        print(f"{a.prog}: error: {e}", file=sys.stderr)
        return 2


class CLIError(ValueError):
    """Bad input to a prepare command: reported as one line, exit status 2."""


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def _warn_line(prog: str):
    """A ``warnings.showwarning`` printing ``PROG: warning: MESSAGE`` (no source line), above
    the progress bar when there is one."""
    def show(message, category, filename, lineno, file=None, line=None):
        text = f"{prog}: warning: {_one_line(message)}"
        try:
            from tqdm import tqdm

            tqdm.write(text, file=sys.stderr)
        except ImportError:  # pragma: no cover
            print(text, file=sys.stderr)
    return show


def run_args(a: argparse.Namespace) -> int:
    """Run a parsed prepare command (see :func:`add_kind_parsers`). Bad input (a missing or
    unreadable source, an existing output without ``--overwrite``, a bad option value) raises
    :class:`CLIError` (a ValueError) with a one-line message; warnings print as one line each."""
    from src_training.prepare.prepare import DataError, prepare_brats, prepare_folder, prepare_oct

    prog = getattr(a, "prog", None) or f"prepare-{a.kind}"
    common = dict(seed=a.seed, image_size=a.image_size, overwrite=a.overwrite,
                  workers=a.workers, show_progress=not a.quiet)
    with warnings.catch_warnings():
        warnings.simplefilter("always", UserWarning)
        warnings.showwarning = _warn_line(prog)
        try:
            if a.kind == "brats":
                meta = prepare_brats(a.src, a.out, split=tuple(a.split),
                                     drop_bottom=a.drop_bottom, drop_top=a.drop_top,
                                     nan_policy=a.nan_policy, skip_bad=a.skip_bad, **common)
            elif a.kind == "oct":
                meta = prepare_oct(a.src, a.out, keep_aspect=a.keep_aspect,
                                   val_fraction=a.val_fraction, max_per_class=a.max_per_class,
                                   normal_test_fraction=a.normal_test_fraction,
                                   skip_bad=a.skip_bad, **common)
            else:
                meta = prepare_folder(a.src, a.out, channels=a.channels,
                                      keep_aspect=a.keep_aspect, val_fraction=a.val_fraction,
                                      drop_bottom=a.drop_bottom, drop_top=a.drop_top,
                                      nan_policy=a.nan_policy, skip_bad=a.skip_bad, **common)
        except FileExistsError as e:
            raise CLIError(_one_line(e).replace("pass overwrite=True (--overwrite)",
                                                "pass --overwrite")) from None
        except (DataError, ValueError, OSError) as e:
            raise CLIError(_one_line(e)) from None
    print(f"wrote {meta['out_dir']}")
    for s, c in meta["counts"].items():
        print(f"  {s:5s}: " + ", ".join(f"{k} {v}" for k, v in c.items()))
    skipped = meta.get("skipped", [])
    if skipped:
        what = "case(s)" if a.kind == "brats" else "file(s)"
        print(f"  skipped {len(skipped)} unreadable {what} (see meta.json): "
              + ", ".join(d["case"] for d in skipped))
    return 0
