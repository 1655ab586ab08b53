"""Inputs and outputs of headless detection (``berdiff detect``): finding inputs, naming and
writing outputs atomically.

:func:`discover_inputs` finds inputs (never earlier outputs), :func:`output_paths` names the
``<stem>_berdiff_<kind>`` files, :func:`check_inputs_kept` refuses to overwrite an input and
:class:`AtomicFiles` leaves no partial output (docs/cli.md, docs/design-notes.md).
"""

from __future__ import annotations

import json
import os
import re
import signal
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from .files import NIFTI_EXTENSIONS, is_image, is_mask_folder, is_nifti
from .input_kinds import file_input_kind, folder_input_kind, unsupported_reason
from .atomic import atomic_write_text, publish_mode  # noqa: F401 (atomic_write_text: re-exported)

__all__ = ["InputItem", "discover_inputs", "output_paths", "check_outputs", "check_inputs_kept",
           "is_own_output", "AtomicFiles", "atomic_write_text", "shard", "parse_slices",
           "check_slices_spec", "strip_extension", "OUTPUT_TAG"]

from .readers import BRATS_CASE_SUFFIXES as _CASE_SUFFIXES  # noqa: E402 (one naming)

OUTPUT_TAG = "_berdiff_"
# kind -> file ending, for volumes and for 2D images ("seg" is the segmentation; its file says
# "mask": BraTS readers take any "*_seg.nii*", and even any NIfTI containing "seg", for a label)
_VOLUME_OUTPUTS = {"anomaly": "anomaly.nii.gz", "seg": "mask.nii.gz", "recon": "recon.nii.gz"}
_IMAGE_OUTPUTS = {"anomaly": "anomaly.tif", "seg": "mask.png", "recon": "recon.png"}
_TABLE_OUTPUTS = {"scores": "scores.csv", "provenance": "provenance.json"}
_OWN_OUTPUT_RE = re.compile(r"(.+_berdiff_(anomaly|mask|recon|scores|provenance|spread)"
                            r"\.(nii\.gz|nii|tiff?|png|csv|json)"
                            r"|berdiff_summary(_rank\d+)?\.csv)$", re.IGNORECASE)
_LEGACY_PROVENANCE = "_provenance.json"  # before the _berdiff_ names: <stem>_provenance.json


@dataclass
class InputItem:
    """One unit of work: ``kind`` is ``brats_case``, ``nifti``, ``image``, ``dicom`` (a DICOM
    folder or file), ``oct_volume`` (an OCT volume export) or ``invalid``;
    ``name`` is the output stem (a relative path, ``/``-separated, for inputs found in folders)."""

    path: Path
    kind: str
    name: str = ""
    error: str | None = None
    info: dict | None = None  # what the reader found (DICOM series per channel, OCT spacing)

    @property
    def is_2d(self) -> bool:
        return self.kind == "image"


def strip_extension(name: str) -> str:
    low = name.lower()
    for ext in NIFTI_EXTENSIONS:
        if low.endswith(ext):
            return name[: -len(ext)]
    return Path(name).stem


def _resolve(p: str | Path) -> Path:
    try:
        return Path(p).resolve()
    except (OSError, RuntimeError):
        return Path(os.path.abspath(p))


def _inside(p: Path, folder: Path) -> bool:
    """``p`` is ``folder`` or below it (both resolved)."""
    return p == folder or folder in p.parents


