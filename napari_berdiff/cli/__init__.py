"""The ``berdiff`` command line. Each subcommand lives in its own module with a ``register``
function adding its parser; heavy imports (torch, models) happen inside the handlers."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from . import cmd_configs, cmd_inspect, cmd_prepare, cmd_train
from . import cmd_detect, cmd_diagnose, cmd_evaluate, cmd_grid
from . import cmd_demo, cmd_export, cmd_synth
from . import cmd_calibrate

# modules exposing register(subparsers); later subcommands append themselves here
COMMANDS = [cmd_configs, cmd_inspect, cmd_prepare, cmd_train]
COMMANDS += [cmd_detect, cmd_evaluate, cmd_grid, cmd_diagnose]
COMMANDS += [cmd_synth, cmd_export, cmd_demo]
COMMANDS += [cmd_calibrate]


class CLIError(Exception):
    """An error to report as one line on stderr with exit status 2 (no traceback)."""


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="berdiff",
        description="Masked Bernoulli latent diffusion for unsupervised anomaly detection "
        "(Wolleb et al., MICCAI 2024).",
    )
    parser.add_argument("--version", action="version", version=f"napari-berdiff {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for mod in COMMANDS:
        mod.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("berdiff: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`berdiff inspect M | head`): not an error
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0
    except (CLIError, ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"berdiff {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
