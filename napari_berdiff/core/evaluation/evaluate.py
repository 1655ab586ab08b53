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

import resource
import sys
import time
from typing import Any, Callable, Sequence

import numpy as np

from .metrics import (DiceSweep, PooledRanking, auprc, auroc, default_thresholds, dice,
                      image_auroc, paper_slice_metrics, psnr, summarize)
from ..inference.calibration import Calibration, foreground
from ..inference.postprocess import paper_anomaly_map, remove_small_components
from ..inference.settings import DEFAULTS, POST
from ..inference.triage import peak
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


def _pixel_labelled(split) -> np.ndarray:
    """Slices whose label image is a real pixel label (healthy, BraTS, or OCT with a mask)."""
    n = len(split.healthy)
    has = getattr(split, "has_mask", None)
    if (split.meta or {}).get("dataset") == "oct" and has is not None:
        return np.asarray(split.healthy, bool) | np.asarray(has, bool)
    return np.ones(n, bool)


def _as_float(a) -> np.ndarray:
    """Images as float32 in [0, 1]; stored uint8 (``decode=False`` splits) are divided by 255."""
    a = np.asarray(a)
    if a.dtype == np.uint8:
        return a.astype(np.float32) * np.float32(1.0 / 255.0)
    return np.ascontiguousarray(a, dtype=np.float32)


def _brain(x: np.ndarray) -> np.ndarray:
    """(N, H, W) brain masks: input > 0 in any channel, holes filled (dark lesions at the
    normalisation's lower clip are exactly 0 in every channel but lie inside the brain); the
    foreground of :func:`..inference.calibration.foreground`."""
    return foreground(x)


