"""The work of a batch run (``berdiff detect``): the inputs named on the command line or found in
folders (never earlier outputs), this process's share of them, and the ``--slices`` selection
(docs/cli.md, docs/design-notes.md)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from .files import is_image, is_mask_folder, is_nifti, strip_extension
from .input_kinds import InputItem, file_input_kind, folder_input_kind, unsupported_reason
from .outputs import OUTPUT_TAG, OwnOutputs
from .readers import BRATS_CASE_SUFFIXES

__all__ = ["discover_inputs", "shard", "parse_slices", "check_slices_spec"]


def _resolve(p: str | Path) -> Path:
    try:
        return Path(p).resolve()
    except (OSError, RuntimeError):
        return Path(os.path.abspath(p))


def _inside(p: Path, folder: Path) -> bool:
    """``p`` is ``folder`` or below it (both resolved)."""
    return p == folder or folder in p.parents


def _is_case_folder(d: Path) -> bool:
    try:
        return any(f.name.lower().endswith(BRATS_CASE_SUFFIXES)
                   for f in d.iterdir() if f.is_file())
    except OSError:
        return False


def _walk(root: Path, out: Path | None, own: OwnOutputs,
          masks: list[Path] | None = None) -> list[InputItem]:
    """The inputs below ``root`` named by their path relative to it. The output folder ``out``
    (resolved) is not entered when it lies strictly inside ``root``; when ``root`` is the output
    folder or inside it (outputs written next to the inputs), only the name check applies.
    Mask folders of an OCT2017-style tree (``*_masks``) are not entered (listed in ``masks``)."""
    root_r = _resolve(root)
    prune = out if out is not None and out != root_r and root_r in out.parents else None
    items: list[InputItem] = []
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        rel = d.relative_to(root)
        dirnames[:] = [n for n in sorted(dirnames) if not n.startswith(".")
                       and (prune is None or _resolve(d / n) != prune)]
        if masks is not None:
            masks.extend(d / n for n in dirnames if is_mask_folder(n))
        dirnames[:] = [n for n in dirnames if not is_mask_folder(n)]
        kind = "brats_case" if _is_case_folder(d) else folder_input_kind(d)
        if kind:
            items.append(InputItem(d, kind, rel.as_posix() if rel.parts else root_r.name))
            dirnames[:] = []
            continue
        for f in sorted(filenames):
            p = d / f
            if f.startswith(".") or own(p):
                continue
            kind = "nifti" if is_nifti(p) else "image" if is_image(p) else file_input_kind(p)
            if kind:
                items.append(InputItem(p, kind, (rel / strip_extension(f)).as_posix()))
    return items


def discover_inputs(paths: Sequence[str | Path], exclude: str | Path | None = None,
                    skipped: list[Path] | None = None,
                    masks: list[Path] | None = None) -> list[InputItem]:
    """The inputs named by ``paths`` (files or folders), in order, with their output stems.

    ``exclude``: the output folder; folder searches do not enter it, and a folder argument inside
    it that holds nothing but outputs is passed over. Outputs of ``berdiff detect`` are never
    inputs: found in folders they are ignored, given directly they are appended to ``skipped``
    (when a list is passed) instead of running. Mask folders (``*_masks``) met in a folder search
    are not entered (appended to ``masks``; one given directly runs). Missing paths, unsupported files and folders
    without inputs become ``invalid`` items (reported, not raised, so that the other inputs still
    run). Two inputs with the same output stem (compared case-insensitively) raise ValueError
    naming both."""
    out = _resolve(exclude) if exclude is not None else None
    own = OwnOutputs()
    items: list[InputItem] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            items += _folder_items(p, out, own, skipped, masks)
        elif p.exists() and own(p):
            if skipped is not None:
                skipped.append(p)
        else:
            items.append(_file_item(p))
    unique = _unique(items)
    _check_stems_unique(unique)
    return unique


def _folder_items(p: Path, out: Path | None, own: OwnOutputs, skipped: list[Path] | None,
                  masks: list[Path] | None) -> list[InputItem]:
    """The inputs of a folder argument: itself (a BraTS case, DICOM or OCT export folder), those
    found below it, nothing (a folder of outputs inside ``out``: noted in ``skipped``) or one
    ``invalid`` item."""
    kind = "brats_case" if _is_case_folder(p) else folder_input_kind(p)
    if kind:
        return [InputItem(p, kind, _resolve(p).name)]
    found = _walk(p, out, own, masks)
    if found:
        return found
    if out is not None and _inside(_resolve(p), out):
        if skipped is not None:  # e.g. the output folder itself, from a shell glob
            skipped.append(p)
        return []
    return [InputItem(p, "invalid", p.name, error=f"no NIfTI, image, DICOM, OCT volume or BraTS "
                                                   f"case under folder {p}")]


def _file_item(p: Path) -> InputItem:
    """The input of a file argument (not an output), or an ``invalid`` item saying why not."""
    if not p.exists():
        return InputItem(p, "invalid", p.name, error=f"input not found: {p}")
    if is_nifti(p):
        return InputItem(p, "nifti", strip_extension(p.name))
    if is_image(p):
        return InputItem(p, "image", strip_extension(p.name))
    if file_input_kind(p):
        return InputItem(p, file_input_kind(p), strip_extension(p.name))
    return InputItem(p, "invalid", p.name, error=unsupported_reason(p) or (
        f"unsupported input (not NIfTI, PNG/JPEG/TIFF/BMP, DICOM, an OCT volume export "
        f"or a BraTS case folder): {p}"))


def _unique(items: list[InputItem]) -> list[InputItem]:
    """``items`` without repeats of the same (resolved) path, in order."""
    seen: set[Path] = set()
    unique: list[InputItem] = []
    for it in items:
        key = _resolve(it.path)
        if key in seen:
            continue
        seen.add(key)
        unique.append(it)
    return unique


def _check_stems_unique(items: list[InputItem]) -> None:
    """ValueError naming two inputs whose outputs would share a stem (case-insensitively)."""
    owner: dict[str, InputItem] = {}
    for it in items:
        if it.kind == "invalid":
            continue
        other = owner.setdefault(it.name.casefold(), it)
        if other is not it:
            raise ValueError(f"{other.path} and {it.path} would both write the outputs "
                             f"{it.name}{OUTPUT_TAG}*; run them with different --out folders")


def shard(items: Sequence, rank: int | None = None, world: int | None = None) -> list:
    """This process's share ``items[rank::world]``; ``rank``/``world`` default to the
    ``RANK``/``WORLD_SIZE`` environment variables that ``torchrun`` sets (one process: all)."""
    rank = int(os.environ.get("RANK", 0)) if rank is None else int(rank)
    world = int(os.environ.get("WORLD_SIZE", 1)) if world is None else int(world)
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"need 0 <= RANK < WORLD_SIZE, got RANK={rank}, WORLD_SIZE={world}")
    return list(items)[rank::world]


def _parse_spec(spec: str) -> tuple[int | None, int | None] | int:
    try:
        if ":" in spec:
            a, _, b = spec.partition(":")
            return (int(a) if a.strip() else None, int(b) if b.strip() else None)
        return int(spec)
    except ValueError:
        raise ValueError(f"--slices must look like a:b or k, got {spec!r}") from None


def check_slices_spec(spec: str | None) -> None:
    """ValueError when ``spec`` is not of the form ``a:b`` or ``k`` (before any volume is read)."""
    if spec is not None and spec != "":
        _parse_spec(spec)


def parse_slices(spec: str | None, n: int) -> list[int] | None:
    """``"a:b"`` (Python-style, negatives from the end, either side optional) or ``"k"`` ->
    the slice indices in ``range(n)``; None for all slices."""
    if spec is None or spec == "":
        return None
    parsed = _parse_spec(spec)
    if isinstance(parsed, tuple):
        idx = list(range(n))[slice(*parsed)]
    else:
        idx = [parsed + n if parsed < 0 else parsed]
    if not idx or min(idx) < 0 or max(idx) >= n:
        raise ValueError(f"--slices {spec} selects no slice of the {n} available")
    return idx
