"""The widget's work off the GUI thread: a generator over :meth:`Detector.iter_detect` ticks.

Nothing here touches napari or Qt: the widget builds a :class:`Job` from its layers on the main
thread (plain numpy arrays), :func:`run_job` runs in a napari thread worker and yields

- :class:`~napari_berdiff.core.inference.result.Progress` after every network evaluation (progress,
  and a cancellation point),
- :class:`Ready` once sampling is done: the ``DetectionResult`` (plain arrays in the layer's
  orientation) with the segmentation of the P shown on the slider, by the job's threshold rule
  (:mod:`.segmenter`), and the filtered maps it thresholded; from then on the result belongs to
  the main thread, which displays it,
- :class:`SegDone` for each other swept P as its segmentation is computed (the post-processing
  costs about as much as the sampling, so it runs after the first display), with its maps.

Post-processing yields a ``Progress`` at least every 0.1 s too (a volume's worth of median
filters and connected components takes seconds), so cancel stays within a fraction of a second.

On the CPU the job runs with ``cpu_count - 1`` torch threads (set in the worker thread only: the
OpenMP setting is per thread), so the GUI thread keeps a core.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any, Generator

import numpy as np

from ..core.inference.result import DetectionResult, Progress
from ..core.inference.settings import DEFAULTS, POST, DetectSettings
from ..core.inference.volume import SliceMap
from .layers import latent_map


def _record(pp) -> dict:
    """The post-processing as the segmentation layer's metadata records it."""
    conn = {1: "4", 2: "8"}.get(pp.connectivity, str(pp.connectivity))
    return {**{k: v for k, v in pp.to_dict().items() if v is not None},
            "rule": f"as napari_berdiff.core.inference.postprocess segment(normalize_map("
                    f"paper_anomaly_map(x, x_rec))): per-channel squared error, "
                    f"{pp.median_size}x{pp.median_size} median filter, sum over channels; "
                    f"per slice clip to the [{pp.low:g}, {pp.high:g}] percentiles and min-max to "
                    f"[0, 1]; > {pp.threshold:g}; components < {pp.min_size} px removed "
                    f"({conn}-connected)"}


POSTPROCESS = _record(POST)


def segmentation_record(rule) -> dict:
    """The segmentation layer's ``postprocess`` entry for a run segmented by ``rule``."""
    return {**POSTPROCESS, **rule.to_dict()} if rule is not None else POSTPROCESS


@dataclass
class Job:
    """Everything a run needs, as plain data (built on the main thread)."""

    volume: np.ndarray | None  # (C, Z, H, W) in layer orientation (Z = 1 for 2D); raw intensities
    slices: list[int]  # layer indices along Z to run
    slice_map: SliceMap
    checkpoint: Any  # a core.models.checkpoint.Checkpoint (or a path)
    device: str = "auto"
    settings: DetectSettings = DEFAULTS  # L, P (segmented before display), S, seed, P sweep
    detector: Any = None  # a cached Detector for (checkpoint, device), reused when given
    normalized: np.ndarray | None = None  # cached normalised volume for the same input
    batch_size: int | None = None
    threads: int | None = None  # torch threads on the CPU (default cpu_count - 1)
    spacing: tuple[float, float] | None = None  # (rows, cols) pixel size in mm as the model sees them
    rule: Any = None  # the segmentation's ThresholdRule (None: the paper rule)


@dataclass
class RunContext:
    """What a run was started with (to place and name its outputs); once it is ready, also where
    its latent grid lies and the anomaly map's display range (:class:`Ready`)."""

    layers: list
    src: object  # the geometry source: layers[0], or the spatial view of a multi-channel layer
    base: str
    channel_names: list[str]
    L: int
    thresholds: list[float]
    norm_key: tuple = ()  # the input layers' identity: reuse the normalised volume
    det_key: tuple = ()  # (checkpoint hash, device): reuse the detector
    latent_axes: list = field(default_factory=list)  # (scale, offset) per layer in-plane axis
    map_limits: tuple[float, float] = (0.0, 1.0)


