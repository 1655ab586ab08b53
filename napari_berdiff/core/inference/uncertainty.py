"""K stochastic reconstructions per slice: a mean reconstruction and a per-pixel spread.

Every run of the masked sampler draws its code ``z ~ Bernoulli(E(x))`` and its trajectory at
random; :func:`iter_detect_samples` runs ``samples`` (K) of them per slice, batched like the P
sweep (the K copies of a slice share the sampler's network calls), and returns a
:class:`SampledResult`:

* ``reconstruction``: the mean of the K reconstructions (the healthy estimate with the sampling
  noise averaged out); ``anomaly_map`` and every map made from it (``berdiff detect``'s filtered
  map, the segmentation, the triage scores) compare the input with that mean;
* ``spread``: per pixel, the standard deviation of the K reconstructions, summed over channels in
  quadrature (``sqrt(sum_c var_c)``, intensity units): where the model is unsure what healthy
  tissue would look like;
* ``masked_fraction`` and ``mask_history``: means over the K samples.

Sample ``j`` of slice ``i`` uses image seed ``seed + i + j * SAMPLE_STRIDE``, so sample 0 is
exactly the single run (K = 1) and results do not depend on the batching.

:class:`Sampled` wraps a :class:`~.detector.Detector` so that its ``detect`` and
``detect_volume`` (normalisation, RAS slices, field of view and all) run K samples.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Generator

import numpy as np

from .detector import Detector
from .result import DetectionResult, Progress
from .settings import DEFAULTS
from .volume import normalize_stack, resolve_normalize
from ..diffusion.sampler import drive

__all__ = ["SampledResult", "Sampled", "iter_detect_samples", "SAMPLE_STRIDE"]

SAMPLE_STRIDE = 1 << 20  # slice indices stay below this: sample seeds never meet another slice's


@dataclass
class SampledResult(DetectionResult):
    """A :class:`~.detector.DetectionResult` of K samples (see the module docstring)."""

    spread: np.ndarray | None = None  # (K_P, N, H, W) float32
    samples: int = 1


def iter_detect_samples(detector, images, samples: int, *, P=DEFAULTS.P,
                        seed: int = DEFAULTS.seed, indices=None, normalize: str = "auto",
                        batch_size="auto", keep_mask_history=False,
                        **kwargs) -> Generator[Progress, None, SampledResult]:
    """Like :meth:`~.detector.Detector.iter_detect` with ``samples`` reconstructions per slice
    (other keywords are passed on); yields progress over all chunks, returns a SampledResult."""
    K = int(samples)
    if K < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    x = np.asarray(images.detach().cpu().numpy() if hasattr(images, "detach") else images,
                   dtype=np.float32)
    x = x[None] if x.ndim == 3 else x
    x = normalize_stack(x, resolve_normalize(normalize, x))
    N = len(x)
    idx = list(range(N)) if indices is None else [int(i) for i in indices]
    if len(idx) != N:
        raise ValueError(f"got {len(idx)} indices for {N} slices")
    if idx and (max(idx) >= SAMPLE_STRIDE or min(idx) < 0):
        raise ValueError(f"slice indices must lie in 0..{SAMPLE_STRIDE - 1} for sampling")
    thresholds = [float(P)] if np.isscalar(P) else [float(p) for p in P]
    plan = detector.plan_batches(batch_size)
    per = max(1, plan.slices_per_call(len(thresholds) * K))
    chunks = [list(range(a, min(a + per, N))) for a in range(0, N, per)]
    parts, done, total = [], 0, None
    for sel in chunks:
        xs = np.repeat(x[sel], K, axis=0)  # slice-major: the K copies of a slice side by side
        rep = [idx[i] + j * SAMPLE_STRIDE for i in sel for j in range(K)]
        gen = detector.iter_detect(xs, P=thresholds, seed=seed, indices=rep, normalize="none",
                                   batch_size=len(xs) * len(thresholds),
                                   keep_mask_history=keep_mask_history, **kwargs)
        while True:
            try:
                tick = next(gen)
            except StopIteration as stop:
                parts.append((sel, stop.value))
                break
            total = total or tick.total * len(chunks)
            yield replace(tick, done=done + tick.done, total=total,
                          images=(sel[0], sel[-1] + 1), slices=tuple(sel))
        done += parts[-1][1].provenance["batch"]["network_evaluations"]
    return _merge(parts, x, idx, K, thresholds)


def _merge(parts, x, idx, K, thresholds) -> SampledResult:
    """One SampledResult from the per-chunk results of the repeated stacks."""
    KP, (N, C, H, W) = len(thresholds), x.shape
    recon = np.zeros((KP, N, C, H, W), np.float32)
    spread = np.zeros((KP, N, H, W), np.float32)
    frac = np.zeros((KP, N), np.float32)
    hist = None
    for sel, r in parts:
        rec = r.reconstruction.reshape(KP, len(sel), K, C, H, W)
        recon[:, sel] = rec.mean(axis=2)
        spread[:, sel] = np.sqrt(rec.var(axis=2).sum(axis=2))
        frac[:, sel] = r.masked_fraction.reshape(KP, len(sel), K).mean(axis=2)
        if r.mask_history is not None:
            h = r.mask_history.astype(np.float32)
            if hist is None:
                hist = np.zeros(h.shape[:2] + (N,) + h.shape[3:], np.float16)
            hist[:, :, sel] = h.reshape(h.shape[:2] + (len(sel), K) + h.shape[3:]).mean(axis=3)
    amap = ((x[None] - recon) ** 2).sum(axis=2, dtype=np.float32)
    prov = dict(parts[0][1].provenance)
    skipped = {int(i) for _, r in parts for i in r.provenance.get("skipped_slices", [])}
    prov.update({"samples": K, "slice_indices": idx if N <= 4096 else f"{idx[0]}..{idx[-1]}",
                 "skipped_slices": [i for i in idx if i in skipped],
                 "sample_seeds": f"seed + slice index + j * {SAMPLE_STRIDE} for sample j",
                 "seconds": round(sum(r.provenance["seconds"] for _, r in parts), 3),
                 "batch": {**prov["batch"], "calls": sum(r.provenance["batch"]["calls"]
                                                         for _, r in parts),
                           "network_evaluations": sum(r.provenance["batch"]["network_evaluations"]
                                                      for _, r in parts)},
                 "uncertainty": "reconstruction = mean of the samples; spread = sqrt(sum_c "
                                "var_c) of the samples' reconstructions"})
    return SampledResult(thresholds, recon, amap, frac, x, hist, prov, spread=spread, samples=K)


class Sampled:
    """A detector running ``samples`` reconstructions per slice: :meth:`detect`,
    :meth:`iter_detect` and :meth:`detect_volume` (the wrapped detector's volume handling)
    return :class:`SampledResult`; every other attribute is the wrapped detector's."""

    def __init__(self, detector: Detector, samples: int):
        if int(samples) < 1:
            raise ValueError(f"samples must be at least 1, got {samples}")
        self.detector, self.samples = detector, int(samples)

    def __getattr__(self, name):
        return getattr(self.detector, name)

    def iter_detect(self, images, **kwargs):
        return iter_detect_samples(self.detector, images, self.samples, **kwargs)

    def detect(self, images, **kwargs) -> SampledResult:
        progress: Callable[[Progress], None] | None = kwargs.pop("progress", None)
        return drive(self.iter_detect(images, **kwargs), progress)

    def detect_volume(self, volume, **kwargs) -> SampledResult:
        return Detector.detect_volume(self, volume, **kwargs)
