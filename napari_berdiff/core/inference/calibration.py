"""Calibrated thresholds of a model's anomaly map, kept in its checkpoint (``meta["calibration"]``).

The map they apply to is the one ``berdiff detect`` writes: ``sum_c median_filter((x -
x_rec)^2, 5)``. ``berdiff calibrate`` (:mod:`napari_berdiff.core.evaluation.calibrate`) runs the
model over healthy validation slices and stores, JSON-safe:

* ``curve``: the false-positive rate (the share of healthy foreground pixels above a threshold)
  against the threshold, log-spaced from 1 down to a few pixels, so that any threshold maps to its
  FPR (:meth:`Calibration.fpr_at`) and any FPR to its threshold (:meth:`Calibration.threshold_at`);
* ``thresholds``: the thresholds at the FPRs asked for, ``default_fpr`` the one deployment uses
  (:data:`DEFAULT_FPR`: 0.1% of healthy foreground pixels, which segments almost nothing on
  healthy tissue);
* ``dice_optimal``: the threshold maximising the pooled Dice over the labelled validation slices,
  where there are diseased ones;
* ``healthy``: per-slice statistics of the healthy slices (median error over the foreground, the
  robust peak of :mod:`.triage`) for the out-of-distribution warning (:meth:`Calibration.ood_note`);
* ``source``: how they were obtained (data, L, P, S, seed, slices, pixels, model hash, time).

"Foreground" is :func:`foreground`: pixels where any input channel is > 0, holes filled (the
brain of a skull-stripped MRI slice; nearly all of an OCT B-scan).

Threshold rules of segmentation (:func:`resolve_rule`): ``calibrated`` (map > the calibrated
threshold at the default FPR; the default), ``paper`` (the evaluation protocol: each slice's map
scaled to its own 1st-99th percentiles, > 0.5, so every slice segments its own top range) and
``absolute`` (map > a threshold given by the user). A model without calibration falls back to
``paper`` with a note that says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from .settings import DEFAULT_FPR, DEFAULT_THRESHOLD_MODE, POST, THRESHOLD_MODES, PostProcess

__all__ = ["Calibration", "ThresholdRule", "resolve_rule", "rule_for", "effective_mode",
           "foreground", "fpr_grid", "DEFAULT_FPR", "THRESHOLD_MODES", "DEFAULT_THRESHOLD_MODE",
           "CALIBRATION_KEY", "OOD_FACTOR"]

PAPER_THRESHOLD = POST.threshold  # the paper's threshold on the per-slice normalised map
OOD_FACTOR = 4.0  # an input's median error above this x the healthy slices' 99th percentile warns
CALIBRATION_KEY = "calibration"
VERSION = 1
PAPER_RULE = ("the paper rule: each slice's map scaled to its own 1st-99th percentiles, > "
              f"{PAPER_THRESHOLD} (every slice gets a mask, healthy or not)")


def foreground(x: np.ndarray) -> np.ndarray:
    """(N, H, W) foreground of (N, C, H, W) inputs (or (H, W) of (C, H, W)): any channel > 0,
    holes filled (dark lesions clipped to 0 by the intensity normalisation stay inside)."""
    from scipy import ndimage

    x = np.asarray(x)
    single = x.ndim == 3
    fg = (x[None] if single else x) > 0
    fg = fg.any(axis=1)
    fg = np.stack([ndimage.binary_fill_holes(f) for f in fg]) if len(fg) else fg
    return fg[0] if single else fg


def fpr_grid(n_pixels: int, per_decade: int = 8, min_pixels: int = 5) -> np.ndarray:
    """The FPRs of the stored curve: 1 down to ``min_pixels / n_pixels`` (at most 1e-6),
    ``per_decade`` points per decade, decreasing."""
    low = max(1e-6, min_pixels / max(int(n_pixels), 1))
    if low >= 1.0:
        return np.array([1.0])
    n = int(math.ceil(-math.log10(low) * per_decade)) + 1
    return np.geomspace(1.0, low, n)


def _slice_range(r) -> dict | None:
    if r is None:
        return None
    if not isinstance(r, dict) or not {"first", "last"} <= set(r):
        raise ValueError("malformed calibration: slice_range needs first and last")
    return {"first": int(_num(r["first"], "slice_range first")),
            "last": int(_num(r["last"], "slice_range last")),
            "depth": None if r.get("depth") is None else int(_num(r["depth"], "depth"))}


def _num(v, what: str) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"malformed calibration: {what} is not a number ({v!r})") from None
    if not math.isfinite(f):
        raise ValueError(f"malformed calibration: {what} is not finite ({v!r})")
    return f


@dataclass(frozen=True)
class Calibration:
    """Calibrated thresholds of one model (see the module docstring); ``to_meta`` / ``from_meta``
    convert to and from the checkpoint's JSON-safe ``meta["calibration"]``."""

    curve_fpr: tuple[float, ...]  # decreasing, 1.0 first
    curve_threshold: tuple[float, ...]  # increasing (non-decreasing)
    max_value: float  # the largest healthy foreground value: no healthy pixel lies above it
    thresholds: dict[float, float]  # FPR asked for -> threshold
    n_pixels: int  # healthy foreground pixels pooled
    default_fpr: float = DEFAULT_FPR
    dice_optimal: dict | None = None  # {"threshold", "dice", "fpr", "n_slices", "n_diseased"}
    healthy: dict = field(default_factory=dict)  # per-slice statistics (see module docstring)
    source: dict = field(default_factory=dict)  # data, L, P, steps, seed, n_slices, model hash...
    slice_range: dict | None = None  # volumes: {"first", "last", "depth"} axial slices (RAS)

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def from_values(cls, values: np.ndarray, fprs: Sequence[float] = (DEFAULT_FPR,),
                    default_fpr: float | None = None, **extra) -> "Calibration":
        """From the pooled healthy foreground values of the filtered map."""
        v = np.sort(np.asarray(values, dtype=np.float64).ravel())
        if v.size == 0:
            raise ValueError("no healthy foreground pixels to calibrate on")
        grid = fpr_grid(v.size)
        default_fpr = float(fprs[0] if default_fpr is None else default_fpr)
        wanted = sorted({float(f) for f in fprs} | {default_fpr}, reverse=True)
        for f in wanted:
            if not 0.0 < f < 1.0:
                raise ValueError(f"false-positive rates must lie in (0, 1), got {f}")
            if f * v.size < 1.0:
                raise ValueError(f"an FPR of {f:g} needs at least {math.ceil(1 / f)} healthy "
                                 f"foreground pixels; the calibration data hold {v.size}")
        thr = np.quantile(v, 1.0 - grid)
        thr = np.maximum.accumulate(thr)  # rounding must not make the curve go down
        chosen = {f: float(np.quantile(v, 1.0 - f)) for f in wanted}
        return cls(tuple(float(f) for f in grid), tuple(float(t) for t in thr), float(v[-1]),
                   chosen, int(v.size), default_fpr, **extra)

    @classmethod
    def from_meta(cls, meta: dict | None) -> "Calibration | None":
        """The calibration stored in a checkpoint's meta (None when there is none); ValueError
        when the entry is malformed."""
        c = (meta or {}).get(CALIBRATION_KEY)
        if c is None:
            return None
        if not isinstance(c, dict) or not isinstance(c.get("curve"), dict):
            raise ValueError("malformed calibration: no curve (recalibrate with berdiff calibrate)")
        fpr = [_num(f, "curve FPR") for f in c["curve"].get("fpr", [])]
        thr = [_num(t, "curve threshold") for t in c["curve"].get("threshold", [])]
        if not fpr or len(fpr) != len(thr) or np.any(np.diff(fpr) >= 0) or np.any(np.diff(thr) < 0):
            raise ValueError("malformed calibration: the curve is not a decreasing FPR against an "
                             "increasing threshold")
        chosen = {_num(k, "FPR"): _num(t, "threshold") for k, t in
                  (c.get("thresholds") or {}).items()}
        default = _num(c.get("default_fpr", DEFAULT_FPR), "default_fpr")
        if default not in chosen:
            raise ValueError(f"malformed calibration: no threshold at its default FPR {default:g}")
        return cls(tuple(fpr), tuple(thr), _num(c.get("max_value", thr[-1]), "max_value"),
                   chosen, int(_num(c.get("n_pixels", 1), "n_pixels")), default,
                   c.get("dice_optimal"), dict(c.get("healthy") or {}),
                   dict(c.get("source") or {}), _slice_range(c.get("slice_range")))

    def to_meta(self) -> dict:
        """JSON-safe form (FPR keys as strings, as JSON keeps them)."""
        return {"version": VERSION,
                "map": "sum_c median_filter((x - x_rec)^2, 5), as berdiff detect writes it",
                "fpr_of": "healthy foreground pixels (any channel > 0, holes filled)",
                "default_fpr": self.default_fpr,
                "thresholds": {repr(float(k)): float(v) for k, v in sorted(self.thresholds.items())},
                "dice_optimal": self.dice_optimal, "max_value": self.max_value,
                "n_pixels": self.n_pixels,
                "curve": {"fpr": list(self.curve_fpr), "threshold": list(self.curve_threshold)},
                "healthy": self.healthy, "source": self.source, "slice_range": self.slice_range}

    # -- lookups ---------------------------------------------------------------------------
    def slice_range_for(self, depth: int) -> tuple[int, int] | None:
        """``(first, last)`` axial slices (RAS) the calibration covered, for a volume of ``depth``
        slices like those calibrated on; None otherwise (or without a recorded range)."""
        r = self.slice_range
        if not r or r.get("depth") is None or int(r["depth"]) != int(depth):
            return None
        return int(r["first"]), int(r["last"])

    @property
    def default_threshold(self) -> float:
        return float(self.thresholds[self.default_fpr])

    def threshold_at(self, fpr: float) -> float:
        """The threshold whose healthy FPR is ``fpr`` (exact for the FPRs calibrated, log-linear
        interpolation on the curve otherwise); ValueError outside the curve's range."""
        f = float(fpr)
        for k, t in self.thresholds.items():
            if abs(k - f) <= 1e-12 * max(k, 1e-300):
                return float(t)
        lo = self.curve_fpr[-1]
        if not lo <= f <= 1.0:
            raise ValueError(f"an FPR of {f:g} is outside the calibrated range {lo:.2g}..1")
        lf = np.log10(np.asarray(self.curve_fpr))[::-1]  # increasing
        return float(np.interp(math.log10(f), lf, np.asarray(self.curve_threshold)[::-1]))

    def fpr_at(self, threshold: float) -> float:
        """The share of healthy foreground calibration pixels above ``threshold`` (interpolated on
        the curve, log-linear in the FPR); 0 at or above the largest healthy value."""
        t = float(threshold)
        thr = np.asarray(self.curve_threshold)
        if t >= self.max_value:
            return 0.0
        if t < thr[0]:
            return 1.0
        lf = np.log10(np.asarray(self.curve_fpr))
        if t > thr[-1]:  # between the last curve point and the largest value: down to 1 pixel
            n = max(self.n_pixels, 1)
            span = self.max_value - thr[-1]
            w = (t - thr[-1]) / span if span > 0 else 1.0
            return float(10 ** (lf[-1] + w * (math.log10(1.0 / n) - lf[-1])))
        # thresholds may repeat (flat stretches): take the largest FPR of equal thresholds
        j = int(np.searchsorted(thr, t, side="right"))
        if j >= len(thr):
            return float(10 ** lf[-1])
        t0, t1 = thr[j - 1], thr[j]
        w = (t - t0) / (t1 - t0) if t1 > t0 else 1.0
        return float(10 ** (lf[j - 1] + w * (lf[j] - lf[j - 1])))

    def setting_note(self, L: int, P: float, steps: int | None) -> str | None:
        """A warning when a run's (L, P, S) differ from those calibrated at, else None."""
        s = self.source
        diff = [f"{k}={v}" for k, v, c in (("L", L, s.get("L")), ("P", P, s.get("P")),
                                            ("S", steps, s.get("steps")))
                if c is not None and v is not None and abs(float(v) - float(c)) > 1e-9]
        if not diff:
            return None
        return (f"the calibration was made at L={s.get('L')}, P={s.get('P')}, S={s.get('steps')}; "
                f"this run uses {', '.join(diff)}, so its threshold may not mean the calibrated FPR")

    def ood_note(self, median_error: float) -> str | None:
        """A warning when an input's median filtered error over its foreground lies far above
        that of the healthy calibration slices (:data:`OOD_FACTOR` x their 99th percentile)."""
        ref = (self.healthy.get("median_error") or {}).get("p99")
        if ref is None or not np.isfinite(median_error):
            return None
        limit = OOD_FACTOR * float(ref)
        if median_error <= limit:
            return None
        return (f"far from the model's training data: its median reconstruction error "
                f"{median_error:.3g} is {median_error / max(float(ref), 1e-30):.0f}x that of "
                f"healthy calibration slices (99th percentile {float(ref):.3g}); its maps and "
                "masks mean little")

    def summary(self) -> dict:
        """What ``berdiff inspect`` shows (the curve summarised)."""
        return {"default": {"fpr": self.default_fpr, "threshold": self.default_threshold},
                "thresholds": {f"FPR {k:.3g}": v for k, v in sorted(self.thresholds.items())},
                "dice_optimal": self.dice_optimal,
                "curve": f"{len(self.curve_fpr)} points, FPR 1 .. {self.curve_fpr[-1]:.2g} "
                         f"(threshold {self.curve_threshold[0]:.3g} .. {self.curve_threshold[-1]:.3g})",
                "healthy": self.healthy, "source": self.source, "slice_range": self.slice_range}