def _listed_outputs(folder: Path) -> set[str]:
    """Names listed as outputs by the provenance JSONs in ``folder`` (also those of older
    versions, which named outputs ``<stem>_seg.png`` etc.), the JSONs themselves included."""
    names: set[str] = set()
    try:
        entries = [e for e in os.scandir(folder) if e.name.lower().endswith(_LEGACY_PROVENANCE)]
    except OSError:
        return names
    for e in entries:
        try:
            if not e.is_file() or e.stat().st_size > 1 << 22:
                continue
            prov = json.loads(Path(e.path).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(prov, dict) and isinstance(prov.get("outputs"), dict) and "detector" in prov:
            names.add(e.name)
            names.update(str(v) for v in prov["outputs"].values())
    return names


class _OwnOutputs:
    """``own(path)``: is ``path`` an output of ``berdiff detect`` (by name, or listed by a
    provenance JSON in its folder)? Caches each folder's listing."""

    def __init__(self) -> None:
        self._listed: dict[Path, set[str]] = {}

    def __call__(self, path: Path) -> bool:
        if is_own_output(path):
            return True
        folder = path.parent
        if folder not in self._listed:
            self._listed[folder] = _listed_outputs(folder)
        return path.name in self._listed[folder]


def is_own_output(path: str | Path) -> bool:
    """Whether the file name is one ``berdiff detect`` gives outputs (``*_berdiff_<kind>.*``,
    ``berdiff_summary.csv``)."""
    return _OWN_OUTPUT_RE.match(Path(path).name) is not None


def _is_case_folder(d: Path) -> bool:
    try:
        return any(f.name.lower().endswith(_CASE_SUFFIXES) for f in d.iterdir() if f.is_file())
    except OSError:
        return False


def _walk(root: Path, out: Path | None, own: _OwnOutputs,
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
    own = _OwnOutputs()
    items: list[InputItem] = []
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            items.append(InputItem(p, "invalid", p.name, error=f"input not found: {p}"))
        elif p.is_dir():
            kind = "brats_case" if _is_case_folder(p) else folder_input_kind(p)
            if kind:
                items.append(InputItem(p, kind, _resolve(p).name))
                continue
            found = _walk(p, out, own, masks)
            if found:
                items += found
            elif out is not None and _inside(_resolve(p), out):
                if skipped is not None:  # e.g. the output folder itself, from a shell glob
                    skipped.append(p)
            else:
                items.append(InputItem(p, "invalid", p.name, error=f"no NIfTI, image, DICOM, OCT "
                                                                   f"volume or BraTS case under "
                                                                   f"folder {p}"))
        elif own(p):
            if skipped is not None:
                skipped.append(p)
        elif is_nifti(p):
            items.append(InputItem(p, "nifti", strip_extension(p.name)))
        elif is_image(p):
            items.append(InputItem(p, "image", strip_extension(p.name)))
        elif file_input_kind(p):
            items.append(InputItem(p, file_input_kind(p), strip_extension(p.name)))
        else:
            items.append(InputItem(p, "invalid", p.name, error=unsupported_reason(p) or (
                f"unsupported input (not NIfTI, PNG/JPEG/TIFF/BMP, DICOM, an OCT volume export "
                f"or a BraTS case folder): {p}")))
    seen: set[Path] = set()
    unique: list[InputItem] = []
    for it in items:
        key = _resolve(it.path)
        if key in seen:
            continue
        seen.add(key)
        unique.append(it)
    owner: dict[str, InputItem] = {}
    for it in unique:
        if it.kind == "invalid":
            continue
        other = owner.setdefault(it.name.casefold(), it)
        if other is not it:
            raise ValueError(f"{other.path} and {it.path} would both write the outputs "
                             f"{it.name}{OUTPUT_TAG}*; run them with different --out folders")
    return unique


def output_paths(item: InputItem, out_dir: str | Path) -> dict[str, Path]:
    """The files :func:`napari_berdiff.cli.cmd_detect` writes for ``item``: kind -> path
    (``anomaly``, ``seg``, ``recon``, ``scores``, ``provenance``)."""
    names = (_IMAGE_OUTPUTS if item.is_2d else _VOLUME_OUTPUTS) | _TABLE_OUTPUTS
    return {k: Path(out_dir) / f"{item.name}{OUTPUT_TAG}{v}" for k, v in names.items()}


def check_outputs(paths: Iterable[Path], overwrite: bool) -> None:
    """Raise FileExistsError naming existing outputs unless ``overwrite``."""
    if overwrite:
        return
    existing = [Path(p) for p in paths if Path(p).exists()]
    if existing:
        more = f" and {len(existing) - 3} more" if len(existing) > 3 else ""
        raise FileExistsError(f"output(s) already exist: {', '.join(map(str, existing[:3]))}{more}; "
                              "pass --overwrite to replace them")


def check_inputs_kept(items: Sequence[InputItem], out_dir: str | Path) -> None:
    """Raise ValueError when an output of ``items`` is (a link to) one of their input files: no
    input is ever replaced, not even with ``--overwrite``. The files of a BraTS case folder
    (other than detect outputs) all count as inputs."""
    ids: dict[tuple[int, int], Path] = {}
    for it in items:
        if it.kind == "invalid":
            continue
        try:
            files = ([f for f in it.path.iterdir() if not is_own_output(f)]
                     if it.path.is_dir() else [it.path])
        except OSError:
            continue
        for f in files:
            try:
                st = f.stat()
            except OSError:
                continue
            ids[(st.st_dev, st.st_ino)] = f
    for it in items:
        if it.kind == "invalid":
            continue
        for p in output_paths(it, out_dir).values():
            try:
                st = p.stat()
            except OSError:
                continue
            hit = ids.get((st.st_dev, st.st_ino))
            if hit is not None:
                raise ValueError(f"the output {p} would replace the input {hit}; "
                                 "choose another --out")


def _suffix(path: Path) -> str:
    low = path.name.lower()
    for ext in NIFTI_EXTENSIONS:
        if low.endswith(ext):
            return path.name[-len(ext):]
    return path.suffix


class Interrupted(KeyboardInterrupt):
    """Raised by :func:`stop_on_signals`'s handlers; ``signum`` is the signal received."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


_defer = 0  # > 0 while AtomicFiles creates or renames files: a stop signal waits until done
_pending: int | None = None


def _stop_handler(signum, frame) -> None:
    global _pending
    if _defer:
        _pending = signum
        return
    raise Interrupted(signum)


class _deferring:
    """Context: stop signals arriving inside are raised at its end (as :class:`Interrupted`)."""

    def __enter__(self) -> None:
        global _defer
        _defer += 1

    def __exit__(self, *exc) -> None:
        global _defer, _pending
        _defer -= 1
        if not _defer and _pending is not None:
            signum, _pending = _pending, None
            raise Interrupted(signum)


class stop_on_signals:
    """Context manager: SIGINT and SIGTERM (SLURM, torchrun, ``kill``) raise :class:`Interrupted`
    (a KeyboardInterrupt) in the main thread, so that :class:`AtomicFiles` removes its temporary
    files; the previous handlers come back on exit. Does nothing outside the main thread."""

    SIGNALS = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM") if hasattr(signal, n))

    def __enter__(self) -> "stop_on_signals":
        self._old = {}
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._old[s] = signal.signal(s, _stop_handler)
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


class AtomicFiles:
    """Context manager: ``tmp = files.temp(final)`` gives a hidden temporary path in the same
    folder (keeping the extension, so writers pick the right format); on a clean exit every
    temporary file is renamed to its final name, on an exception (Ctrl-C or SIGTERM under
    :class:`stop_on_signals` included) all are removed. A stop signal arriving while the files are
    renamed takes effect once all are in place."""

    def __init__(self) -> None:
        self._pairs: list[tuple[Path, Path]] = []
        self._made: list[Path] = []  # folders created here (removed again if left empty)

    def temp(self, final: str | Path) -> Path:
        final = Path(final)
        missing = [d for d in (final.parent, *final.parent.parents) if not d.exists()]
        final.parent.mkdir(parents=True, exist_ok=True)
        self._made.extend(missing)  # deepest first
        with _deferring():
            fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".part" + _suffix(final),
                                       dir=final.parent)
            os.close(fd)
            self._pairs.append((Path(tmp), final))
        return Path(tmp)

    def __enter__(self) -> "AtomicFiles":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            try:
                with _deferring():
                    for tmp, final in self._pairs:
                        publish_mode(tmp)
                        os.replace(tmp, final)
                return
            except BaseException:
                self._cleanup()
                raise
        self._cleanup()

    def _cleanup(self) -> None:
        for tmp, _ in self._pairs:
            try:
                tmp.unlink()
            except FileNotFoundError:
                pass
        for d in self._made:  # an interrupted first write leaves no empty --out folder behind
            try:
                d.rmdir()
            except OSError:  # not empty (other outputs, the user's files) or already gone
                pass


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
