"""Writing files and folders so that an interrupted run never leaves a half-written result:
everything is written under a temporary name in the target's folder and renamed at the end."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .files import NIFTI_EXTENSIONS
from .signals import deferred_signals


def _read_umask() -> int:
    mask = os.umask(0o022)  # the only portable way to read it: set and restore at once
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def publish_mode(path: str | os.PathLike) -> None:
    """Give a temporary file or folder the permissions a plain ``open``/``mkdir`` would have
    given it (0666 / 0777 less the umask): tempfile creates them private (0600 / 0700), which
    would hide results from the rest of a lab group once renamed."""
    base = 0o777 if os.path.isdir(path) else 0o666
    os.chmod(path, base & ~_UMASK)


def check_can_write(out: str | os.PathLike, overwrite: bool) -> None:
    """FileExistsError when ``out`` exists and ``overwrite`` is off."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass overwrite=True (--overwrite) to replace it")


@contextmanager
def atomic_dir(final: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``final``; rename it to ``final`` when the block
    succeeds (replacing an existing ``final`` only with ``overwrite``), delete it on any failure.
    An existing ``final`` without ``overwrite`` raises FileExistsError before anything is written
    and again at the end (if it appeared meanwhile)."""
    final = Path(final)
    check_can_write(final, overwrite)
    if final.exists() and not final.is_dir():
        raise FileExistsError(f"{final} exists and is not a folder")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        check_can_write(final, overwrite)
        publish_mode(tmp)
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
            os.replace(final, old / final.name)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb") -> Iterator:
    """Yield an open temporary file beside ``path``; flush, fsync and rename it over ``path`` when
    the block succeeds, delete it on any failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        publish_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_file(path, "wb") as fh:
        fh.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def _suffix(path: Path) -> str:
    low = path.name.lower()
    for ext in NIFTI_EXTENSIONS:
        if low.endswith(ext):
            return path.name[-len(ext):]
    return path.suffix


class AtomicFiles:
    """Context manager: ``tmp = files.temp(final)`` gives a hidden temporary path in the same
    folder (keeping the extension, so writers pick the right format); on a clean exit every
    temporary file is renamed to its final name, on an exception (Ctrl-C or SIGTERM under
    :class:`.signals.stop_on_signals` included) all are removed. A stop signal arriving while the files are
    renamed takes effect once all are in place."""

    def __init__(self) -> None:
        self._pairs: list[tuple[Path, Path]] = []
        self._made: list[Path] = []  # folders created here (removed again if left empty)

    def temp(self, final: str | Path) -> Path:
        final = Path(final)
        missing = [d for d in (final.parent, *final.parent.parents) if not d.exists()]
        final.parent.mkdir(parents=True, exist_ok=True)
        self._made.extend(missing)  # deepest first
        with deferred_signals():
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
                with deferred_signals():
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