@dataclass
class Ready:
    """Sampling is done. ``result``: plain arrays in the layer's orientation (``slices``: layer
    indices) with the segmentation of the P on the slider; the main thread owns it from here on.
    ``detector`` and ``normalized`` are for the widget to reuse in its next run; ``maps`` the
    filtered maps of the P on the slider, ``foreground`` the input's (both for re-segmenting),
    ``rule`` the segmentation's ThresholdRule."""

    result: DetectionResult
    latent_axes: list[tuple[float, float]]
    map_limits: tuple[float, float]
    detector: Any
    normalized: np.ndarray
    rule: Any = None
    maps: np.ndarray | None = None
    foreground: np.ndarray | None = None


@dataclass
class SegDone:
    """Swept P index ``k`` segmented by ``rule`` (its filtered ``maps`` kept for re-segmenting)."""

    k: int
    segmentation: np.ndarray
    tick: Progress
    maps: np.ndarray | None = None
    rule: Any = None


def segment_slice(x: np.ndarray, rec: np.ndarray, post=POST) -> np.ndarray:
    """(C, H, W) input and reconstruction -> (H, W) bool segmentation: exactly the core's
    ``segment_map(paper_anomaly_map(x, rec))`` (:data:`POSTPROCESS`)."""
    from ..core.inference.postprocess import paper_anomaly_map, segment_map

    return segment_map(paper_anomaly_map(x, rec, post.median_size), post)


def segment_stack(x: np.ndarray, rec: np.ndarray) -> np.ndarray:
    """(N, C, H, W) input and reconstruction -> (N, H, W) uint8 segmentation, a slice at a time."""
    out = np.zeros((x.shape[0],) + x.shape[2:], np.uint8)
    for i in range(x.shape[0]):
        out[i] = segment_slice(x[i], rec[i])
    return out


def _segment_one(x: np.ndarray, rec: np.ndarray, rule, fg: np.ndarray) -> tuple:
    """One (C, H, W) slice: its segmentation by ``rule`` (within ``fg``) and its filtered map."""
    from ..core.inference.postprocess import paper_anomaly_map

    amap = paper_anomaly_map(x, rec, POST.median_size)
    return rule.apply(amap, POST.min_size, POST.connectivity, within=fg), amap


def _segment_ticking(x, rec, rule, fg, done: int, total: int, t0: float,
                     every_s: float = 0.1) -> Generator[Progress, None, tuple]:
    """The (N, H, W) segmentation by ``rule`` (within the foreground ``fg``) and the filtered
    maps it thresholded, yielding a post-processing :class:`Progress` at most every ``every_s``
    seconds: a whole volume takes seconds, and each yield is a cancellation point."""
    out = np.zeros((x.shape[0],) + x.shape[2:], np.uint8)
    maps = np.zeros(out.shape, np.float32)
    last = time.perf_counter()
    for i in range(x.shape[0]):
        out[i], maps[i] = _segment_one(x[i], rec[i], rule, fg[i])
        now = time.perf_counter()
        if now - last >= every_s and i + 1 < x.shape[0]:
            last = now
            yield Progress(done, total, f"post-processing ({i + 1}/{x.shape[0]} slices)", now - t0)
    return out, maps


def run_job(job: Job) -> Generator[Progress | Ready | SegDone, None, float]:
    """Load (or reuse) the detector, normalise, sample the (slice, P) trajectories, post-process.
    Returns the total seconds."""
    import torch

    prev_threads = torch.get_num_threads()
    try:
        return (yield from _run(job, torch))
    finally:
        torch.set_num_threads(prev_threads)


