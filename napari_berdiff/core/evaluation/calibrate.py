"""Calibrate a model's thresholds on healthy validation data (``berdiff calibrate``).

:func:`calibrate` runs the detector over the validation split of a prepared directory (an
``EvalSplit``-like object: ``images`` (N, C, S, S) in [0, 1] or uint8, ``labels``, ``healthy``,
``case_id``, ``slice_index``, ``has_mask``, ``class_name``, ``source``, ``meta``) and returns a
:class:`~..inference.calibration.Calibration`: thresholds at the FPRs asked for over the healthy
slices' foreground pixels, the whole FPR curve, the Dice-optimal threshold over the pixel-labelled
slices where diseased ones exist, per-slice statistics of the healthy slices (for the
out-of-distribution warning) and, for volumes, the axial range covered.

Two geometries (``source_root``):

* **deployment** (``source_root`` = the raw data the split was prepared from): every input of the
  split (a BraTS case, a NIfTI volume, a B-scan) is read and run exactly as ``berdiff detect``
  runs it (:func:`..inference.batch_detect.detect_item`: RAS order, voxel size, full resolution),
  at the slices the split holds; labels come from the raw files. The map's values then mean what
  they mean in ``berdiff detect``'s output.
* **model resolution** (``source_root`` None): the prepared slices themselves (already resized to
  the model's size). Quicker, but the map of a full-resolution input is not on the same scale
  (measured on the bundled BraTS model: a threshold at 0.1% here let 1.3% of a held-out healthy
  volume's brain through at 240 x 240); use it when the raw data are gone.
"""

from __future__ import annotations

import dataclasses
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from ..inference.batch_detect import detect_item
from ..inference.calibration import Calibration, foreground
from ..inference.settings import DEFAULT_FPR, DEFAULTS, POST, DetectSettings, PostProcess
from ..inference.postprocess import paper_anomaly_map
from ..inference.triage import peak
from ..io.input_kinds import InputItem
from ..io.files import is_nifti
from ..io.images import load_image_2d
from ..io.readers import load_brats_case
from .splits import as_float, pixel_labelled
from .metrics import DiceSweep, default_thresholds

__all__ = ["calibrate"]

MAX_VALUES = 1 << 25  # pooled healthy pixels kept exactly; beyond, an even subsample


def _quantiles(v: Sequence[float]) -> dict[str, float]:
    a = np.asarray(v, dtype=np.float64)
    if a.size == 0:
        return {}
    q = np.quantile(a, [0.5, 0.9, 0.99, 1.0])
    return {"p50": float(q[0]), "p90": float(q[1]), "p99": float(q[2]), "max": float(q[3]),
            "n": int(a.size)}


class _Pool:
    """Healthy foreground values, per-slice statistics and the Dice sweep, chunk by chunk."""

    def __init__(self, channels: int, min_size: int, connectivity: int):
        self.sweep = DiceSweep(default_thresholds("error", float(channels)), min_size,
                               connectivity)
        self.values: list[np.ndarray] = []
        self.med: list[float] = []
        self.peaks: list[float] = []
        self.n_labelled = self.n_diseased = 0

    def add(self, x, maps, healthy, labels, lab_ok) -> None:
        fg = foreground(x)
        for i in np.flatnonzero(healthy):
            if fg[i].any():
                self.values.append(maps[i][fg[i]].astype(np.float32))
                self.med.append(float(np.median(maps[i][fg[i]])))
                self.peaks.append(float(peak(maps[i])))
        if lab_ok.any():
            self.sweep.update(maps[lab_ok], labels[lab_ok])
            self.n_labelled += int(lab_ok.sum())
            self.n_diseased += int((lab_ok & ~healthy).sum())


