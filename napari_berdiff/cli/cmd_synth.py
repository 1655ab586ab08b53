"""``berdiff synth-brats`` / ``berdiff synth-oct``: write the generated benchmark data sets.

The BraTS-like cases come from nilearn's bundled MNI152 templates (offline); the OCT B-scans are a
phantom. Both are seeded: the same command writes the same files.
"""

from __future__ import annotations

import sys


def register(sub) -> None:
    b = sub.add_parser("synth-brats", help="write synthetic BraTS2020-style cases (MNI152 anatomy, "
                                           "tumours, cavities, enlarged ventricles)")
    b.add_argument("out", help="folder to write BraTS20_Training_NNN/ case folders into")
    b.add_argument("--healthy", type=int, default=0, help="cases without an anomaly")
    b.add_argument("--tumour", type=int, default=0, help="cases with a tumour (labels 1, 2, 4)")
    b.add_argument("--cavity", type=int, default=0, help="cases with a resection-like cavity (label 2)")
    b.add_argument("--ventricle", type=int, default=0, help="cases with enlarged ventricles (label 2)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--start-id", type=int, default=1, help="number of the first case folder (default 1)")
    b.add_argument("--overwrite", action="store_true", help="replace existing case folders")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    b.set_defaults(func=run_brats)
    o = sub.add_parser("synth-oct", help="write synthetic OCT2017-style B-scans (NORMAL/, DRUSEN/ "
                                         "with DRUSEN_masks/)")
    o.add_argument("out", help="folder to write NORMAL/, DRUSEN/ and DRUSEN_masks/ into")
    o.add_argument("--normal", type=int, default=0, help="healthy B-scans")
    o.add_argument("--drusen", type=int, default=0, help="B-scans with drusen (with masks)")
    o.add_argument("--per-patient", type=int, default=2, help="B-scans per synthetic patient (default 2)")
    o.add_argument("--seed", type=int, default=0)
    o.add_argument("--overwrite", action="store_true", help="replace existing files")
    o.add_argument("--quiet", action="store_true", help="no progress bar")
    o.set_defaults(func=run_oct)


def _cli_clash(err: FileExistsError) -> FileExistsError:
    return FileExistsError(str(err).replace("pass overwrite=True", "pass --overwrite"))


def _check_counts(**counts: int) -> None:
    bad = [k for k, v in counts.items() if v < 0]
    if bad:
        raise ValueError(f"counts must be >= 0: {', '.join(bad)}")
    if sum(counts.values()) == 0:
        raise ValueError("nothing to write: give at least one of "
                         + ", ".join(f"--{k}" for k in counts))


def _bar(total: int, unit: str, quiet: bool):
    """``(progress(done, total), close())`` of a tqdm bar on stderr (no-ops when ``quiet``)."""
    from tqdm import tqdm

    bar = None if quiet else tqdm(total=total, unit=unit, file=sys.stderr)

    def progress(done: int, total: int) -> None:
        if bar is not None:
            bar.n = done
            bar.refresh()

    return progress, (bar.close if bar is not None else (lambda: None))


def run_brats(args) -> int:
    from ..core.synth.brain import write_brats_dataset

    counts = dict(healthy=args.healthy, tumour=args.tumour, cavity=args.cavity, ventricle=args.ventricle)
    _check_counts(**counts)
    progress, close = _bar(sum(counts.values()), "case", args.quiet)

    try:
        rows = write_brats_dataset(args.out, n_healthy=args.healthy, n_tumour=args.tumour,
                                   n_cavity=args.cavity, n_ventricle=args.ventricle, seed=args.seed,
                                   start_id=args.start_id, overwrite=args.overwrite, progress=progress)
    except FileExistsError as err:
        raise _cli_clash(err) from None
    finally:
        close()
    print(f"wrote {len(rows)} case(s) to {args.out}")
    return 0


def run_oct(args) -> int:
    from ..core.synth.oct import write_oct_dataset

    _check_counts(normal=args.normal, drusen=args.drusen)
    progress, close = _bar(args.normal + args.drusen, "B-scan", args.quiet)
    try:
        rows = write_oct_dataset(args.out, n_normal=args.normal, n_drusen=args.drusen, seed=args.seed,
                                 scans_per_patient=args.per_patient, overwrite=args.overwrite,
                                 progress=progress)
    except FileExistsError as err:
        raise _cli_clash(err) from None
    finally:
        close()
    print(f"wrote {len(rows)} B-scan(s) to {args.out}")
    return 0