# -- segmentation rules ------------------------------------------------------------------------
@dataclass(frozen=True)
class ThresholdRule:
    """How a filtered anomaly map becomes a segmentation: ``mode`` of :data:`THRESHOLD_MODES`,
    ``value`` the absolute threshold (calibrated / absolute) or the threshold on the per-slice
    normalised map (paper); ``fpr`` the healthy FPR of an absolute value where the model is
    calibrated; ``note`` a message for the user (e.g. the fallback of an uncalibrated model)."""

    mode: str
    value: float
    description: str
    fpr: float | None = None
    note: str | None = None

    def apply(self, amap: np.ndarray, min_size: int = POST.min_size,
              connectivity: int = POST.connectivity,
              within: np.ndarray | None = None) -> np.ndarray:
        """Segment ``(H, W)`` or ``(N, H, W)`` filtered maps (bool, components < ``min_size``
        removed per slice). ``within``: the foreground (:func:`foreground`) the absolute rules
        are restricted to, as their FPR is defined over it (the paper rule ignores it)."""
        from .postprocess import normalize_map, remove_small_components, segment

        if self.mode == "paper":
            return segment(normalize_map(amap), self.value, min_size, connectivity)
        m = np.asarray(amap) > self.value
        if within is not None:
            m &= np.asarray(within, bool)
        return remove_small_components(m, min_size, connectivity)

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "threshold": self.value, "fpr_healthy": self.fpr,
                "rule": self.description}


