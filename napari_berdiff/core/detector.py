"""From a checkpoint to anomaly maps: preprocess -> encode -> masked sampler -> decode -> map.

:class:`Detector` works on a stack of 2D slices ``(N, C, H, W)`` (a single slice ``(C, H, W)`` or a
whole volume ``(C, X, Y, Z)`` via :meth:`Detector.detect_volume`). Slices and the sweep of
thresholds P run batched together. :meth:`Detector.iter_detect` is a generator (progress ticks,
cancel between steps) for the napari widget; :meth:`Detector.detect` drives it to the end.

Intensities: the model expects each channel in [0, 1] as in training. ``normalize="auto"`` leaves
data already in [0, 1] alone and otherwise applies the training preparation's per-volume robust
percentile normalisation over the whole stack given (pass a whole volume, not a lone slice, so that
the statistics are the volume's).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Generator, Sequence

import numpy as np
import torch

from . import preprocess
from .checkpoint import Checkpoint, load_checkpoint
from .device import resolve_device
from .sampler import SamplerStep, drive, masked_sampler, resolve_seeds
from .schedule import BernoulliSchedule, step_grid

NORMALIZE_MODES = ("auto", "percentile", "none")


@dataclass
class DetectionResult:
    """Outputs at the input's geometry; the leading axis K runs over the thresholds P."""

    thresholds: list[float]
    reconstruction: np.ndarray  # (K, N, C, H, W) float32 in [0, 1]
    anomaly_map: np.ndarray  # (K, N, H, W) float32: sum_c (x - x_rec)^2
    masked_fraction: np.ndarray  # (K, N) the image-level score
    input: np.ndarray  # (N, C, H, W) the normalised input the maps compare against
    mask_history: np.ndarray | None = None  # (S, K, N, h, w) float16: share of bits masked
    provenance: dict = field(default_factory=dict)

    def index_of(self, P: float) -> int:
        """Index of threshold ``P`` in the sweep (ValueError when it was not sampled)."""
        for k, p in enumerate(self.thresholds):
            if abs(p - float(P)) < 1e-9:
                return k
        raise ValueError(f"P={P} was not in the sweep {self.thresholds}")


@dataclass
class DetectProgress:
    """One tick of :meth:`Detector.iter_detect`: after each network evaluation."""

    done: int
    total: int
    images: tuple[int, int]  # the slice range [start, stop) of the current batch
    step: SamplerStep


