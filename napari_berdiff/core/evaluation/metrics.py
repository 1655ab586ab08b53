"""Segmentation, ranking and reconstruction metrics for the evaluation (docs/method.md §8).

Conventions for empty masks, single-class labels, PSNR and standard deviations are listed in
docs/design-notes.md ("Metric conventions") and in the evaluation report.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from ..inference.postprocess import normalize_map, paper_anomaly_map, remove_small_components
from ..inference.settings import POST

__all__ = ["dice", "auprc", "auroc", "psnr", "image_auroc", "summarize", "best_threshold",
           "DiceSweep", "PooledRanking", "paper_slice_metrics", "default_thresholds"]


def dice(pred: np.ndarray, label: np.ndarray, empty: float = 1.0) -> float:
    """``2 |A & B| / (|A| + |B|)`` over all elements; ``empty`` when both masks are empty."""
    a, b = np.asarray(pred, bool), np.asarray(label, bool)
    if a.shape != b.shape:
        raise ValueError(f"pred {a.shape} and label {b.shape} differ in shape")
    denom = int(a.sum()) + int(b.sum())
    if denom == 0:
        return float(empty)
    return 2.0 * int(np.count_nonzero(a & b)) / denom


def _flat(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel().astype(bool)
    if s.shape != y.shape:
        raise ValueError(f"{s.size} scores for {y.size} labels")
    return s, y


def auprc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the precision-recall curve (sklearn's average precision); NaN without
    positives or without negatives."""
    s, y = _flat(scores, labels)
    if y.all() or not y.any():
        return float("nan")
    return float(average_precision_score(y, s))


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (sklearn); NaN when only one class is present."""
    s, y = _flat(scores, labels)
    if y.all() or not y.any():
        return float("nan")
    return float(roc_auc_score(y, s))


def image_auroc(scores: Sequence[float], diseased: Sequence[bool]) -> float:
    """Image-level AUROC: a per-slice score (e.g. the masked fraction) ranking diseased slices
    above healthy ones; NaN when one group is empty."""
    return auroc(scores, diseased)


def psnr(x: np.ndarray, x_rec: np.ndarray) -> float:
    """``20 log10(max(x) / sqrt(mse))`` over all elements of one slice (all channels)."""
    a = np.asarray(x, dtype=np.float64)
    b = np.asarray(x_rec, dtype=np.float64)
    mse = float(np.mean((a - b) ** 2))
    peak = float(a.max())
    if peak <= 0:
        return float("nan")
    if mse == 0:
        return float("inf")
    return 20.0 * math.log10(peak / math.sqrt(mse))


def summarize(values: Iterable[float]) -> dict[str, float]:
    """``{"mean", "std", "n"}`` of the finite values (NaN mean/std when there are none)."""
    v = np.asarray(list(values), dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"mean": float("nan"), "std": float("nan"), "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std()), "n": int(v.size)}


# ----------------------------------------------------------------------------- thresholds


def default_thresholds(kind: str = "error", upper: float = 1.0, n: int = 96) -> np.ndarray:
    """A threshold grid: ``"error"`` geometric from ``1e-4 * upper`` to ``upper`` (squared-error
    maps span decades), ``"linear"`` evenly inside (0, upper) (intensities, normalised maps)."""
    if kind == "error":
        return np.geomspace(1e-4 * upper, upper, n)
    if kind == "linear":
        return np.linspace(0.0, upper, n + 2)[1:-1]
    raise ValueError(f"kind must be 'error' or 'linear', got {kind!r}")


class DiceSweep:
    """Pooled Dice at each threshold of a grid, accumulated slice stack by slice stack
    (``map > threshold``, then components smaller than ``min_size`` removed, per slice)."""

    def __init__(self, thresholds: Sequence[float], min_size: int = 0,
                 connectivity: int = POST.connectivity):
        self.thresholds = np.asarray(thresholds, dtype=np.float64)
        self.min_size, self.connectivity = int(min_size), connectivity
        self.inter = np.zeros(len(self.thresholds), np.int64)
        self.pred = np.zeros(len(self.thresholds), np.int64)
        self.label = 0

    def update(self, maps: np.ndarray, labels: np.ndarray, valid: np.ndarray | None = None) -> None:
        m = np.asarray(maps, dtype=np.float32)
        y = np.asarray(labels).astype(bool)
        if m.ndim == 2:
            m, y = m[None], y[None]
            valid = None if valid is None else np.asarray(valid)[None]
        if valid is not None:
            valid = np.asarray(valid, bool)
            y = y & valid
        self.label += int(y.sum())
        for j, t in enumerate(self.thresholds):
            p = m > t
            if valid is not None:
                p &= valid
            if not p.any():
                continue  # higher thresholds of a sorted grid may still hit; no early break
            p = remove_small_components(p, self.min_size, self.connectivity)
            self.inter[j] += int(np.count_nonzero(p & y))
            self.pred[j] += int(p.sum())

    def dice(self) -> np.ndarray:
        denom = self.pred + self.label
        return np.where(denom > 0, 2.0 * self.inter / np.maximum(denom, 1), 1.0)

    def best(self) -> tuple[float, float]:
        """``(threshold, pooled Dice)`` maximising the pooled Dice (the lowest such threshold on
        ties); NaNs when the grid is empty."""
        if len(self.thresholds) == 0:
            return float("nan"), float("nan")
        d = self.dice()
        j = int(np.argmax(d))
        return float(self.thresholds[j]), float(d[j])


def best_threshold(maps: np.ndarray, labels: np.ndarray, thresholds: Sequence[float] | None = None,
                   *, min_size: int = 0, connectivity: int = POST.connectivity,
                   valid: np.ndarray | None = None) -> tuple[float, float]:
    """The threshold of a grid maximising the pooled Dice of ``maps > t`` against ``labels``
    (stacks ``(N, H, W)``), for choosing a threshold on a validation split. The default grid is
    101 quantile-spaced values of the maps. Returns ``(threshold, pooled Dice)``."""
    m = np.asarray(maps, dtype=np.float32)
    if thresholds is None:
        thresholds = np.unique(np.quantile(m, np.linspace(0.0, 1.0, 101)))
    sweep = DiceSweep(thresholds, min_size, connectivity)
    sweep.update(m, labels, valid)
    return sweep.best()


# ----------------------------------------------------------------------------- pooled ranking


class PooledRanking:
    """Pooled AUPRC and AUROC over many slices' pixels, accumulated stack by stack.

    Exact (sklearn on all scores) while at most ``max_exact`` pixels have been added; beyond that
    the scores are binned into ``bins`` bins over ``[lo, hi]`` (on a square-root scale when
    ``sqrt``, which suits squared errors) and the curves are computed from the two histograms:
    this equals sklearn on the binned scores (ties grouped into one threshold) and needs constant
    memory. ``exact`` in :meth:`result` says which was used.
    """

    def __init__(self, lo: float = 0.0, hi: float = 1.0, *, sqrt: bool = False,
                 bins: int = 1 << 20, max_exact: int = 20_000_000):
        self.lo, self.hi, self.sqrt, self.bins, self.max_exact = lo, hi, sqrt, bins, max_exact
        self._scores: list[np.ndarray] | None = []
        self._labels: list[np.ndarray] = []
        self._n = 0
        self._pos = self._neg = None

    def _binned(self, s: np.ndarray) -> np.ndarray:
        lo, hi = self.lo, self.hi
        if self.sqrt:
            s, lo, hi = np.sqrt(np.maximum(s, 0)), math.sqrt(max(lo, 0)), math.sqrt(hi)
        idx = np.floor((s - lo) / max(hi - lo, 1e-12) * self.bins).astype(np.int64)
        return np.clip(idx, 0, self.bins - 1)

    def _to_histogram(self) -> None:
        self._pos = np.zeros(self.bins, np.int64)
        self._neg = np.zeros(self.bins, np.int64)
        for s, y in zip(self._scores or [], self._labels):
            self._add_hist(s, y)
        self._scores, self._labels = None, []

    def _add_hist(self, s: np.ndarray, y: np.ndarray) -> None:
        b = self._binned(s)
        self._pos += np.bincount(b[y], minlength=self.bins)
        self._neg += np.bincount(b[~y], minlength=self.bins)

    def update(self, scores: np.ndarray, labels: np.ndarray, valid: np.ndarray | None = None) -> None:
        s = np.asarray(scores, dtype=np.float32)
        y = np.asarray(labels).astype(bool)
        if valid is not None:
            v = np.asarray(valid, bool)
            s, y = s[v], y[v]
        s, y = s.ravel(), y.ravel()
        self._n += s.size
        if self._scores is not None and self._n > self.max_exact:
            self._to_histogram()
        if self._scores is None:
            self._add_hist(s, y)
        else:
            self._scores.append(s.copy())
            self._labels.append(y.copy())

    def result(self) -> dict[str, float | bool | int]:
        """``{"auprc", "auroc", "exact", "pixels", "positives"}`` (NaN for a single class)."""
        if self._scores is not None:
            s = np.concatenate(self._scores) if self._scores else np.zeros(0, np.float32)
            y = np.concatenate(self._labels) if self._labels else np.zeros(0, bool)
            return {"auprc": auprc(s, y), "auroc": auroc(s, y), "exact": True,
                    "pixels": int(s.size), "positives": int(y.sum())}
        pos, neg = self._pos[::-1], self._neg[::-1]  # descending score
        P, N = int(pos.sum()), int(neg.sum())
        out = {"exact": False, "pixels": P + N, "positives": P}
        if P == 0 or N == 0:
            return out | {"auprc": float("nan"), "auroc": float("nan")}
        keep = (pos + neg) > 0
        tp, fp = np.cumsum(pos[keep]), np.cumsum(neg[keep])
        recall = tp / P
        precision = tp / (tp + fp)
        ap = float(np.sum(np.diff(np.concatenate([[0.0], recall])) * precision))
        tpr = np.concatenate([[0.0], recall])
        fpr = np.concatenate([[0.0], fp / N])
        roc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
        return out | {"auprc": ap, "auroc": roc}


# ----------------------------------------------------------------------------- paper protocol


def paper_slice_metrics(x: np.ndarray, x_rec: np.ndarray, label: np.ndarray, *,
                        median_size: int = POST.median_size, threshold: float = POST.threshold,
                        min_size: int = POST.min_size, connectivity: int = POST.connectivity,
                        valid: np.ndarray | None = None,
                        amap: np.ndarray | None = None) -> dict[str, float]:
    """The paper protocol for one slice ``x``/``x_rec`` ``(C, H, W)``, ``label`` ``(H, W)``:
    median-filtered map, percentile-normalised (AUPRC, AUROC), thresholded with small
    components removed (Dice), PSNR. ``valid`` restricts the pixel metrics to a mask (the brain);
    ``amap`` passes a precomputed :func:`paper_anomaly_map`."""
    a = paper_anomaly_map(x, x_rec, median_size) if amap is None else amap
    a = normalize_map(a)
    y = np.asarray(label, bool)
    seg = remove_small_components(a > threshold, min_size, connectivity)
    if valid is not None:
        v = np.asarray(valid, bool)
        seg, y, a_s, y_s = seg & v, y & v, a[v], y[v]
    else:
        a_s, y_s = a, y
    return {"dice": dice(seg, y), "auprc": auprc(a_s, y_s), "auroc": auroc(a_s, y_s),
            "psnr": psnr(x, x_rec)}