def _run(job: Job, torch) -> Generator:
    from ..core.diffusion.sampler import relay
    from ..core.inference.calibration import foreground, resolve_rule
    from ..core.inference.volume import iter_detect_volume

    t0 = time.perf_counter()
    det = yield from _detector(job, t0)
    vol = yield from _normalized(job, det, t0)
    s = job.settings
    thresholds = s.thresholds()
    K = len(thresholds)
    on_gpu = getattr(det.device, "type", "cpu") != "cpu"
    gen = iter_detect_volume(det, vol, job.slices, job.slice_map, normalize="none", L=s.L,
                             P=thresholds, steps=s.S, seed=s.seed, keep_mask_history=True,
                             batch_size=job.batch_size or K * (16 if on_gpu else 2),
                             spacing=job.spacing)

    def sampling(p: Progress) -> Progress:
        return replace(p, total=p.total + K, elapsed=time.perf_counter() - t0,
                       masked=float(p.step.mask.float().mean()))

    res = yield from relay(gen, sampling)
    n_sample = res.provenance["batch"]["network_evaluations"]  # 0 when every slice was empty
    total = n_sample + K
    out = replace(res, provenance=_provenance(res.provenance, det, job, torch),
                  segmentation=np.zeros(res.anomaly_map.shape, np.uint8), seg_ready=[False] * K)
    rule = job.rule if job.rule is not None else resolve_rule(None, "paper")
    fg = foreground(out.input)
    first = out.index_of(s.P)
    out.segmentation[first], maps = yield from _segment_ticking(
        out.input, out.reconstruction[first], rule, fg, n_sample, total, t0)
    out.seg_ready[first] = True
    out.provenance["seconds"] = round(time.perf_counter() - t0, 3)
    yield Ready(out, _latent_axes(det, job.slice_map, out), _map_limits(out.anomaly_map), det, vol,
                rule, maps, fg)
    # the main thread owns `out` from here on: only local arrays are read below
    x, recon = out.input, out.reconstruction
    done = n_sample + 1
    for k in range(K):
        if k == first:
            continue
        seg, maps = yield from _segment_ticking(x, recon[k], rule, fg, done, total, t0)
        done += 1
        yield SegDone(k, seg, Progress(done, total, "post-processing", time.perf_counter() - t0),
                      maps, rule)
    return time.perf_counter() - t0


def _detector(job: Job, t0: float) -> Generator:
    """The job's detector (loaded unless the widget passed its cached one), with the torch
    threads on the CPU: physical cores less one for the GUI (an explicit OMP_NUM_THREADS wins)."""
    from ..core.inference.detector import Detector

    det = job.detector
    if det is None:
        det = Detector.from_checkpoint(job.checkpoint, device=job.device)
        yield Progress(0, 0, "model loaded", time.perf_counter() - t0)
    if getattr(det.device, "type", "cpu") == "cpu":
        from ..core.inference.accel import configure_threads

        configure_threads(job.threads, reserve_gui=True)
    return det


def _normalized(job: Job, det, t0: float) -> Generator:
    """The job's volume normalised as the model's training volumes were (BraTS-style: always
    per-volume percentiles), unless the widget passed the cached one."""
    if job.normalized is not None:
        return job.normalized
    from ..core.inference.volume import prepare_volume

    vol, _ = prepare_volume(det, job.volume)
    yield Progress(0, 0, "normalised", time.perf_counter() - t0)
    return vol


def _provenance(prov: dict, det, job: Job, torch) -> dict:
    on_gpu = getattr(det.device, "type", "cpu") != "cpu"
    return {**prov,
            "normalize": ("percentile (per volume and channel, as the model's training volumes)"
                          if det.percentile_volumes else
                          "auto (per-volume percentiles only where the values leave [0, 1])"),
            "anomaly_map": ("sum over channels of (x - x_rec)^2 per pixel, unfiltered; the "
                            "segmentation (and berdiff detect's anomaly map) use its 5x5 median-"
                            "filtered version"),
            "layer_slices": list(job.slices) if len(job.slices) <= 4096 else f"{job.slices[0]}..",
            "torch_threads": None if on_gpu else torch.get_num_threads()}


def _latent_axes(det, sm, res: DetectionResult) -> list[tuple[float, float]]:
    """Where the latent grid of the mask history lies on the layer's slices."""
    h, w = res.mask_history.shape[-2:]
    model_hw = res.input.shape[-2:][::-1] if sm.transpose else res.input.shape[-2:]
    maps = latent_map(model_hw, det.image_size, h, det.preprocess_mode, det.canvas)
    return sm.latent_axes(maps, res.input.shape[-2:], (h, w))


def _map_limits(amap: np.ndarray) -> tuple[float, float]:
    """The anomaly map's display range: up to the largest 99.9th percentile over the sweep."""
    hi = float(max(np.percentile(amap[k], 99.9) for k in range(len(amap)))) if amap.size else 1.0
    return (0.0, hi if hi > 0 else 1.0)
