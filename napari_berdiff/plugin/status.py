"""The widget's status line: pure functions of a run's progress and result (no Qt)."""

from __future__ import annotations

import math

__all__ = ["eta_seconds", "progress_text", "running_text", "done_text", "explain",
           "threshold_text"]


def eta_seconds(first: tuple[float, int] | None, tick) -> float | None:
    """Seconds left at the rate since ``first`` = (elapsed, done) of the first tick shown (which
    excludes loading and encoding); None until a later tick gives a rate."""
    if first is None:
        return None
    t0, d0 = first
    if tick.done > d0 and tick.elapsed > t0:
        return (tick.elapsed - t0) / (tick.done - d0) * (tick.total - tick.done)
    return None


def progress_text(tick, first: tuple[float, int] | None = None) -> str:
    """``"sampling: 3/11, 3.0 s, ETA 4.0 s, masked 12.5%"`` for a counted tick (ETA from
    :func:`eta_seconds`, the masked share where known), ``"model loaded (1.2 s)"`` otherwise."""
    if not (tick.total and tick.done):
        return f"{tick.stage} ({tick.elapsed:.1f} s)"
    eta = eta_seconds(first, tick)
    eta_part = "" if eta is None else f", ETA {eta:.1f} s"
    masked = f", masked {tick.masked:.1%}" if tick.masked == tick.masked else ""
    return f"{tick.stage}: {tick.done}/{tick.total}, {tick.elapsed:.1f} s{eta_part}{masked}"


def running_text(L: int, n_slices: int, n_thresholds: int) -> str:
    return f"running: L={L}, {n_slices} slice(s) x {n_thresholds} P value(s)"


def done_text(seconds: float, result, note: str | None = None) -> str:
    """The status line of a finished run (its DetectionResult), with ``note`` after it (e.g. an
    uncalibrated model's fallback rule)."""
    prov = result.provenance
    text = (f"done: {seconds:.1f} s on {prov['device']}, {len(result.slices)} slice(s) x "
            f"{len(result.thresholds)} P (L={prov['L']}, S={prov['steps']}, seed {prov['seed']})")
    return f"{text}. Note: {note}" if note else text


def threshold_text(rule, calibrated: float | None = None) -> str:
    """The line beside the threshold slider for a ThresholdRule: the threshold and its
    false-positive rate on healthy calibration pixels, or the paper rule (and why)."""
    if rule.mode == "paper":
        why = "no calibration in this model: " if rule.note else ""
        return (f"{why}paper rule, each slice's map scaled to its own 1-99th percentiles, "
                f"> {rule.value:g}")
    tag = (" (calibrated)" if calibrated is not None
           and math.isclose(rule.value, calibrated, rel_tol=1e-6, abs_tol=1e-12) else "")
    fpr = "" if rule.fpr is None else f": FPR {100 * rule.fpr:.3g}% of healthy calibration pixels"
    return f"map > {rule.value:.4g}{tag}{fpr}"


def explain(err: BaseException) -> str:
    """One sentence for the user from a worker exception."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    name = type(err).__name__
    if "out of memory" in text.lower() or name == "OutOfMemoryError":
        return ("out of memory: run fewer slices or a shorter P sweep, or choose the CPU "
                f"({text[:120]})")
    if isinstance(err, (ValueError, FileNotFoundError)):
        return text
    return f"the run failed ({name}: {text})"