def _prepared_chunks(detector, split, run: dict, chunk: int, tick) -> Iterator[tuple]:
    lab_ok = pixel_labelled(split)
    healthy = np.asarray(split.healthy, bool)
    for a in range(0, len(split), chunk):
        b = min(a + chunk, len(split))
        x = as_float(split.images[a:b])
        res = detector.detect(x, P=[run["P"]], L=run["L"], steps=run["steps"], seed=run["seed"],
                              indices=list(range(a, b)), batch_size=run["batch_size"],
                              normalize="none", progress=tick)
        maps = paper_anomaly_map(x, res.reconstruction[0], run["median_size"])
        yield x, maps, healthy[a:b], np.asarray(split.labels[a:b]) > 0, lab_ok[a:b], None


def _raw_label(item: InputItem, root: Path, entries, d) -> tuple[np.ndarray, np.ndarray]:
    """(labels (n, h, w) bool, pixel-labelled (n,)) of a raw input at the slices run."""
    n, hw = len(d.slices), d.amap.shape[-2:]
    healthy = np.array([e["healthy"] for e in entries], bool)
    if item.kind == "brats_case":
        from ..io.orientation import to_canonical

        _, seg, _ = load_brats_case(item.path)
        if seg is not None:
            lab = np.moveaxis(to_canonical(seg, d.ornt)[..., d.slices], -1, 0) > 0
            return lab, np.ones(n, bool)
    if item.kind == "image":
        e = entries[0]
        mask = root / f"{e['class_name']}_masks" / f"{Path(e['source']).stem}.png"
        if e["has_mask"] and mask.is_file():
            return (load_image_2d(mask) > 0.5)[None], np.ones(1, bool)
    return np.zeros((n,) + tuple(hw), bool), healthy  # only healthy slices count as labelled


def _raw_chunks(detector, split, root: Path, run: dict, tick, depths: set) -> Iterator[tuple]:
    """Each input of the split from the raw data, run as ``berdiff detect`` runs it."""
    groups: dict[str, list[dict]] = {}
    fields = ("slice_index", "healthy", "has_mask", "class_name", "source")
    for i in range(len(split)):
        e = {k: (getattr(split, k)[i] if getattr(split, k, None) is not None else None)
             for k in fields}
        e["source"] = str(e["source"] if e["source"] is not None else split.case_id[i])
        groups.setdefault(e["source"], []).append(e)
    s = DetectSettings(L=run["L"], P=run["P"], steps=run["steps"], seed=run["seed"],
                       post=PostProcess(median_size=run["median_size"]))
    for src, entries in groups.items():
        p = root / src
        kind = "brats_case" if p.is_dir() else "nifti" if is_nifti(p) else "image"
        item = InputItem(p, kind, src)
        order = np.argsort([int(e["slice_index"]) for e in entries])
        entries = [entries[j] for j in order]
        d = detect_item(detector, item, s, progress=tick, batch_size=run["batch_size"],
                        slices=None if item.is_2d else [int(e["slice_index"]) for e in entries])
        if d.vol is not None:
            depths.add(int(d.vol.shape[-1]))
        labels, lab_ok = _raw_label(item, root, entries, d)
        healthy = np.array([bool(e["healthy"]) for e in entries])
        yield d.res.input, d.amap, healthy, labels, lab_ok, d.slices


