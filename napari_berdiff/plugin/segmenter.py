"""The widget's segmentation rule, and re-segmenting a run's kept maps without sampling again
(no Qt).

The rule is ``berdiff detect``'s (:func:`~napari_berdiff.core.inference.calibration.rule_for`):
``map > `` the model's calibrated threshold by default; the paper rule (each slice's map scaled to
its own percentiles, > 0.5) on request, and as the named fallback of a model without calibration.
The threshold slider moves the calibrated rule to an absolute threshold of its choosing (still
within the foreground, with its healthy FPR).

A run's worker hands over, per swept P, the filtered maps it segmented
(:class:`~napari_berdiff.core.inference.triage.KeptMaps`), so that a new threshold or rule costs a
comparison and a connected-component pass per slice.
"""

from __future__ import annotations

import math

import numpy as np

from ..core.inference.calibration import Calibration, ThresholdRule, resolve_rule, rule_for
from ..core.inference.settings import POST
from ..core.inference.triage import KeptMaps, peak

__all__ = ["MODES", "widget_rule", "slider_range", "segment_kept", "slice_scores", "Segmenter"]

MODES = (("calibrated threshold", "calibrated"), ("paper rule (per slice)", "paper"))
SLIDER_STEPS = 1000  # the threshold slider's resolution over its range


def widget_rule(meta: dict | None, mode: str, threshold: float | None = None) -> ThresholdRule:
    """The rule for a model's ``meta``, the chosen ``mode`` ("calibrated" or "paper") and the
    slider's ``threshold`` (None or the calibrated value: the calibrated rule itself; another
    value: the absolute rule at it). ValueError for a malformed calibration."""
    if mode == "paper":
        return resolve_rule(meta, "paper")
    rule = rule_for(meta, POST)  # calibrated, or the paper rule with a note when uncalibrated
    if rule.mode != "calibrated" or threshold is None or math.isclose(
            float(threshold), rule.value, rel_tol=1e-6, abs_tol=1e-12):
        return rule
    return resolve_rule(meta, "absolute", abs_threshold=float(threshold))


def slider_range(cal: Calibration | None, map_high: float = 0.0) -> tuple[float, float]:
    """``(maximum, step)`` of the threshold slider (from 0): beyond both the largest healthy
    calibration value and twice the calibrated threshold, and beyond ``map_high`` (a run's
    largest map values) so that a lesion's range can be explored."""
    hi = 0.0 if cal is None else max(1.25 * cal.max_value, 2.0 * cal.default_threshold)
    hi = max(hi, 1.1 * float(map_high), 1e-6)
    return hi, hi / SLIDER_STEPS


def segment_kept(kept: KeptMaps, rule: ThresholdRule) -> np.ndarray:
    """(N, H, W) uint8 segmentation of every kept slice by ``rule`` (the absolute rules within
    the kept foreground, as ``berdiff detect``)."""
    h, w = kept.x.shape[-2:]
    out = np.zeros((len(kept), h, w), np.uint8)
    for i in range(len(kept)):
        within = None if kept.within is None else kept.within[i]
        out[i] = rule.apply(kept.map(i), POST.min_size, POST.connectivity, within=within)
    return out


class Segmenter:
    """The shown run's kept maps (one :class:`KeptMaps` per swept P) and the rule in force;
    :meth:`segmentation` gives a P's segmentation by that rule, computing it when needed."""

    def __init__(self):
        self.outcome = None  # the run's DetectionResult (its segmentation is filled in here)
        self.rule: ThresholdRule | None = None
        self.foreground: np.ndarray | None = None
        self.kept: dict[int, KeptMaps] = {}
        self._peaks: dict[int, np.ndarray] = {}

    def start(self, outcome, rule: ThresholdRule, foreground: np.ndarray | None) -> None:
        """A new run's result (its first P's segmentation made with ``rule`` already)."""
        self.outcome, self.rule, self.foreground = outcome, rule, foreground
        self.kept, self._peaks = {}, {}

    def keep(self, k: int, maps: np.ndarray | None) -> KeptMaps:
        """Keep P index ``k``'s filtered maps (None: computed when first needed)."""
        out = self.outcome
        self.kept[k] = KeptMaps(out.input, out.reconstruction[k], median_size=POST.median_size,
                                min_size=POST.min_size, connectivity=POST.connectivity,
                                maps=maps, within=self.foreground)
        return self.kept[k]

    def kept_maps(self, k: int) -> KeptMaps:
        return self.kept[k] if k in self.kept else self.keep(k, None)

    def accept(self, k: int, segmentation: np.ndarray, rule: ThresholdRule) -> bool:
        """A segmentation the worker made with ``rule``: stored when that is still the rule in
        force (True), dropped otherwise (it is made again from the kept maps when shown)."""
        if self.outcome is None or rule != self.rule:
            return False
        self.outcome.segmentation[k] = segmentation
        self.outcome.seg_ready[k] = True
        return True

    def set_rule(self, rule: ThresholdRule) -> bool:
        """Change the rule in force; every segmentation made by another is stale (True)."""
        if rule == self.rule:
            return False
        self.rule = rule
        if self.outcome is not None:
            self.outcome.seg_ready = [False] * len(self.outcome.thresholds)
        return True

    def segmentation(self, k: int) -> np.ndarray:
        """P index ``k``'s segmentation by the rule in force (made from the kept maps now when it
        is not ready)."""
        out = self.outcome
        if not out.seg_ready[k]:
            out.segmentation[k] = segment_kept(self.kept_maps(k), self.rule)
            out.seg_ready[k] = True
        return out.segmentation[k]

    def peaks(self, k: int) -> np.ndarray:
        """The robust peak (triage) of each slice's filtered map for P index ``k``."""
        if k not in self._peaks:
            kept = self.kept_maps(k)
            self._peaks[k] = np.array([float(peak(kept.map(i))) for i in range(len(kept))])
        return self._peaks[k]


def slice_scores(outcome, k: int, segmenter: Segmenter) -> tuple[dict, dict]:
    """The triage scores per slice of swept P index ``k`` besides the masked fraction: ``area``
    (pixels of its segmentation by the rule in force: above the calibrated threshold by default)
    and ``peak`` (the robust peak of each filtered map); and their axis labels."""
    seg = outcome.segmentation[k]
    area = seg.reshape(len(seg), -1).sum(axis=1).astype(float)
    if not outcome.seg_ready[k]:
        area[:] = np.nan  # not segmented yet
    rule = segmenter.rule
    what = "paper rule" if rule is None or rule.mode == "paper" else f"map > {rule.value:.4g}"
    # the peaks need the filtered maps: not computed here while the run still hands them over
    peaks = segmenter.peaks(k) if k in segmenter.kept else np.full(len(seg), np.nan)
    return ({"area": area, "peak": peaks},
            {"area": f"segmented area (px, {what})"})
