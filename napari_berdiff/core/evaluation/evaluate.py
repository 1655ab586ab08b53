"""Evaluate a detector on a prepared test split, with baselines (docs/method.md §8).

Methods (rows of the report):

* ``masked``    - the method: masked sampler at (L, P).
* ``unmasked``  - P = 0: plain partial diffusion (everything masked at the first step).
* ``ae_only``   - P = 1: the sampler never masks, so the output is the input's own code decoded
  (the autoencoder alone; its U-Net evaluations are wasted but share the batch).
* ``threshold`` - intensity thresholding: the FLAIR channel (BraTS) or the image (OCT) is the map.

The three model methods run as ONE detector sweep ``P = [P, 0, 1]`` per chunk of slices (same
encodings, same seeds per slice). Protocols, per method:

* paper: per diseased slice with a pixel label, the median-filtered error map normalised to the
  slice's [1, 99] percentiles (AUPRC, AUROC), thresholded at 0.5 with components < ``min_size``
  removed (Dice), and PSNR; mean +- std over those slices. The threshold baseline uses its raw
  intensity for AUPRC/AUROC and the validation threshold for Dice.
* strict: AUPRC/AUROC pooled over all pixel-labelled test pixels (healthy slices included) of the
  median-filtered, *unnormalised* map (comparable across slices); pooled Dice (and the mean
  per-diseased-slice Dice) at the threshold maximising pooled Dice on the validation split.
* image level: AUROC of the masked fraction (``masked`` only: P = 0 masks everything and P = 1
  nothing), of the segmented area at the validation threshold (every method), of the peak (the
  robust maximum of :mod:`..inference.triage`, every method) and, for a calibrated model, of the
  area above its calibrated threshold (``masked`` only), healthy vs diseased over all test slices.
* PSNR on healthy and on diseased slices separately (the autoencoder should reproduce anomalies).

Pixel labels: OCT scans of a diseased class without a mask file (``has_mask`` False) count for
image-level metrics only. ``brain_mask=True`` restricts the pixel metrics to pixels where any
input channel is > 0, with holes filled (dark lesions clipped to 0 by the intensity normalisation
stay inside; one touching the brain's edge would not); the paper scores the whole slice: the
default. The post-processing is in
:mod:`..inference.postprocess`, the metrics in :mod:`.metrics`, the reports in :mod:`.report`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from .metrics import (DiceSweep, PooledRanking, auprc, auroc, default_thresholds, dice,
                      image_auroc, paper_slice_metrics, psnr, summarize)
from ..inference.calibration import Calibration, foreground
from ..inference.postprocess import paper_anomaly_map, remove_small_components
from ..inference.triage import peak
from .splits import as_float, n_ticks, pixel_labelled
from .timing import rss_mb, time_methods
from ..inference.settings import DEFAULTS, POST
from ..diffusion.thresholds import find_p

__all__ = ["evaluate", "MODEL_METHODS", "ALL_METHODS", "threshold_channel"]

MODEL_METHODS = {"masked": None, "unmasked": 0.0, "ae_only": 1.0}  # None: the P asked for
ALL_METHODS = ("masked", "unmasked", "ae_only", "threshold")
PER_SLICE = ("dice", "auprc", "auroc", "psnr", "dice_val_threshold", "area", "masked_fraction",
             "peak", "area_calibrated")


def threshold_channel(meta: dict) -> int:
    """The channel the intensity baseline thresholds: FLAIR where named, else channel 0."""
    names = [str(n).lower() for n in (meta or {}).get("channels", [])]
    return names.index("flair") if "flair" in names else 0


def _brain(x: np.ndarray) -> np.ndarray:
    """(N, H, W) brain masks: input > 0 in any channel, holes filled (dark lesions at the
    normalisation's lower clip are exactly 0 in every channel but lie inside the brain); the
    foreground of :func:`..inference.calibration.foreground`."""
    return foreground(x)



def evaluate(detector, eval_split, val_split=None, *, L: int = DEFAULTS.L, P: float = DEFAULTS.P,
             steps: int | None = None, seed: int = DEFAULTS.seed, batch_size: int = 8,
             baselines: Sequence[str] = ("unmasked", "ae_only", "threshold"),
             min_size: int = POST.min_size, connectivity: int = POST.connectivity,
             median_size: int = POST.median_size,
             brain_mask: bool = False, chunk_size: int | None = None, timing_slices: int = 2,
             kinds: np.ndarray | None = None,
             progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Run every method on ``eval_split`` (and choose Dice thresholds on ``val_split``).

    Splits are :class:`src_training.train.datasets.EvalSplit`-like objects (``images`` (N, C, S, S)
    in [0, 1], ``labels``, ``healthy``, ``case_id``, ``slice_index``, ``has_mask``, ``meta``).
    ``kinds``: optional per-test-slice anomaly kind for a breakdown (see
    :func:`.report.anomaly_kinds`). ``timing_slices``: slices timed alone at batch
    size 1 per model method (the paper's time per image); 0 skips. ``progress(done, total)`` is
    called after each network evaluation. Returns a JSON-ready dict (see :func:`write_reports`).
    """
    ev = _setup(detector, eval_split, val_split, L=L, P=P, steps=steps, seed=seed,
                batch_size=batch_size, baselines=baselines, min_size=min_size,
                connectivity=connectivity, median_size=median_size, brain_mask=brain_mask,
                chunk_size=chunk_size, progress=progress)
    val_thr, val_dice, t_val = _validation(ev, val_split)
    test = _test(ev, eval_split, val_thr)
    timing = time_methods(detector, eval_split, test.scored, ev.model, ev.p_of, L=L, steps=steps,
                           seed=seed, n=timing_slices)
    rows = [_row(m, ev, test, val_thr[m], val_dice[m], timing) for m in ev.methods]
    per_kind = _per_kind(kinds, test.scored, ev.methods, test.per_slice) if kinds is not None else {}
    config = _config(ev, eval_split, val_split, test, P=P, seconds=(t_val, test.seconds))
    slices = {"case_id": [str(c) for c in eval_split.case_id],
              "slice_index": [int(s) for s in eval_split.slice_index],
              "healthy": test.healthy.tolist(), "pixel_labelled": test.lab_ok.tolist(),
              "kind": None if kinds is None else [str(k) for k in kinds],
              **{f"{m}_{k}": test.per_slice[m][k].tolist() for m in ev.methods for k in PER_SLICE
                 if np.isfinite(test.per_slice[m][k]).any()}}
    return {"config": config, "methods": rows, "per_kind": per_kind, "per_slice": slices}


@dataclass
class _Eval:
    """What every split of one evaluation shares: the methods and their P, the sampler and
    post-processing settings, the chunking and the progress count."""

    detector: Any
    methods: list[str]
    model: list[str]  # the model methods (sampled; the others are baselines on the image)
    p_of: dict[str, float]
    sweep_P: list[float]  # the methods' P, each once (p_key), in the methods' order
    k_of: dict[str, int]
    L: int
    steps: int | None
    n_steps: int
    seed: int
    batch_size: int
    chunk: int
    C: int
    thr_ch: int
    meta: dict
    min_size: int
    connectivity: int
    median_size: int
    brain_mask: bool
    tick: Callable[[Any], None]
    cal: Any = None  # the model's Calibration, if any

    @property
    def cal_thr(self) -> float:
        return float("nan") if self.cal is None else self.cal.default_threshold

    def maps(self, split, a: int, b: int):
        """Slices ``a:b`` of ``split``: (images, detection result, anomaly map per method)."""
        x = as_float(split.images[a:b])
        res = self.detector.detect(x, L=self.L, P=self.sweep_P, steps=self.steps, seed=self.seed,
                                   indices=list(range(a, b)), batch_size=self.batch_size,
                                   normalize="none", progress=self.tick,
                                   skip_empty=False)  # the protocols score every slice
        maps = {m: paper_anomaly_map(x, res.reconstruction[self.k_of[m]], self.median_size)
                for m in self.model}
        if "threshold" in self.methods:
            maps["threshold"] = x[:, self.thr_ch]
        return x, res, maps


def _setup(detector, eval_split, val_split, *, L, P, steps, seed, batch_size, baselines,
           min_size, connectivity, median_size, brain_mask, chunk_size, progress) -> _Eval:
    from ..diffusion.schedule import step_grid

    unknown = set(baselines) - set(ALL_METHODS)
    if unknown:
        raise ValueError(f"unknown baseline(s) {sorted(unknown)}; choose from {ALL_METHODS[1:]}")
    methods = ["masked"] + [m for m in ALL_METHODS[1:] if m in baselines]
    model = [m for m in methods if m in MODEL_METHODS]
    p_of = {m: float(P) if MODEL_METHODS[m] is None else MODEL_METHODS[m] for m in model}
    sweep_P: list[float] = []
    for m in model:
        if find_p(sweep_P, p_of[m]) is None:
            sweep_P.append(p_of[m])
    meta = dict(getattr(eval_split, "meta", {}) or {})
    n_steps = len(step_grid(L, steps)) - 1
    chunk = int(chunk_size or 4 * max(1, batch_size // len(sweep_P)))
    splits = ([val_split] if _has(val_split) else []) + [eval_split]
    total = sum(n_ticks(min(chunk, len(sp) - a), len(sweep_P), batch_size, n_steps)
                for sp in splits for a in range(0, len(sp), chunk))
    done = [0]

    def tick(_):
        done[0] += 1
        if progress is not None:
            progress(done[0], total)

    return _Eval(detector, methods, model, p_of, sweep_P, {m: find_p(sweep_P, p_of[m]) for m in model},
                 L, steps, n_steps, seed, batch_size, chunk, int(eval_split.images.shape[1]),
                 threshold_channel(meta), meta, min_size, connectivity, median_size, brain_mask,
                 tick, Calibration.from_meta(getattr(detector, "meta", None)))


def _has(split) -> bool:
    return split is not None and len(split) > 0


def _validation(ev: _Eval, val_split) -> tuple[dict, dict, float]:
    """Dice thresholds for the strict protocol and the intensity baseline, chosen on the
    validation split: (threshold, Dice) per method (NaN without one) and the seconds taken."""
    val_thr = {m: float("nan") for m in ev.methods}
    val_dice = {m: float("nan") for m in ev.methods}
    t0 = time.perf_counter()
    if not _has(val_split):
        return val_thr, val_dice, time.perf_counter() - t0
    grids = {m: default_thresholds("error", float(ev.C)) for m in ev.model}
    if "threshold" in ev.methods:
        grids["threshold"] = default_thresholds("linear", 1.0, 99)
    sweeps = {m: DiceSweep(grids[m], ev.min_size, ev.connectivity) for m in ev.methods}
    lab_ok = pixel_labelled(val_split)
    for a in range(0, len(val_split), ev.chunk):
        b = min(a + ev.chunk, len(val_split))
        x, _, maps = ev.maps(val_split, a, b)
        ok = lab_ok[a:b]
        if not ok.any():
            continue
        valid = _brain(x)[ok] if ev.brain_mask else None
        y = np.asarray(val_split.labels[a:b])[ok]
        for m in ev.methods:
            sweeps[m].update(maps[m][ok], y, valid)
    if any(s.label > 0 for s in sweeps.values()):
        for m in ev.methods:
            val_thr[m], val_dice[m] = sweeps[m].best()
    return val_thr, val_dice, time.perf_counter() - t0


@dataclass
class _Test:
    """The test split's per-slice values, pooled rankings and pooled Dice counts per method."""

    healthy: np.ndarray
    lab_ok: np.ndarray
    scored: np.ndarray  # the paper protocol's slices: diseased and pixel-labelled
    per_slice: dict
    rankings: dict
    counts: dict  # intersection, predicted, label (pooled Dice)
    seconds: float = 0.0


def _test(ev: _Eval, split, val_thr: dict) -> _Test:
    N = len(split)
    healthy = np.asarray(split.healthy, bool)
    lab_ok = pixel_labelled(split)
    t = _Test(healthy, lab_ok, ~healthy & lab_ok,
              {m: {k: np.full(N, np.nan) for k in PER_SLICE} for m in ev.methods},
              {m: PooledRanking(0.0, float(ev.C) if m in ev.model else 1.0, sqrt=m in ev.model)
               for m in ev.methods},
              {m: [0, 0, 0] for m in ev.methods})
    t0 = time.perf_counter()
    for a in range(0, N, ev.chunk):
        b = min(a + ev.chunk, N)
        x, res, maps = ev.maps(split, a, b)
        y_all = np.asarray(split.labels[a:b]).astype(bool)
        brain = _brain(x) if ev.brain_mask else None
        fg = brain if brain is not None else (_brain(x) if ev.cal is not None else None)
        for m in ev.methods:
            for i in range(b - a):
                _score(ev, t, m, a + i, x[i], res, i, maps[m][i], y_all[i],
                       None if brain is None else brain[i], val_thr[m],
                       None if fg is None else fg[i])
    t.seconds = time.perf_counter() - t0
    return t


def _score(ev: _Eval, t: _Test, m: str, g: int, x, res, i: int, amap, y_all, v, thr,
           fg=None) -> None:
    """Method ``m`` on test slice ``g`` (``i`` in its chunk): area, peak, area above the
    calibrated threshold (within the foreground ``fg``), masked fraction and PSNR; for a pixel
    label the pooled ranking and Dice counts; for a scored slice the paper metrics."""
    ps = t.per_slice[m]
    ps["peak"][g] = float(peak(amap if v is None else np.where(v, amap, 0)))
    if m == "masked" and ev.cal is not None:
        cs = remove_small_components((amap > ev.cal_thr) & fg, ev.min_size,
                                     ev.connectivity)  # as berdiff detect segments
        ps["area_calibrated"][g] = float(cs.sum())
    seg = None
    if np.isfinite(thr):
        seg = remove_small_components(amap > thr, ev.min_size, ev.connectivity)
        if v is not None:
            seg = seg & v
        ps["area"][g] = float(seg.sum())
    if m in ev.model:
        k = ev.k_of[m]
        rec = res.reconstruction[k, i]
        ps["masked_fraction"][g] = float(res.masked_fraction[k, i])
        ps["psnr"][g] = psnr(x, rec)
    if not t.lab_ok[g]:
        return
    y = y_all if v is None else y_all & v
    t.rankings[m].update(amap, y, v)
    if seg is not None:
        c = t.counts[m]
        c[0] += int(np.count_nonzero(seg & y))
        c[1] += int(seg.sum())
        c[2] += int(y.sum())
    if not t.scored[g]:
        return
    if seg is not None:
        ps["dice_val_threshold"][g] = dice(seg, y)
    if m in ev.model:
        r = paper_slice_metrics(x, rec, y_all, median_size=ev.median_size, min_size=ev.min_size,
                                connectivity=ev.connectivity, valid=v, amap=amap)
        for key in ("dice", "auprc", "auroc"):
            ps[key][g] = r[key]
    else:  # intensity baseline: ranking by the raw intensity, Dice at val threshold
        s_, y_ = (amap, y) if v is None else (amap[v], y[v])
        ps["auprc"][g], ps["auroc"][g] = auprc(s_, y_), auroc(s_, y_)
        ps["dice"][g] = ps["dice_val_threshold"][g]


def _row(m: str, ev: _Eval, t: _Test, val_thr: float, val_dice: float, timing: dict) -> dict:
    """The report row of method ``m``."""
    ps, scored, healthy = t.per_slice[m], t.scored, t.healthy
    row: dict[str, Any] = {"method": m, "P": ev.p_of.get(m)}
    for key in ("dice", "auprc", "auroc"):
        s = summarize(ps[key][scored])
        row[f"paper_{key}"], row[f"paper_{key}_std"] = s["mean"], s["std"]
    row["paper_n"] = int(scored.sum())
    for grp, sel in (("diseased", ~healthy), ("healthy", healthy)):
        s = summarize(ps["psnr"][sel])
        row[f"psnr_{grp}"], row[f"psnr_{grp}_std"] = s["mean"], s["std"]
    rk = t.rankings[m].result()
    row["strict_auprc"], row["strict_auroc"] = rk["auprc"], rk["auroc"]
    row["strict_exact"] = rk["exact"]
    row["val_threshold"], row["val_dice"] = val_thr, val_dice
    inter, pred, lab = t.counts[m]
    row["strict_dice"] = (2.0 * inter / (pred + lab) if pred + lab else
                          (float("nan") if not np.isfinite(val_thr) else 1.0))
    row["strict_dice_mean"] = summarize(ps["dice_val_threshold"][scored])["mean"]
    row["image_auroc_fraction"] = (image_auroc(ps["masked_fraction"], ~healthy)
                                   if m == "masked" else float("nan"))
    row["image_auroc_area"] = (image_auroc(ps["area"], ~healthy)
                               if np.isfinite(val_thr) else float("nan"))
    row["image_auroc_peak"] = image_auroc(ps["peak"], ~healthy)
    row["image_auroc_area_calibrated"] = (image_auroc(ps["area_calibrated"], ~healthy)
                                          if m == "masked" and ev.cal is not None
                                          else float("nan"))
    row.update(timing.get(m, {"seconds_per_image": float("nan"), "peak_mem_mb": float("nan")}))
    return row


def _config(ev: _Eval, eval_split, val_split, t: _Test, *, P, seconds) -> dict:
    """The report's settings and counts."""
    N, has_val, det = len(eval_split), _has(val_split), ev.detector
    t_val, t_test = seconds
    return {
        "L": int(ev.L), "P": float(P), "steps": ev.n_steps, "seed": int(ev.seed),
        "batch_size": int(ev.batch_size), "sweep_P": ev.sweep_P, "min_size": int(ev.min_size),
        "connectivity": int(ev.connectivity), "median_size": int(ev.median_size),
        "brain_mask": bool(ev.brain_mask), "threshold_channel": ev.thr_ch,
        "calibrated_threshold": ev.cal_thr,
        "calibration": None if ev.cal is None else {k: ev.cal.source.get(k) for k in (
            "L", "P", "steps", "seed", "n_slices", "prepared", "data")},
        "dataset": ev.meta.get("dataset"), "channels": ev.meta.get("channels"),
        "n_test": N, "n_test_healthy": int(t.healthy.sum()),
        "n_test_diseased": int((~t.healthy).sum()),
        "n_test_pixel_labelled": int(t.lab_ok.sum()), "n_val": len(val_split) if has_val else 0,
        "n_val_diseased": int((~np.asarray(val_split.healthy, bool)).sum()) if has_val else 0,
        "device": str(getattr(det, "device", "")),
        "model": (getattr(det, "meta", {}) or {}).get("name"),
        "model_hash": getattr(det, "model_hash", None),
        "seconds_val": round(t_val, 3), "seconds_test": round(t_test, 3),
        "sweep_seconds_per_slice": t_test / max(N, 1), "peak_rss_mb": rss_mb(),
        "conventions": {
            "dice_empty": "1.0 when prediction and label are both empty (only pooled/healthy use)",
            "single_class": "AUPRC/AUROC NaN when a slice or pool has one class; means skip NaN",
            "std": "population std (ddof=0) over the diseased, pixel-labelled test slices",
            "strict_map": "median-filtered squared error, not normalised per slice",
            "brain_mask": "pixel metrics restricted to input > 0 in any channel, holes filled"
                          if ev.brain_mask
                          else "whole slice (as the paper)",
        },
    }


def _per_kind(kinds, scored, methods, per_slice) -> dict[str, Any]:
    kinds = np.asarray(kinds).astype(str)
    out: dict[str, Any] = {}
    for kind in sorted(set(kinds[scored].tolist())):
        sel = scored & (kinds == kind)
        entry: dict[str, Any] = {"n": int(sel.sum())}
        for m in methods:
            d = summarize(per_slice[m]["dice"][sel])
            entry[m] = {"dice": d["mean"], "dice_std": d["std"],
                        "auprc": summarize(per_slice[m]["auprc"][sel])["mean"],
                        "dice_val_threshold": summarize(
                            per_slice[m]["dice_val_threshold"][sel])["mean"]}
        out[kind] = entry
    return out
