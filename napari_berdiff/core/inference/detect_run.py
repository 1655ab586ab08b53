"""One call of :meth:`~.detector.Detector.iter_detect` set up: the input checked and normalised,
the batches planned and the output arrays allocated (:func:`prepare_run`)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from . import preprocess
from .batching import BatchPlan, empty_slices
from .volume import check_finite, normalize_stack, resolve_normalize
from ..diffusion.sampler import resolve_seeds
from ..diffusion.schedule import step_grid


@dataclass
class DetectRun:
    """One call of :meth:`~.detector.Detector.iter_detect`: its input, plan and output arrays."""

    t_start: float
    x: np.ndarray  # (N, C, H, W) normalised
    L: int
    steps: int | None
    seed: int
    thresholds: list[float]
    idx: list[int]  # per-slice numbers (the seeds follow them)
    seeds: list[int]
    applied: str  # the normalisation applied
    canvas: object
    spacing: Sequence[float] | None
    geom: object  # preprocess.plan
    n_steps: int
    recon: np.ndarray
    amap: np.ndarray
    frac: np.ndarray
    hist: np.ndarray | None
    skipped: np.ndarray
    skip_empty: bool
    plan: BatchPlan
    per: int  # slices per call
    chunks: list
    total: int  # network evaluations
    done: int = 0


def prepare_run(det, images, *, L, P, steps, seed, indices, batch_size, normalize, skip_empty,
                keep_mask_history, spacing) -> DetectRun:
    """Check and normalise the input for the detector ``det``, plan the batches and allocate
    the outputs (the keywords are those of :meth:`~.detector.Detector.iter_detect`)."""
    t_start = time.perf_counter()
    x = _checked_stack(det, images, L)
    N, C, H, W = x.shape
    applied = resolve_normalize(normalize, x)
    x = normalize_stack(x, applied)
    thresholds = [float(P)] if np.isscalar(P) else [float(p) for p in P]
    K = len(thresholds)
    idx = list(range(N)) if indices is None else [int(i) for i in indices]
    if len(idx) != N:
        raise ValueError(f"got {len(idx)} indices for {N} slices")
    canvas = det.canvas_for(spacing)
    n_steps = len(step_grid(L, steps)) - 1  # network evaluations per batch
    recon = np.zeros((K, N, C, H, W), np.float32)
    amap = np.zeros((K, N, H, W), np.float32)
    skipped = empty_slices(x) if skip_empty else np.zeros(N, bool)
    recon[:, skipped] = x[skipped]  # nothing to reconstruct: the map stays 0
    plan = det.plan_batches(batch_size, reserve_bytes=_host_bytes(det.device, recon, amap))
    per = plan.slices_per_call(K)
    todo = np.flatnonzero(~skipped)
    chunks = [todo[a:a + per] for a in range(0, len(todo), per)]
    return DetectRun(t_start=t_start, x=x, L=int(L), steps=steps, seed=int(seed),
                     thresholds=thresholds, idx=idx,
                     seeds=resolve_seeds([seed + i for i in idx], N),
                     applied=applied, canvas=canvas, spacing=spacing,
                     geom=preprocess.plan((H, W), det.image_size, det.preprocess_mode, canvas),
                     n_steps=n_steps, recon=recon, amap=amap, frac=np.zeros((K, N), np.float32),
                     hist=_mask_history(det, n_steps, K, N) if keep_mask_history else None,
                     skipped=skipped, skip_empty=bool(skip_empty), plan=plan,
                     per=per, chunks=chunks, total=len(chunks) * n_steps)


def _checked_stack(det, images, L) -> np.ndarray:
    """``images`` as a float32 (N, C, H, W) stack, refused when the model cannot take it."""
    x = as_stack(images)
    C = x.shape[1]
    if C != det.in_channels:
        names = det.meta.get("channel_names")
        raise ValueError(f"the input has {C} channel(s) but the model expects {det.in_channels}"
                         + (f" ({', '.join(names)})" if names else ""))
    if int(L) > det.max_L:
        raise ValueError(f"L = {int(L)} is beyond the noise levels this model was trained for "
                         f"(L <= {det.max_L}); choose L <= {det.max_L}")
    return x


def _mask_history(det, n_steps: int, K: int, N: int) -> np.ndarray:
    """The array of the latent masks' means per step (``keep_mask_history``)."""
    h = det.image_size // det.autoencoder.config.downsample_factor
    return np.zeros((n_steps, K, N, h, h), np.float16)


def _host_bytes(device: torch.device, *arrays: np.ndarray) -> int:
    """Bytes the result arrays will occupy in the memory the batches draw on (CPU only)."""
    return sum(a.nbytes for a in arrays) if device.type == "cpu" else 0


def as_stack(images) -> np.ndarray:
    """Slices (N, C, H, W) or one slice (C, H, W), array or tensor, as a float32 stack; a
    non-numeric or non-finite input is refused with a ValueError."""
    arr = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4:
        raise ValueError(f"expected slices as (N, C, H, W) or (C, H, W), got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"expected a numeric image, got dtype {arr.dtype}")
    arr = arr.astype(np.float32, copy=False)
    check_finite(arr)
    return arr
