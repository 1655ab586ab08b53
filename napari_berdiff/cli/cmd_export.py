"""``berdiff export MODEL OUT``: a checkpoint for shipping (float16 weights, no training state)."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("export", help="write a smaller copy of a checkpoint for shipping (float16 "
                                      "weights, no training state)")
    p.add_argument("model", help="the trained checkpoint")
    p.add_argument("out", help="the file to write")
    p.add_argument("--float32", action="store_true", help="keep float32 weights (only strip the "
                                                          "training state)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..core.models.checkpoint import CheckpointError, load_checkpoint
    from ..core.models.export import export_checkpoint
    from . import CLIError

    try:
        path = export_checkpoint(args.model, args.out, half=not args.float32,
                                 overwrite=args.overwrite)
        ck = load_checkpoint(path)  # proves the result loads
    except (CheckpointError, ValueError, FileExistsError) as err:
        raise CLIError(str(err)) from None
    size = path.stat().st_size / 2**20
    print(f"wrote {path} ({size:.1f} MiB, hash {ck.short_hash})")
    return 0