class Detector:
    """A trained autoencoder + diffusion U-Net ready for inference on one device."""

    def __init__(self, autoencoder, unet, schedule: BernoulliSchedule | None = None, *,
                 meta: dict | None = None, model_hash: str = "unsaved", device="auto"):
        self.device, self.device_warning = resolve_device(device)
        self.autoencoder = autoencoder.to(self.device).eval()
        self.unet = unet.to(self.device).eval()
        self.schedule = schedule or BernoulliSchedule()
        self.meta = dict(meta or {})
        self.model_hash = model_hash
        pre = self.meta.get("preprocess", {})
        self.preprocess_mode = pre.get("mode", "pad")
        self.canvas = pre.get("canvas")

    @classmethod
    def from_checkpoint(cls, source: str | Checkpoint, device="auto") -> "Detector":
        ck = source if isinstance(source, Checkpoint) else load_checkpoint(source)
        return cls(ck.build_autoencoder(), ck.build_unet(), ck.build_schedule(), meta=ck.meta,
                   model_hash=ck.short_hash, device=device)

    @property
    def in_channels(self) -> int:
        return int(self.autoencoder.config.in_channels)

    @property
    def image_size(self) -> int:
        return int(self.autoencoder.config.image_size)

    # ------------------------------------------------------------------------------------
    def detect(self, images, **kwargs) -> DetectionResult:
        """Run :meth:`iter_detect` to the end; ``progress`` may be a callable taking DetectProgress."""
        progress: Callable[[DetectProgress], None] | None = kwargs.pop("progress", None)
        return drive(self.iter_detect(images, **kwargs), progress)

    def detect_volume(self, volume, slice_axis: int = -1, slices: Sequence[int] | None = None,
                      **kwargs) -> DetectionResult:
        """Detect on a (C, X, Y, Z) volume (or 3D (X, Y, Z) for one channel) slice by slice along
        ``slice_axis`` of the spatial axes; ``slices`` picks a subset. Per-slice seeds follow the
        slice index, so a slice gives the same result alone as within the volume."""
        vol = _as_channels_first(volume)
        _check_finite(vol)
        vol = normalize_stack(vol, kwargs.pop("normalize", "auto"), channel_axis=0)
        stack, idx = volume_to_slices(vol, slice_axis, slices)
        return self.detect(stack, indices=idx, normalize="none", **kwargs)

    def iter_detect(
        self,
        images,
        *,
        L: int = 200,
        P: float | Sequence[float] = 0.5,
        steps: int | None = None,
        seed: int = 0,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
        normalize: str = "auto",
        deterministic_encoding: bool = False,
        deterministic_last_step: bool = False,
        keep_mask_history: bool = False,
    ) -> Generator[DetectProgress, None, DetectionResult]:
        """Generator over sampler steps; returns a :class:`DetectionResult`.

        ``images``: (N, C, H, W) or (C, H, W) array/tensor. ``indices``: per-slice numbers used for
        the seeds (image ``i`` uses ``seed + indices[i]``; default 0..N-1). ``batch_size`` counts
        trajectories (slices x thresholds) per network call (default 8).
        """
        t_start = time.perf_counter()
        x = _as_stack(images)
        N, C, H, W = x.shape
        if C != self.in_channels:
            names = self.meta.get("channel_names")
            raise ValueError(f"the input has {C} channel(s) but the model expects {self.in_channels}"
                             + (f" ({', '.join(names)})" if names else ""))
        x = normalize_stack(x, normalize)
        thresholds = [float(P)] if np.isscalar(P) else [float(p) for p in P]
        K = len(thresholds)
        idx = list(range(N)) if indices is None else [int(i) for i in indices]
        if len(idx) != N:
            raise ValueError(f"got {len(idx)} indices for {N} slices")
        image_seeds = resolve_seeds([seed + i for i in idx], N)
        geom = preprocess.plan((H, W), self.image_size, self.preprocess_mode, self.canvas)
        per_batch = max(1, int(batch_size or 8) // K)
        chunks = [(a, min(a + per_batch, N)) for a in range(0, N, per_batch)]
        n_steps = len(step_grid(L, steps)) - 1  # network evaluations
        total = len(chunks) * n_steps

        recon = np.zeros((K, N, C, H, W), np.float32)
        amap = np.zeros((K, N, H, W), np.float32)
        frac = np.zeros((K, N), np.float32)
        hist = None
        done = 0
        for a, b in chunks:
            xb = preprocess.to_model(torch.from_numpy(x[a:b]).to(self.device), geom)
            with torch.inference_mode():
                probs = self.autoencoder.encode(xb).float()
                if deterministic_encoding:
                    z = (probs > 0.5).float()
                else:
                    u = torch.stack([torch.rand(probs.shape[1:], device=self.device,
                                                generator=_gen(s, self.device)) for s in image_seeds[a:b]])
                    z = (u < probs).float()
            gen = masked_sampler(self._flip_model, z, self.schedule, L, thresholds, steps=steps,
                                 seeds=image_seeds[a:b], deterministic_last_step=deterministic_last_step)
            while True:
                try:
                    step = next(gen)
                except StopIteration as stop:
                    out = stop.value
                    break
                if keep_mask_history:
                    if hist is None:
                        h, w = step.mask.shape[-2:]
                        hist = np.zeros((n_steps, K, N, h, w), np.float16)
                    m = step.mask.float().mean(dim=1).reshape(b - a, K, *step.mask.shape[-2:])
                    hist[step.index, :, a:b] = m.transpose(0, 1).cpu().numpy()
                done += 1
                yield DetectProgress(done=done, total=total, images=(a, b), step=step)
            with torch.inference_mode():
                rec = self.autoencoder.decode(out.z0).float().clamp_(0, 1)  # (nb*K, C, S, S)
                rec = preprocess.from_model(rec, geom).clamp_(0, 1)
                xin = torch.from_numpy(x[a:b]).to(self.device).repeat_interleave(K, dim=0)
                err = ((xin - rec) ** 2).sum(dim=1)
            nb = b - a
            recon[:, a:b] = rec.reshape(nb, K, C, H, W).transpose(0, 1).cpu().numpy()
            amap[:, a:b] = err.reshape(nb, K, H, W).transpose(0, 1).cpu().numpy()
            frac[:, a:b] = out.masked_fraction.reshape(nb, K).T.cpu().numpy()

        prov = {
            "method": "masked Bernoulli latent diffusion (Wolleb et al., MICCAI 2024)",
            "L": int(L), "P": thresholds, "steps": n_steps, "seed": int(seed),
            "slice_indices": idx if N <= 4096 else f"{idx[0]}..{idx[-1]}",
            "device": str(self.device), "device_warning": self.device_warning,
            "model_hash": self.model_hash, "model": self.meta.get("name"),
            "preprocess": {"mode": self.preprocess_mode, "canvas": self.canvas, "size": self.image_size},
            "normalize": normalize, "deterministic_encoding": deterministic_encoding,
            "deterministic_last_step": deterministic_last_step,
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "seconds": round(time.perf_counter() - t_start, 3),
            "versions": _versions(),
        }
        return DetectionResult(thresholds, recon, amap, frac, x, hist, prov)

    def _flip_model(self, z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet.flip_prob(z_t, t)


# -- helpers ------------------------------------------------------------------------------
def _gen(seed: int, device) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


def _versions() -> dict:
    from .. import __version__

    return {"napari_berdiff": __version__, "torch": torch.__version__}


def _as_stack(images) -> np.ndarray:
    arr = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4:
        raise ValueError(f"expected slices as (N, C, H, W) or (C, H, W), got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"expected a numeric image, got dtype {arr.dtype}")
    arr = arr.astype(np.float32, copy=False)
    _check_finite(arr)
    return arr


def _check_finite(arr: np.ndarray) -> None:
    bad = int(np.count_nonzero(~np.isfinite(arr)))
    if bad:
        raise ValueError(f"the input contains {bad} NaN/Inf value(s); fix or mask them first")


def _as_channels_first(volume) -> np.ndarray:
    v = np.asarray(volume, dtype=np.float32)
    return v[None] if v.ndim == 3 else v


def volume_to_slices(volume, slice_axis: int = -1, slices: Sequence[int] | None = None):
    """(C, X, Y, Z) or (X, Y, Z) -> ((n, C, h, w) stack, slice indices) along a spatial axis."""
    v = _as_channels_first(volume)
    if v.ndim != 4:
        raise ValueError(f"expected a volume (C, X, Y, Z) or (X, Y, Z), got shape {np.shape(volume)}")
    ax = slice_axis % 3 + 1
    stack = np.moveaxis(v, ax, 0)  # (Z, C, X, Y)
    idx = list(range(stack.shape[0])) if slices is None else [int(i) for i in slices]
    if idx and (min(idx) < 0 or max(idx) >= stack.shape[0]):
        raise ValueError(f"slice indices must lie in 0..{stack.shape[0] - 1}")
    return np.ascontiguousarray(stack[idx]), idx


def slices_to_volume(arr: np.ndarray, slice_axis: int = -1) -> np.ndarray:
    """Inverse of :func:`volume_to_slices` for outputs shaped (..., N, H, W): returns
    (..., X, Y, Z) with the slice axis put back at ``slice_axis`` of the three spatial axes.
    (Move a channel axis in front of N first, e.g. (K, N, C, H, W) -> (K, C, N, H, W).)"""
    n_axis = arr.ndim - 3
    return np.moveaxis(arr, n_axis, n_axis + slice_axis % 3)


def normalize_stack(x: np.ndarray, mode: str = "auto", channel_axis: int = 1) -> np.ndarray:
    """Per-channel intensity normalisation of a stack or volume (see the module docstring):
    ``"percentile"`` is the training preparation's robust per-volume normalisation
    (:func:`napari_berdiff.core.data.readers.normalize_volume`), ``"auto"`` applies it only when
    the data are not already within [0, 1], ``"none"`` leaves the data as they are."""
    if mode not in NORMALIZE_MODES:
        raise ValueError(f"normalize must be one of {NORMALIZE_MODES}, got {mode!r}")
    if mode == "none" or (mode == "auto" and float(x.min()) >= 0.0 and float(x.max()) <= 1.0):
        return x
    from .data.readers import normalize_volume

    return normalize_volume(x, channel_axis=channel_axis)