def _n_ticks(n: int, k: int, batch_size: int, n_steps: int) -> int:
    per = max(1, batch_size // k)
    return -(-n // per) * n_steps


def _rss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024.0 / (1024.0 if sys.platform == "darwin" else 1.0)


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
    from ..diffusion.schedule import step_grid

    unknown = set(baselines) - set(ALL_METHODS)
    if unknown:
        raise ValueError(f"unknown baseline(s) {sorted(unknown)}; choose from {ALL_METHODS[1:]}")
    methods = ["masked"] + [m for m in ALL_METHODS[1:] if m in baselines]
    model = [m for m in methods if m in MODEL_METHODS]
    p_of = {m: float(P) if MODEL_METHODS[m] is None else MODEL_METHODS[m] for m in model}
    sweep_P: list[float] = []  # the methods' P, each once (p_key), in the methods' order
    for m in model:
        if find_p(sweep_P, p_of[m]) is None:
            sweep_P.append(p_of[m])
    k_of = {m: find_p(sweep_P, p_of[m]) for m in model}
    meta = dict(getattr(eval_split, "meta", {}) or {})
    C = int(eval_split.images.shape[1])
    thr_ch = threshold_channel(meta)
    n_steps = len(step_grid(L, steps)) - 1
    per = max(1, batch_size // len(sweep_P))
    chunk = int(chunk_size or 4 * per)
    has_val = val_split is not None and len(val_split) > 0
    total = 0
    for sp in ([val_split] if has_val else []) + [eval_split]:
        total += sum(_n_ticks(min(chunk, len(sp) - a), len(sweep_P), batch_size, n_steps)
                     for a in range(0, len(sp), chunk))
    done = [0]

    def tick(_):
        done[0] += 1
        if progress is not None:
            progress(done[0], total)

    def run(split, a, b):
        x = _as_float(split.images[a:b])
        res = detector.detect(x, L=L, P=sweep_P, steps=steps, seed=seed,
                              indices=list(range(a, b)), batch_size=batch_size, normalize="none",
                              progress=tick, skip_empty=False)  # the protocols score every slice
        maps = {m: paper_anomaly_map(x, res.reconstruction[k_of[m]], median_size) for m in model}
        if "threshold" in methods:
            maps["threshold"] = x[:, thr_ch]
        return x, res, maps

    # ---- validation split: Dice thresholds for the strict protocol and the intensity baseline
    cal = Calibration.from_meta(getattr(detector, "meta", None))
    cal_thr = float("nan") if cal is None else cal.default_threshold
    grids = {m: default_thresholds("error", float(C)) for m in model}
    if "threshold" in methods:
        grids["threshold"] = default_thresholds("linear", 1.0, 99)
    val_thr = {m: float("nan") for m in methods}
    val_dice = {m: float("nan") for m in methods}
    t0 = time.perf_counter()
    if has_val:
        sweeps = {m: DiceSweep(grids[m], min_size, connectivity) for m in methods}
        lab_ok = _pixel_labelled(val_split)
        for a in range(0, len(val_split), chunk):
            b = min(a + chunk, len(val_split))
            x, _, maps = run(val_split, a, b)
            ok = lab_ok[a:b]
            if not ok.any():
                continue
            valid = _brain(x)[ok] if brain_mask else None
            y = np.asarray(val_split.labels[a:b])[ok]
            for m in methods:
                sweeps[m].update(maps[m][ok], y, valid)
        if any(s.label > 0 for s in sweeps.values()):
            for m in methods:
                val_thr[m], val_dice[m] = sweeps[m].best()
    t_val = time.perf_counter() - t0

    # ---- test split
    N = len(eval_split)
    healthy = np.asarray(eval_split.healthy, bool)
    lab_ok = _pixel_labelled(eval_split)
    scored = ~healthy & lab_ok  # the paper protocol's slices
    per_slice = {m: {k: np.full(N, np.nan) for k in PER_SLICE} for m in methods}
    rankings = {m: PooledRanking(0.0, float(C) if m in model else 1.0, sqrt=m in model)
                for m in methods}
    counts = {m: [0, 0, 0] for m in methods}  # intersection, predicted, label (pooled Dice)
    t0 = time.perf_counter()
    for a in range(0, N, chunk):
        b = min(a + chunk, N)
        x, res, maps = run(eval_split, a, b)
        y_all = np.asarray(eval_split.labels[a:b]).astype(bool)
        brain = _brain(x) if brain_mask else None
        fg = brain if brain is not None else (_brain(x) if cal is not None else None)
        for m in methods:
            ps = per_slice[m]
            thr = val_thr[m]
            for i in range(b - a):
                g = a + i
                v = None if brain is None else brain[i]
                amap = maps[m][i]
                ps["peak"][g] = float(peak(amap if v is None else np.where(v, amap, 0)))
                if m == "masked" and cal is not None:
                    cs = remove_small_components((amap > cal_thr) & fg[i], min_size,
                                                 connectivity)  # as berdiff detect segments
                    ps["area_calibrated"][g] = float(cs.sum())
                seg = None
                if np.isfinite(thr):
                    seg = remove_small_components(amap > thr, min_size, connectivity)
                    if v is not None:
                        seg = seg & v
                    ps["area"][g] = float(seg.sum())
                if m in model:
                    k = k_of[m]
                    rec = res.reconstruction[k, i]
                    ps["masked_fraction"][g] = float(res.masked_fraction[k, i])
                    ps["psnr"][g] = psnr(x[i], rec)
                if not lab_ok[g]:
                    continue
                y = y_all[i] if v is None else y_all[i] & v
                rankings[m].update(amap, y, v)
                if seg is not None:
                    c = counts[m]
                    c[0] += int(np.count_nonzero(seg & y))
                    c[1] += int(seg.sum())
                    c[2] += int(y.sum())
                if not scored[g]:
                    continue
                if seg is not None:
                    ps["dice_val_threshold"][g] = dice(seg, y)
                if m in model:
                    r = paper_slice_metrics(x[i], rec, y_all[i], median_size=median_size,
                                            min_size=min_size, connectivity=connectivity,
                                            valid=v, amap=amap)
                    for key in ("dice", "auprc", "auroc"):
                        ps[key][g] = r[key]
                else:  # intensity baseline: ranking by the raw intensity, Dice at val threshold
                    s_, y_ = (amap, y) if v is None else (amap[v], y[v])
                    ps["auprc"][g], ps["auroc"][g] = auprc(s_, y_), auroc(s_, y_)
                    ps["dice"][g] = ps["dice_val_threshold"][g]
    t_test = time.perf_counter() - t0

    timing = _time_methods(detector, eval_split, scored, model, p_of, L=L, steps=steps,
                           seed=seed, n=timing_slices)
    rows = []
    for m in methods:
        ps = per_slice[m]
        row: dict[str, Any] = {"method": m, "P": p_of.get(m)}
        for key in ("dice", "auprc", "auroc"):
            s = summarize(ps[key][scored])
            row[f"paper_{key}"], row[f"paper_{key}_std"] = s["mean"], s["std"]
        row["paper_n"] = int(scored.sum())
        for grp, sel in (("diseased", ~healthy), ("healthy", healthy)):
            s = summarize(ps["psnr"][sel])
            row[f"psnr_{grp}"], row[f"psnr_{grp}_std"] = s["mean"], s["std"]
        rk = rankings[m].result()
        row["strict_auprc"], row["strict_auroc"] = rk["auprc"], rk["auroc"]
        row["strict_exact"] = rk["exact"]
        row["val_threshold"], row["val_dice"] = val_thr[m], val_dice[m]
        inter, pred, lab = counts[m]
        row["strict_dice"] = (2.0 * inter / (pred + lab) if pred + lab else
                              (float("nan") if not np.isfinite(val_thr[m]) else 1.0))
        row["strict_dice_mean"] = summarize(ps["dice_val_threshold"][scored])["mean"]
        row["image_auroc_fraction"] = (image_auroc(ps["masked_fraction"], ~healthy)
                                       if m == "masked" else float("nan"))
        row["image_auroc_area"] = (image_auroc(ps["area"], ~healthy)
                                   if np.isfinite(val_thr[m]) else float("nan"))
        row["image_auroc_peak"] = image_auroc(ps["peak"], ~healthy)
        row["image_auroc_area_calibrated"] = (image_auroc(ps["area_calibrated"], ~healthy)
                                              if m == "masked" and cal is not None
                                              else float("nan"))
        row.update(timing.get(m, {"seconds_per_image": float("nan"), "peak_mem_mb": float("nan")}))
        rows.append(row)

    per_kind = _per_kind(kinds, scored, methods, per_slice) if kinds is not None else {}
    config = {
        "L": int(L), "P": float(P), "steps": n_steps, "seed": int(seed),
        "batch_size": int(batch_size), "sweep_P": sweep_P, "min_size": int(min_size),
        "connectivity": int(connectivity), "median_size": int(median_size),
        "brain_mask": bool(brain_mask), "threshold_channel": thr_ch,
        "calibrated_threshold": cal_thr,
        "calibration": None if cal is None else {k: cal.source.get(k) for k in (
            "L", "P", "steps", "seed", "n_slices", "prepared", "data")},
        "dataset": meta.get("dataset"), "channels": meta.get("channels"),
        "n_test": N, "n_test_healthy": int(healthy.sum()), "n_test_diseased": int((~healthy).sum()),
        "n_test_pixel_labelled": int(lab_ok.sum()), "n_val": len(val_split) if has_val else 0,
        "n_val_diseased": int((~np.asarray(val_split.healthy, bool)).sum()) if has_val else 0,
        "device": str(getattr(detector, "device", "")),
        "model": (getattr(detector, "meta", {}) or {}).get("name"),
        "model_hash": getattr(detector, "model_hash", None),
        "seconds_val": round(t_val, 3), "seconds_test": round(t_test, 3),
        "sweep_seconds_per_slice": t_test / max(N, 1), "peak_rss_mb": _rss_mb(),
        "conventions": {
            "dice_empty": "1.0 when prediction and label are both empty (only pooled/healthy use)",
            "single_class": "AUPRC/AUROC NaN when a slice or pool has one class; means skip NaN",
            "std": "population std (ddof=0) over the diseased, pixel-labelled test slices",
            "strict_map": "median-filtered squared error, not normalised per slice",
            "brain_mask": "pixel metrics restricted to input > 0 in any channel, holes filled"
                          if brain_mask
                          else "whole slice (as the paper)",
        },
    }
    slices = {"case_id": [str(c) for c in eval_split.case_id],
              "slice_index": [int(s) for s in eval_split.slice_index],
              "healthy": healthy.tolist(), "pixel_labelled": lab_ok.tolist(),
              "kind": None if kinds is None else [str(k) for k in kinds],
              **{f"{m}_{k}": per_slice[m][k].tolist() for m in methods for k in PER_SLICE
                 if np.isfinite(per_slice[m][k]).any()}}
    return {"config": config, "methods": rows, "per_kind": per_kind, "per_slice": slices}


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


def _time_methods(detector, split, scored, model, p_of, *, L, steps, seed, n) -> dict[str, dict]:
    """Seconds per image at batch size 1 (encode to decode) and peak memory per model method."""
    import torch

    from ..inference import preprocess

    if n <= 0 or not model:
        return {}
    order = np.concatenate([np.flatnonzero(scored), np.flatnonzero(~scored)])[:n]
    cuda = getattr(detector, "device", None) is not None and detector.device.type == "cuda"
    out = {}
    for m in model:
        if cuda:
            torch.cuda.synchronize(detector.device)
            torch.cuda.reset_peak_memory_stats(detector.device)
        t0 = time.perf_counter()
        for i in order:
            x = _as_float(split.images[int(i):int(i) + 1])
            if m == "ae_only":  # the autoencoder alone: encode, (sample the code,) decode
                geom = preprocess.plan(x.shape[-2:], detector.image_size,
                                       detector.preprocess_mode, detector.canvas)
                with torch.inference_mode():
                    xb = preprocess.to_model(torch.from_numpy(x).to(detector.device), geom)
                    prob = detector.autoencoder.encode(xb).float()
                    rec = detector.autoencoder.decode((torch.rand_like(prob) < prob).float())
                    preprocess.from_model(rec.float().clamp(0, 1), geom).cpu()
            else:
                detector.detect(x, L=L, P=[p_of[m]], steps=steps, seed=seed, indices=[int(i)],
                                batch_size=1, normalize="none", skip_empty=False)
        if cuda:
            torch.cuda.synchronize(detector.device)
        sec = (time.perf_counter() - t0) / len(order)
        mem = (torch.cuda.max_memory_allocated(detector.device) / 2**20 if cuda else _rss_mb())
        out[m] = {"seconds_per_image": sec, "peak_mem_mb": mem,
                  "mem_kind": "cuda_max_allocated" if cuda else "process_peak_rss"}
    return out
