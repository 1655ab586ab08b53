"""Triage scores: how anomalous a slice, a volume or an image is, from its filtered anomaly map.

Three scores, per slice (or 2D image) and per input:

* ``masked_fraction``: the paper's image-level score, the share of latent bits the sampler
  masked (per input: the mean over the slices that ran; empty slices are skipped).
* ``area``: the foreground pixels above the calibrated threshold at its default FPR, components
  smaller than ``min_size`` removed (per input: their sum, and ``area_fraction`` = that sum over the
  input's foreground pixels). NaN for a model without calibration.
* ``peak``: a robust maximum of the filtered map, its :data:`PEAK_PERCENTILE` th percentile over
  the slice (the value only the top 0.1% of the slice's pixels exceed: 58 pixels of a 240 x 240
  slice, 16 of a 128 x 128 one; a handful of outlying pixels does not move it, a lesion of a few
  dozen pixels does). Per input: the largest slice peak (and which slice), so a lesion in a few
  slices of a volume counts fully.

``berdiff detect`` ranks its inputs by :data:`RANK_BY` (peak; ties by area), most anomalous
first. :class:`KeptMaps` re-segments kept maps at any absolute threshold without sampling again
(the widget's threshold slider; ``benchmarks/bench_threshold.py`` times it).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .postprocess import paper_anomaly_map, remove_small_components
from .settings import POST

__all__ = ["PEAK_PERCENTILE", "RANK_BY", "slice_scores", "input_scores", "triage_input",
           "rank_inputs", "summary_csv", "KeptMaps", "SCORE_NAMES", "SUMMARY_COLUMNS"]

PEAK_PERCENTILE = 99.9
RANK_BY = ("peak", "area")  # the summary's order: by peak, ties by area
SCORE_NAMES = ("masked_fraction", "area", "peak")
TRIAGE_RULES = {
    "peak": f"the {PEAK_PERCENTILE}th percentile of each slice's filtered map; per input the "
            "largest (peak_slice: where)",
    "area": "pixels above the calibrated threshold at its default FPR, components smaller than "
            "min_size removed; per input the sum (area_fraction: over its foreground pixels)",
    "masked_fraction": "the share of latent bits the sampler masked; per input the mean over "
                       "the slices that ran",
    "median_error": "the median of the filtered map over the input's foreground (compared with "
                    "healthy calibration slices for the out-of-distribution warning)",
}


def peak(amap: np.ndarray) -> np.ndarray:
    """The robust maximum of each ``(H, W)`` map of an ``(N, H, W)`` stack (or of one map)."""
    a = np.asarray(amap, dtype=np.float32)
    if a.ndim == 2:
        return np.float32(np.percentile(a, PEAK_PERCENTILE))
    return np.percentile(a.reshape(len(a), -1), PEAK_PERCENTILE, axis=1).astype(np.float32)


def slice_scores(amap: np.ndarray, masked_fraction: Sequence[float], fg: np.ndarray,
                 calibrated: float | None, min_size: int = POST.min_size,
                 connectivity: int = POST.connectivity) -> dict[str, np.ndarray]:
    """Per-slice scores of filtered maps ``amap`` (N, H, W): ``masked_fraction``, ``area``
    (pixels above ``calibrated`` after small-component removal; NaN without a threshold),
    ``peak`` and ``foreground`` (pixels of ``fg``, the foreground masks)."""
    a = np.asarray(amap, dtype=np.float32)
    n = len(a)
    if calibrated is None:
        area = np.full(n, np.nan)
    else:
        seg = remove_small_components((a > float(calibrated)) & np.asarray(fg, bool), min_size,
                                      connectivity)
        area = seg.reshape(n, -1).sum(axis=1).astype(np.float64)
    return {"masked_fraction": np.asarray(masked_fraction, dtype=np.float64).reshape(n),
            "area": area, "peak": peak(a).astype(np.float64).reshape(n),
            "foreground": np.asarray(fg).reshape(n, -1).sum(axis=1).astype(np.int64)}


def input_scores(per_slice: dict[str, np.ndarray], slice_numbers: Sequence[int],
                 ran: np.ndarray | None = None) -> dict[str, Any]:
    """One input's scores from its :func:`slice_scores` (``ran``: slices the sampler ran, i.e.
    not skipped as empty; default all): see the module docstring."""
    n = len(per_slice["peak"])
    ran = np.ones(n, bool) if ran is None else np.asarray(ran, bool)
    fg = int(per_slice["foreground"].sum())
    area = per_slice["area"]
    has_area = bool(np.isfinite(area).all()) and n > 0
    total = float(area.sum()) if has_area else float("nan")
    k = int(np.argmax(per_slice["peak"])) if n else 0
    return {"masked_fraction": float(per_slice["masked_fraction"][ran].mean()) if ran.any() else 0.0,
            "area": total, "area_fraction": total / fg if has_area and fg else
            (0.0 if has_area else float("nan")),
            "peak": float(per_slice["peak"][k]) if n else float("nan"),
            "peak_slice": int(slice_numbers[k]) if n else -1, "foreground": fg}


def triage_input(amap: np.ndarray, x: np.ndarray, masked_fraction: Sequence[float],
                 slice_numbers: Sequence[int], skipped: Sequence[int] = (), calibration=None,
                 min_size: int = POST.min_size,
                 connectivity: int = POST.connectivity) -> tuple[dict, dict]:
    """``(per_slice, per_input)`` scores of one input: filtered maps ``amap`` (N, H, W) of the
    normalised inputs ``x`` (N, C, H, W) numbered ``slice_numbers`` (``skipped``: those the
    sampler skipped as empty). With a :class:`~.calibration.Calibration`, ``area`` counts pixels
    above its default threshold and ``per_input`` holds ``median_error`` (the median of the map
    over the input's foreground) and ``warning`` (:meth:`~.calibration.Calibration.ood_note`)."""
    from .calibration import foreground

    fg = foreground(x)
    thr = None if calibration is None else calibration.default_threshold
    per = slice_scores(amap, masked_fraction, fg, thr, min_size, connectivity)
    ran = ~np.isin(np.asarray(slice_numbers), np.asarray(list(skipped), dtype=np.int64))
    out = input_scores(per, slice_numbers, ran)
    a = np.asarray(amap)
    med = float(np.median(a[fg])) if fg.any() else float("nan")
    out["median_error"] = med
    out["warning"] = None if calibration is None else calibration.ood_note(med)
    return per, out


SUMMARY_COLUMNS = ("rank", "input", "outputs", "slices", "peak", "peak_slice", "area",
                   "area_fraction", "masked_fraction", "seg_pixels", "median_error", "warning")


def summary_csv(rows: list[dict]) -> str:
    """The run summary (:func:`rank_inputs` order) as CSV text with :data:`SUMMARY_COLUMNS`."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(SUMMARY_COLUMNS), extrasaction="ignore",
                       lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: "" if r.get(k) is None or (isinstance(r.get(k), float) and
                                                  not np.isfinite(r[k])) else r[k]
                    for k in SUMMARY_COLUMNS})
    return buf.getvalue()


def rank_inputs(rows: list[dict]) -> list[dict]:
    """``rows`` (each with the :func:`input_scores` keys) from most to least anomalous, each
    given its ``rank`` (1 = most anomalous)."""
    def key(r):
        return tuple(-(v if np.isfinite(v) else -np.inf) for v in (float(r[k]) for k in RANK_BY))

    out = sorted(rows, key=key)
    for i, r in enumerate(out, 1):
        r["rank"] = i
    return out


class KeptMaps:
    """Kept inputs and reconstructions of a run, re-segmented at any absolute threshold without
    sampling again: the 5x5 median-filtered map of a slice is computed on first use and cached,
    then each threshold costs one comparison and a connected-component pass.

    ``x``, ``rec``: (N, C, H, W) input and reconstruction (one P of a sweep); ``calibration``: a
    :class:`~.calibration.Calibration` for :meth:`fpr` (optional); ``maps``: the (N, H, W)
    filtered maps where already computed (e.g. by the widget's worker); ``within``: (N, H, W)
    foreground masks that :meth:`segment` is restricted to, as ``berdiff detect``'s absolute rules
    are (:func:`~.calibration.foreground`)."""

    def __init__(self, x: np.ndarray, rec: np.ndarray, *, median_size: int = POST.median_size,
                 min_size: int = POST.min_size, connectivity: int = POST.connectivity,
                 calibration=None,
                 maps: np.ndarray | None = None, within: np.ndarray | None = None):
        self.x, self.rec = np.asarray(x), np.asarray(rec)
        if self.x.shape != self.rec.shape or self.x.ndim != 4:
            raise ValueError(f"need (N, C, H, W) inputs and reconstructions of one shape, got "
                             f"{self.x.shape} and {self.rec.shape}")
        self.median_size, self.min_size, self.connectivity = median_size, min_size, connectivity
        self.calibration = calibration
        self.within = None if within is None else np.asarray(within, bool)
        for name, a in (("maps", maps), ("within", self.within)):
            if a is not None and a.shape != self.x.shape[:1] + self.x.shape[2:]:
                raise ValueError(f"{name} must be (N, H, W) = {self.x.shape[:1] + self.x.shape[2:]}, "
                                 f"got {a.shape}")
        self._maps: dict[int, np.ndarray] = {} if maps is None else dict(enumerate(maps))

    def __len__(self) -> int:
        return len(self.x)

    def precompute(self, chunk: int = 16) -> None:
        """Filter every slice's map now (a few slices per call), so that every later
        :meth:`segment` costs only the comparison and the component pass (e.g. in the widget's
        worker thread right after a run)."""
        todo = [i for i in range(len(self.x)) if i not in self._maps]
        for a in range(0, len(todo), chunk):
            part = todo[a:a + chunk]
            maps = paper_anomaly_map(self.x[part], self.rec[part], self.median_size)
            self._maps.update(zip(part, maps))

    def map(self, i: int) -> np.ndarray:
        """The filtered anomaly map of slice ``i`` (as ``berdiff detect`` writes it)."""
        i = int(i)
        if i not in self._maps:
            self._maps[i] = paper_anomaly_map(self.x[i], self.rec[i], self.median_size)
        return self._maps[i]

    def segment(self, i: int, threshold: float) -> np.ndarray:
        """Slice ``i``'s segmentation at an absolute ``threshold`` (bool (H, W)), within its
        foreground where given."""
        m = self.map(i) > float(threshold)
        if self.within is not None:
            m &= self.within[int(i)]
        return remove_small_components(m, self.min_size, self.connectivity)

    def fpr(self, threshold: float) -> float | None:
        """The threshold's FPR on healthy calibration pixels (None without a calibration)."""
        return None if self.calibration is None else self.calibration.fpr_at(threshold)
