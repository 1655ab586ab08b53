"""``berdiff prepare-brats | prepare-oct | prepare-folder``: write a prepared training directory."""

from __future__ import annotations


def register(sub) -> None:
    from src_training.prepare.cli import add_kind_parsers

    for parser in add_kind_parsers(sub, "prepare-{}").values():
        parser.set_defaults(func=run)


def run(args) -> int:
    from src_training.prepare.cli import run_args

    return run_args(args)
