"""Command-line flags made from dataclass fields, so that a setting and its default live once.

A field becomes a flag when its metadata has a ``help`` (``{default}`` in it is filled in). The
flag is ``--<name with dashes>`` unless the metadata names another (``flag``); ``choices``,
``metavar``, ``nargs`` and ``type`` pass through; a bool field with default False is a switch. The
parsed value lands on ``args.<prefix><field name>``; :func:`from_args` builds the object back.
"""

from __future__ import annotations

import dataclasses
import typing

__all__ = ["flag_fields", "add_fields", "from_args"]


def flag_fields(cls, names=None) -> list:
    """The fields of ``cls`` that are flags (all with a help, or those in ``names``, in order)."""
    out = [f for f in dataclasses.fields(cls) if "help" in f.metadata]
    if names is not None:
        known = {f.name for f in out}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(f"{cls.__name__} has no flag field(s) {unknown}")
        out = [f for f in out if f.name in names]
    return out


def _default(f):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def _value_type(cls, f):
    """The type a flag's text is converted to: the field's type without ``None``."""
    hint = typing.get_type_hints(cls)[f.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if args:
        hint = args[0]
    return hint if hint in (int, float, str) else None


def add_fields(p, cls, names=None, defaults: dict | None = None, prefix: str = "") -> None:
    """One flag per flag field of ``cls`` on the parser (or group) ``p``; ``defaults`` overrides
    some defaults (a command whose default differs from the dataclass's); ``prefix`` keeps the
    destinations of a nested dataclass apart."""
    for f in flag_fields(cls, names):
        md = f.metadata
        default = (defaults or {}).get(f.name, _default(f))
        kw = {"dest": prefix + f.name, "default": default,
              "help": md["help"].format(default=default)}
        for key in ("choices", "metavar", "nargs"):
            if key in md:
                kw[key] = md[key]
        if typing.get_type_hints(cls)[f.name] is bool and default is False:
            kw["action"] = "store_true"
        else:
            kw["type"] = md.get("type") or _value_type(cls, f)
            if kw["type"] is None:
                del kw["type"]
        p.add_argument(md.get("flag", "--" + f.name.replace("_", "-")), **kw)


def from_args(cls, args, base=None, prefix: str = "", **extra):
    """``base`` (default ``cls()``) with the flag fields taken from the parsed ``args`` (those a
    command has) and ``extra`` on top."""
    base = cls() if base is None else base
    values = {f.name: getattr(args, prefix + f.name) for f in flag_fields(cls)
              if hasattr(args, prefix + f.name)}
    return dataclasses.replace(base, **{**values, **extra})
