"""The prepare-* command-line flags default to what the prepare functions default to."""

from __future__ import annotations

import argparse
import inspect

import pytest

from src_training.prepare.cli import add_kind_parsers
from src_training.prepare.prepare import prepare_brats, prepare_folder, prepare_oct

FUNCTIONS = {"brats": prepare_brats, "oct": prepare_oct, "folder": prepare_folder}
# parsed names that are not keyword parameters of the functions
NOT_PARAMETERS = {"src", "out", "kind", "prog", "quiet"}


def _parsed_defaults(kind: str) -> dict:
    sub = argparse.ArgumentParser().add_subparsers(dest="command")
    parser = add_kind_parsers(sub)[kind]
    args = vars(parser.parse_args(["SRC", "OUT"]))
    args["show_progress"] = not args.pop("quiet")
    return {k: v for k, v in args.items() if k not in NOT_PARAMETERS}


@pytest.mark.parametrize("kind", sorted(FUNCTIONS))
def test_cli_defaults_equal_the_prepare_functions_defaults(kind):
    params = inspect.signature(FUNCTIONS[kind]).parameters
    parsed = _parsed_defaults(kind)
    unknown = set(parsed) - set(params)
    assert not unknown, f"flags without a {FUNCTIONS[kind].__name__} parameter: {unknown}"
    compared = 0
    for name, value in parsed.items():
        default = params[name].default
        if default is inspect.Parameter.empty:  # required by the function (folder's image_size)
            continue
        got = tuple(value) if isinstance(default, tuple) else value
        assert got == default, f"{kind} --{name.replace('_', '-')}: CLI {value!r} != {default!r}"
        compared += 1
    assert compared >= 6  # the comparison ran over the flags, not over nothing