def effective_mode(mode: str | None, abs_threshold: float | None) -> str:
    """The threshold mode of a run: as given, else ``absolute`` when an absolute threshold is
    given, else :data:`DEFAULT_THRESHOLD_MODE`."""
    if mode is not None:
        return mode
    return "absolute" if abs_threshold is not None else DEFAULT_THRESHOLD_MODE


def resolve_rule(meta: dict | None, mode: str | None = None, *,
                 abs_threshold: float | None = None, fpr: float | None = None,
                 paper_threshold: float = PAPER_THRESHOLD) -> ThresholdRule:
    """The segmentation rule for a model (its ``meta``) and the options of a run (ValueError for
    options that contradict each other or the model). ``mode`` None: :func:`effective_mode`."""
    mode = effective_mode(mode, abs_threshold)
    if mode not in THRESHOLD_MODES:
        raise ValueError(f"threshold mode must be one of {', '.join(THRESHOLD_MODES)}, got {mode!r}")
    cal = Calibration.from_meta(meta)
    if fpr is not None and mode != "calibrated":
        raise ValueError(f"an FPR applies to the calibrated threshold mode, not to {mode!r}")
    if mode == "absolute":
        if abs_threshold is None or not math.isfinite(float(abs_threshold)):
            raise ValueError("the absolute threshold mode needs a threshold (--abs-threshold T)")
        t = float(abs_threshold)
        f = cal.fpr_at(t) if cal is not None else None
        where = f" (FPR {f:.3g} on healthy calibration pixels)" if f is not None else ""
        return ThresholdRule("absolute", t, f"map > {t:g}{where}", f)
    if abs_threshold is not None:
        raise ValueError(f"an absolute threshold contradicts the {mode!r} threshold mode")
    if mode == "calibrated" and cal is not None:
        f = cal.default_fpr if fpr is None else float(fpr)
        t = cal.threshold_at(f)
        return ThresholdRule("calibrated", t, f"map > {t:.4g}, the calibrated threshold at FPR "
                             f"{f:.3g} of healthy foreground pixels", f)
    rule = ThresholdRule("paper", float(paper_threshold), PAPER_RULE.replace(
        f"> {PAPER_THRESHOLD}", f"> {float(paper_threshold):g}"))
    if mode == "calibrated":
        if fpr is not None:
            raise ValueError("--fpr needs a calibrated model (berdiff calibrate MODEL PREPARED)")
        note = ("the model has no calibration (berdiff calibrate MODEL PREPARED adds one); "
                f"segmenting with {rule.description}")
        rule = ThresholdRule(rule.mode, rule.value, rule.description, None, note)
    return rule


def rule_for(meta: dict | None, post: PostProcess = POST) -> ThresholdRule:
    """:func:`resolve_rule` with the threshold fields of a :class:`.settings.PostProcess`."""
    return resolve_rule(meta, post.threshold_mode, abs_threshold=post.abs_threshold, fpr=post.fpr,
                        paper_threshold=post.threshold)