def calibrate(detector, val_split, *, L: int = DEFAULTS.L, P: float = DEFAULTS.P,
              steps: int | None = DEFAULTS.steps, seed: int = DEFAULTS.seed,
              batch_size: int | str = "auto",
              fprs: Sequence[float] = (DEFAULT_FPR,), default_fpr: float | None = None,
              median_size: int = POST.median_size, min_size: int = POST.min_size,
              connectivity: int = POST.connectivity,
              chunk_size: int = 32, source_root: str | Path | None = None,
              source: dict | None = None,
              progress: Callable[[int, int], None] | None = None) -> Calibration:
    """Run ``detector`` over ``val_split`` and return its :class:`Calibration` (see the module
    docstring; ``source_root``: the raw data, for the deployment geometry). ``source`` is merged
    into the recorded provenance. ValueError when there is no healthy foreground to calibrate on."""
    from ..diffusion.schedule import step_grid

    if not np.asarray(val_split.healthy, bool).any():
        raise ValueError("the validation split has no healthy slice to calibrate on")
    steps = None if steps is None else min(int(steps), int(L))
    n_steps = len(step_grid(L, steps)) - 1
    run = dict(L=int(L), P=float(P), steps=steps, seed=int(seed), batch_size=batch_size,
               median_size=int(median_size))
    tick = _ticker(progress, len(val_split) * n_steps)  # an upper bound (empty slices are free)
    pool = _Pool(int(val_split.images.shape[1]), min_size, connectivity)
    depths: set[int] = set()
    slices_run: list[int] = []
    t0 = time.perf_counter()
    chunks = (_raw_chunks(detector, val_split, Path(source_root), run, tick, depths)
              if source_root is not None else
              _prepared_chunks(detector, val_split, run, chunk_size, tick))
    for x, maps, healthy, labels, lab_ok, idx in chunks:
        pool.add(x, maps, healthy, labels, lab_ok)
        slices_run += list(idx or [])
    if not pool.values:
        raise ValueError("the healthy validation slices have no foreground pixels (all zero)")
    pooled = np.concatenate(pool.values)
    n_pixels = int(pooled.size)
    if pooled.size > MAX_VALUES:
        pooled = np.sort(pooled)[np.linspace(0, pooled.size - 1, MAX_VALUES).astype(np.int64)]
    src = _provenance(detector, val_split, run, n_steps, min_size, len(pool.values), n_pixels,
                      source_root, t0) | (source or {})
    rng = None
    if slices_run and len(depths) == 1:
        rng = {"first": min(slices_run), "last": max(slices_run), "depth": depths.pop()}
    cal = Calibration.from_values(pooled, fprs, default_fpr, healthy=_healthy_stats(pool),
                                  source=src, slice_range=rng)
    if pool.n_diseased and pool.sweep.label > 0:
        t, d = pool.sweep.best()
        cal = dataclasses.replace(cal, dice_optimal={
            "threshold": t, "dice": d, "fpr": cal.fpr_at(t), "n_slices": pool.n_labelled,
            "n_diseased": pool.n_diseased, "min_size": int(min_size)})
    return cal


def _ticker(progress: Callable[[int, int], None] | None, total: int) -> Callable:
    """A per-step callback that reports ``(done, total)`` to ``progress``."""
    done = [0]

    def tick(p):
        done[0] += 1
        if progress is not None:
            progress(min(done[0], total), total)

    return tick


def _healthy_stats(pool: _Pool) -> dict:
    return {"median_error": _quantiles(pool.med), "peak": _quantiles(pool.peaks),
            "statistics": "per healthy slice: the median of the filtered map over its "
                          "foreground, and its peak (99.9th percentile)"}


def _provenance(detector, val_split, run: dict, n_steps: int, min_size: int, n_healthy: int,
                n_pixels: int, source_root: str | Path | None, t0: float) -> dict:
    """The calibration's recorded source: data, geometry, run settings and model."""
    meta = dict(getattr(val_split, "meta", {}) or {})
    return {"data": meta.get("dataset"), "split": "val", "n_slices": len(val_split),
            "n_healthy_slices": n_healthy, "n_pixels": n_pixels,
            "geometry": ("deployment: the raw inputs of the split, run as berdiff detect runs them"
                         if source_root is not None else
                         "model resolution: the prepared slices"),
            "raw_data": None if source_root is None else str(Path(source_root).resolve()),
            "L": run["L"], "P": run["P"], "steps": n_steps, "seed": run["seed"],
            "median_size": run["median_size"], "min_size": int(min_size),
            "model": (getattr(detector, "meta", {}) or {}).get("name"),
            "model_hash": getattr(detector, "model_hash", None),
            "device": str(getattr(detector, "device", "")),
            "seconds": round(time.perf_counter() - t0, 1),
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds")}
