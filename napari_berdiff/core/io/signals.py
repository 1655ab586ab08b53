"""Stopping a batch run cleanly: SIGINT and SIGTERM become :class:`Interrupted` in the main
thread, and wait while output files are being renamed into place (:class:`.atomic.AtomicFiles`)."""

from __future__ import annotations

import signal
import threading

__all__ = ["Interrupted", "stop_on_signals", "deferred_signals"]


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


class deferred_signals:
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
    (a KeyboardInterrupt) in the main thread, so that :class:`.atomic.AtomicFiles` removes its temporary
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
