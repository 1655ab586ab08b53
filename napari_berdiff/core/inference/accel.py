"""Speed settings for inference: CPU threads, mixed precision, channels_last, ``torch.compile``.

Pure torch; no napari or Qt. Used by :class:`napari_berdiff.core.inference.detector.Detector`, the CLI and
the benchmarks; :func:`configure_threads` is meant for the napari widget's worker thread too.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from typing import Callable

import torch

__all__ = ["AMP_MODES", "cpu_budget", "physical_cores", "configure_threads", "resolve_amp",
           "autocast", "to_channels_last", "maybe_compile", "CompiledFallback"]

AMP_MODES = ("off", "bf16", "fp16", "auto")
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


# -- CPU threads --------------------------------------------------------------------------
def physical_cores() -> int:
    """Physical cores of this machine (``/proc/cpuinfo``; hyper-threads count once), falling back
    to ``os.cpu_count()``."""
    try:
        cores, phys, core = set(), None, None
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, val = line.partition(":")
                key = key.strip()
                if key == "physical id":
                    phys = val.strip()
                elif key == "core id":
                    core = val.strip()
                elif not key and core is not None:  # blank line ends a processor block
                    cores.add((phys, core))
                    phys = core = None
        if core is not None:
            cores.add((phys, core))
        if cores:
            return len(cores)
    except OSError:
        pass
    return max(1, os.cpu_count() or 1)


def _cgroup_cpus() -> float | None:
    """CPU quota of this container (cgroup v2 ``cpu.max`` or v1 cfs quota), or None."""
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int(open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read())
        period = int(open("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None


def cpu_budget() -> int:
    """Cores this process may use: the smallest of the physical cores, the CPU affinity set and a
    container's CPU quota (at least 1)."""
    n = physical_cores()
    try:
        n = min(n, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        pass
    quota = _cgroup_cpus()
    if quota is not None:
        n = min(n, max(1, int(quota)))
    return max(1, n)


def configure_threads(threads: int | None = None, *, reserve_gui: bool = False,
                      respect_user: bool = True) -> int:
    """Set sensible torch CPU threads for inference in the *calling* thread; return the count used.

    - ``threads`` given: use exactly that (an explicit request always wins).
    - Otherwise, when the user already chose (``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` set in the
      environment, or ``torch.set_num_threads`` called with a value other than torch's start-up
      default) and ``respect_user``: leave torch alone and return its current count.
    - Otherwise: :func:`cpu_budget` threads (physical cores within the affinity set and container
      quota: hyper-threads slow these convolutions down), minus one when ``reserve_gui``.

    For the napari widget: call ``configure_threads(reserve_gui=True)`` at the start of the thread
    worker's function (OpenMP thread settings belong to the thread that sets them, so the GUI
    thread keeps its own and one core stays free for drawing), e.g.::

        @thread_worker
        def work():
            configure_threads(job.threads, reserve_gui=True)
            ...

    On a 2-core machine that gives one inference thread, which also avoids two OpenMP threads
    contending with the GUI and with each other.
    """
    global _LAST_SET
    if threads is not None:
        n = max(1, int(threads))
    elif respect_user and _user_chose_threads():
        return torch.get_num_threads()
    else:
        n = max(1, cpu_budget() - (1 if reserve_gui else 0))
    torch.set_num_threads(n)
    _LAST_SET = n
    return n


_STARTUP_THREADS = torch.get_num_threads()  # torch's default when this module was first imported
_LAST_SET: int | None = None  # the last count configure_threads set (not a user's choice)


def _user_chose_threads() -> bool:
    """True when OMP/MKL_NUM_THREADS is set or torch's threads were changed by someone else."""
    if any(os.environ.get(v) for v in THREAD_ENV_VARS):
        return True
    current = torch.get_num_threads()
    return current != _STARTUP_THREADS and current != _LAST_SET


# -- mixed precision ----------------------------------------------------------------------
def resolve_amp(amp: str | None, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``amp`` on ``device`` (None: full float32).

    ``"off"`` (or None): float32. ``"bf16"`` / ``"fp16"``: that dtype (``fp16`` is CUDA only;
    ``bf16`` on the CPU is allowed when asked for explicitly, mainly for tests: it is rarely
    faster there). ``"auto"``: bf16 on CUDA devices that support it, else fp16 on CUDA; off on the
    CPU and elsewhere.
    """
    amp = "off" if amp is None else str(amp).lower()
    if amp not in AMP_MODES:
        raise ValueError(f"amp must be one of {AMP_MODES}, got {amp!r}")
    dev = torch.device(device)
    if amp == "off":
        return None
    if amp == "auto":
        if dev.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if amp == "fp16" and dev.type != "cuda":
        raise ValueError("amp='fp16' needs a CUDA device; use 'bf16' or 'off' on the CPU")
    return torch.bfloat16 if amp == "bf16" else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` for ``dtype`` on ``device``, or a no-op context when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


# -- memory format and compilation ----------------------------------------------------------
def to_channels_last(module: torch.nn.Module) -> torch.nn.Module:
    """Convert a network's 4D weights to channels_last (NHWC) in place; returns the module."""
    return module.to(memory_format=torch.channels_last)


def input_layout(t: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """A network input in the memory format its network was set to (channels_last or as is)."""
    return t.contiguous(memory_format=torch.channels_last) if channels_last else t


class CompiledFallback:
    """Call a ``torch.compile``-d function, falling back to the eager one (once, with a warning)
    when compilation fails. Compilation is lazy, so failures show at the first call.

    ``status`` reads ``"on"`` before the first call and after successful calls, or
    ``"failed: <reason>; running eagerly"`` after a fallback.
    """

    def __init__(self, compiled: Callable, eager: Callable):
        self.compiled, self.eager = compiled, eager
        self.status = "on"

    def __call__(self, *args, **kwargs):
        if self.compiled is None:
            return self.eager(*args, **kwargs)
        try:
            return self.compiled(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - any compiler failure falls back to eager
            reason = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
            self.status = f"failed: {reason[:300]}; running eagerly"
            warnings.warn(f"torch.compile of the U-Net failed ({reason[:300]}); running without "
                          "compilation (same results, slower)", RuntimeWarning, stacklevel=2)
            self.compiled = None
            return self.eager(*args, **kwargs)


def maybe_compile(fn: Callable, compile: bool | str = False) -> Callable | CompiledFallback:
    """``fn`` unchanged when ``compile`` is falsy, else a :class:`CompiledFallback` around
    ``torch.compile(fn)`` (``compile=True``: the default inductor backend; a string names a
    backend, e.g. ``"eager"`` or ``"aot_eager"`` for debugging). When ``torch.compile`` itself is
    missing or raises, the fallback is immediate and its ``status`` says why."""
    if not compile:
        return fn
    backend = "inductor" if compile is True else str(compile)
    try:
        compiled = torch.compile(fn, backend=backend, dynamic=None)
    except Exception as err:  # noqa: BLE001
        out = CompiledFallback(None, fn)
        out.status = f"failed: {type(err).__name__}: {err}; running eagerly"
        warnings.warn(f"torch.compile is unavailable ({type(err).__name__}: {err}); running "
                      "without compilation", RuntimeWarning, stacklevel=2)
        return out
    return CompiledFallback(compiled, fn)
