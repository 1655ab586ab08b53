"""From a checkpoint to anomaly maps: preprocess -> encode -> masked sampler -> decode -> map.

:class:`Detector` works on a stack of 2D slices ``(N, C, H, W)`` (a single slice ``(C, H, W)`` or a
whole volume ``(C, X, Y, Z)`` via :meth:`Detector.detect_volume`). Slices and the sweep of
thresholds P run batched together. :meth:`Detector.iter_detect` is a generator (progress ticks,
cancel between steps) for the napari widget; :meth:`Detector.detect` drives it to the end.

Intensities: the model expects each channel in [0, 1] as in training. ``normalize="auto"`` leaves
data already in [0, 1] alone and otherwise applies the training preparation's per-volume robust
percentile normalisation over the whole stack given (pass a whole volume, not a lone slice, so that
the statistics are the volume's).

Speed (see :mod:`.batching` and :mod:`.accel`): ``batch_size="auto"`` (the default) runs as many
slices x thresholds per network call as the device's free memory allows, so a whole volume takes
one or a few calls; results do not depend on the batch size (per-trajectory seeds). Slices that
are constant (e.g. all zeros outside the brain) are skipped by default: zero anomaly map, masked
fraction 0, input as reconstruction, listed in ``provenance["skipped_slices"]``. On CUDA the
networks run under bf16/fp16 autocast (``amp``), optionally channels_last and ``torch.compile``-d.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from datetime import datetime, timezone
from typing import Callable, Generator, Sequence

import numpy as np
import torch

from . import preprocess
from .preprocess import canvas_for, field_of_view
from .accel import autocast, maybe_compile, resolve_amp, to_channels_last
from .batching import BatchPlan, available_memory, empty_slices, plan_batches
from ..models.checkpoint import Checkpoint, load_checkpoint
from .device import resolve_device
from .result import DetectionResult, Progress
from .settings import DEFAULTS
from .volume import (as_channels_first, check_finite, iter_detect_volume, normalize_stack,
                     resolve_normalize)
from ..diffusion.sampler import SamplerStep, drive, masked_sampler, relay, resolve_seeds
from ..diffusion.schedule import BernoulliSchedule, step_grid



@dataclass
class _Run:
    """One call of :meth:`Detector.iter_detect`: its input, plan and output arrays."""

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


class Detector:
    """A trained autoencoder + diffusion U-Net ready for inference on one device.

    Speed options (results agree with the defaults within the tests' tolerances):

    - ``amp``: ``"auto"`` (default: bf16 autocast on CUDA where supported, else fp16; off on the
      CPU), ``"off"``, ``"bf16"`` (allowed on the CPU when asked for), ``"fp16"`` (CUDA only).
      Autocast covers the U-Net (its S evaluations dominate) and the decoder; the encoder (one
      call per slice) stays float32 so that the codes are exact, and the flip probabilities,
      the sampler's arithmetic and the maps are float32.
    - ``channels_last``: NHWC memory format for both networks (helps CUDA convolutions; the
      modules passed in are converted in place).
    - ``compile``: ``torch.compile`` the U-Net (``True``: inductor, or a backend name); when
      compilation fails the detector warns once and runs eagerly (``provenance["compile"]``).
    """

    def __init__(self, autoencoder, unet, schedule: BernoulliSchedule | None = None, *,
                 meta: dict | None = None, model_hash: str = "unsaved", device="auto",
                 amp: str = "auto", channels_last: bool = False, compile: bool | str = False):
        self.device, self.device_warning = resolve_device(device)
        self.amp = str(amp)
        self.amp_dtype = resolve_amp(amp, self.device)
        self.channels_last = bool(channels_last)
        self.autoencoder = autoencoder.to(self.device).eval()
        self.unet = unet.to(self.device).eval()
        if self.channels_last:
            to_channels_last(self.autoencoder)
            to_channels_last(self.unet)
        self._unet_forward = maybe_compile(self.unet, compile)
        self.compile = compile
        self.schedule = schedule or BernoulliSchedule()
        self.meta = dict(meta or {})
        self.model_hash = model_hash
        pre = self.meta.get("preprocess", {})
        self.preprocess_mode = pre.get("mode", "pad")
        self.canvas = pre.get("canvas")  # as recorded; see canvas_for() for slices of known spacing
        self.fov, self.spacing_mm = field_of_view(self.meta, self.image_size)
        norm = self.meta.get("normalisation") or {}
        # volumes of a model trained on percentile-normalised volumes are always normalised so
        # (volume_normalize)
        self.percentile_volumes = str(norm.get("method", "")).startswith("percentile")

    @classmethod
    def from_checkpoint(cls, source: str | Checkpoint, device="auto", **options) -> "Detector":
        """Build from a checkpoint file (or loaded :class:`Checkpoint`); ``options`` are the speed
        options of the constructor (``amp``, ``channels_last``, ``compile``)."""
        ck = source if isinstance(source, Checkpoint) else load_checkpoint(source)
        meta = dict(ck.meta)
        if not meta.get("name") and ck.path is not None:
            meta["name"] = Path(ck.path).name  # provenance names the model file at least
        return cls(ck.build_autoencoder(), ck.build_unet(), ck.build_schedule(), meta=meta,
                   model_hash=ck.short_hash, device=device, **options)

    def plan_batches(self, batch_size="auto", reserve_bytes: int = 0, **kwargs) -> BatchPlan:
        """The :class:`~.batching.BatchPlan` for this model and device (``batch_size`` "auto" or
        an int of trajectories); ``reserve_bytes`` is subtracted from the free memory first; other
        keywords go to :func:`~.batching.plan_batches` (``safety``, ``max_trajectories``, ...)."""
        avail = None
        if reserve_bytes and "available" not in kwargs:
            avail = max(0, available_memory(self.device) - int(reserve_bytes))
        kwargs.setdefault("available", avail)
        return plan_batches(self.autoencoder.config, self.unet.config, self.device, batch_size,
                            **kwargs)

    @property
    def speed_settings(self) -> dict:
        """The speed options in effect (for provenance and benchmarks)."""
        status = getattr(self._unet_forward, "status", "off")
        return {"amp": self.amp, "amp_dtype": None if self.amp_dtype is None else str(self.amp_dtype),
                "channels_last": self.channels_last,
                "compile": status if self.compile else "off"}

    @property
    def max_L(self) -> int:
        """The largest noise level the U-Net was trained for (``meta["max_L"]``, written by
        ``train-diffusion --t-max``; else the schedule's T)."""
        return int(self.meta.get("max_L") or self.schedule.T)

    @property
    def in_channels(self) -> int:
        return int(self.autoencoder.config.in_channels)

    @property
    def image_size(self) -> int:
        return int(self.autoencoder.config.image_size)

    def volume_normalize(self, mode: str = "auto") -> str:
        """The normalisation for a whole volume: ``"auto"`` becomes ``"percentile"`` for a model
        trained on percentile-normalised volumes (whatever range the data have), as the
        training volumes were."""
        return "percentile" if mode == "auto" and self.percentile_volumes else mode

    def canvas_for(self, spacing: Sequence[float] | None):
        """See :func:`canvas_for` (module level) for this model."""
        return canvas_for(self.meta, self.image_size, spacing)

    # ------------------------------------------------------------------------------------
    def detect(self, images, **kwargs) -> DetectionResult:
        """Run :meth:`iter_detect` to the end; ``progress`` may be a callable taking a Progress."""
        progress: Callable[[Progress], None] | None = kwargs.pop("progress", None)
        return drive(self.iter_detect(images, **kwargs), progress)

    def detect_volume(self, volume, slice_axis: int = -1, slices: Sequence[int] | None = None,
                      **kwargs) -> DetectionResult:
        """Detect on a (C, X, Y, Z) volume (or 3D (X, Y, Z) for one channel) slice by slice along
        ``slice_axis`` of the spatial axes; ``slices`` picks a subset. Per-slice seeds follow the
        slice index, so a slice gives the same result alone as within the volume. ``spacing``:
        the voxel sizes of the three spatial axes (see :func:`.volume.iter_detect_volume`)."""
        vol = as_channels_first(volume)
        if vol.ndim != 4:
            raise ValueError(f"expected a volume (C, X, Y, Z) or (X, Y, Z), got shape {np.shape(volume)}")
        ax = slice_axis % 3
        spacing = kwargs.pop("spacing", None)
        if spacing is not None:  # voxel sizes of the spatial axes -> those of a slice's rows, cols
            spacing = [float(v) for i, v in enumerate(spacing) if i != ax]
        progress = kwargs.pop("progress", None)
        gen = iter_detect_volume(self, np.moveaxis(vol, 1 + ax, 1), slices,
                                 normalize=kwargs.pop("normalize", "auto"), spacing=spacing, **kwargs)
        return drive(gen, progress)

    def iter_detect(
        self,
        images,
        *,
        L: int = DEFAULTS.L,
        P: float | Sequence[float] = DEFAULTS.P,
        steps: int | None = None,
        seed: int = DEFAULTS.seed,
        indices: Sequence[int] | None = None,
        batch_size: int | str | None = "auto",
        normalize: str = "auto",
        deterministic_encoding: bool = False,
        deterministic_last_step: bool = False,
        keep_mask_history: bool = False,
        skip_empty: bool = True,
        spacing: Sequence[float] | None = None,
    ) -> Generator[Progress, None, DetectionResult]:
        """Generator over sampler steps; returns a :class:`DetectionResult`.

        ``images``: (N, C, H, W) or (C, H, W) array/tensor. ``indices``: per-slice numbers used for
        the seeds (image ``i`` uses ``seed + indices[i]``; default 0..N-1). ``batch_size`` counts
        trajectories (slices x thresholds) per network call: ``"auto"``/None (default) chooses it
        from the free memory (:meth:`plan_batches`), an int is used as given (at least one slice
        per call). ``skip_empty``: constant slices get no network work (see the module docstring).
        ``spacing``: the (row, column) pixel size in mm; for a model with a field of view in mm
        (BraTS-style: 240 mm at 1 mm) the slice is padded or cropped to that field of view, so a
        cropped or finer volume keeps the anatomy's training scale (None: the training spacing).
        """
        run = self._prepare(images, L=L, P=P, steps=steps, seed=seed, indices=indices,
                            batch_size=batch_size, normalize=normalize, skip_empty=skip_empty,
                            keep_mask_history=keep_mask_history, spacing=spacing)
        for sel in run.chunks:
            yield from self._run_chunk(run, sel, deterministic_encoding, deterministic_last_step)
        prov = self._provenance(run, deterministic_encoding=deterministic_encoding,
                                deterministic_last_step=deterministic_last_step)
        return DetectionResult(run.thresholds, run.recon, run.amap, run.frac, run.x, run.hist, prov,
                               slices=run.idx)

    def _prepare(self, images, *, L, P, steps, seed, indices, batch_size, normalize, skip_empty,
                 keep_mask_history, spacing) -> "_Run":
        """Check and normalise the input, plan the batches and allocate the outputs."""
        t_start = time.perf_counter()
        x = _as_stack(images)
        N, C, H, W = x.shape
        if C != self.in_channels:
            names = self.meta.get("channel_names")
            raise ValueError(f"the input has {C} channel(s) but the model expects {self.in_channels}"
                             + (f" ({', '.join(names)})" if names else ""))
        if int(L) > self.max_L:
            raise ValueError(f"L = {int(L)} is beyond the noise levels this model was trained for "
                             f"(L <= {self.max_L}); choose L <= {self.max_L}")
        applied = resolve_normalize(normalize, x)
        x = normalize_stack(x, applied)
        thresholds = [float(P)] if np.isscalar(P) else [float(p) for p in P]
        K = len(thresholds)
        idx = list(range(N)) if indices is None else [int(i) for i in indices]
        if len(idx) != N:
            raise ValueError(f"got {len(idx)} indices for {N} slices")
        canvas = self.canvas_for(spacing)
        n_steps = len(step_grid(L, steps)) - 1  # network evaluations per batch
        recon = np.zeros((K, N, C, H, W), np.float32)
        amap = np.zeros((K, N, H, W), np.float32)
        skipped = empty_slices(x) if skip_empty else np.zeros(N, bool)
        recon[:, skipped] = x[skipped]  # nothing to reconstruct: the map stays 0
        plan = self.plan_batches(batch_size, reserve_bytes=_host_bytes(self.device, recon, amap))
        per = plan.slices_per_call(K)
        todo = np.flatnonzero(~skipped)
        chunks = [todo[a:a + per] for a in range(0, len(todo), per)]
        hist = None
        if keep_mask_history:
            h = self.image_size // self.autoencoder.config.downsample_factor
            hist = np.zeros((n_steps, K, N, h, h), np.float16)
        return _Run(t_start=t_start, x=x, L=int(L), steps=steps, seed=int(seed),
                    thresholds=thresholds, idx=idx, seeds=resolve_seeds([seed + i for i in idx], N),
                    applied=applied, canvas=canvas, spacing=spacing,
                    geom=preprocess.plan((H, W), self.image_size, self.preprocess_mode, canvas),
                    n_steps=n_steps, recon=recon, amap=amap, frac=np.zeros((K, N), np.float32),
                    hist=hist, skipped=skipped, skip_empty=bool(skip_empty), plan=plan,
                    per=per, chunks=chunks, total=len(chunks) * n_steps)

    def _run_chunk(self, run: "_Run", sel: np.ndarray, deterministic_encoding: bool,
                   deterministic_last_step: bool) -> Generator[Progress, None, None]:
        """Encode, sample and decode the slices ``sel`` for every threshold (one batch)."""
        K = len(run.thresholds)
        seeds = [run.seeds[i] for i in sel]
        z = self._encode(run.x[sel], run.geom, seeds, deterministic_encoding, run.plan.ae_images)
        gen = masked_sampler(self._flip_model, z, self.schedule, run.L, run.thresholds,
                             steps=run.steps, seeds=seeds,
                             deterministic_last_step=deterministic_last_step)
        span, positions = (int(sel[0]), int(sel[-1]) + 1), tuple(int(i) for i in sel)

        def tick(step: SamplerStep) -> Progress:
            if run.hist is not None:
                m = step.mask.float().mean(dim=1).reshape(len(sel), K, *step.mask.shape[-2:])
                run.hist[step.index][:, sel] = m.transpose(0, 1).cpu().numpy()
            run.done += 1
            return Progress(run.done, run.total, elapsed=time.perf_counter() - run.t_start,
                            images=span, slices=positions, step=step)

        out = yield from relay(gen, tick)
        run.frac[:, sel] = out.masked_fraction.reshape(len(sel), K).T.cpu().numpy()
        self._decode_into(out.z0, run.x, sel, K, run.geom, run.plan.ae_images, run.recon, run.amap)

    def _provenance(self, run: "_Run", **flags) -> dict:
        """What the run was, for the result's provenance (``flags``: the sampler options)."""
        idx, plan = run.idx, run.plan
        return {
            "method": "masked Bernoulli latent diffusion (Wolleb et al., MICCAI 2024)",
            "L": run.L, "P": run.thresholds, "steps": run.n_steps, "seed": run.seed,
            "slice_indices": idx if len(idx) <= 4096 else f"{idx[0]}..{idx[-1]}",
            "device": str(self.device), "device_warning": self.device_warning,
            "model_hash": self.model_hash, "model": self.meta.get("name"),
            "preprocess": {"mode": self.preprocess_mode, "canvas": run.canvas,
                           "size": self.image_size,
                           "spacing_mm": None if run.spacing is None else [float(v) for v in run.spacing],
                           "training_spacing_mm": self.spacing_mm},
            "normalize": run.applied, **flags,
            "skip_empty": run.skip_empty,
            "skipped_slices": [idx[i] for i in np.flatnonzero(run.skipped)],
            "batch": {"trajectories_per_call": plan.trajectories, "slices_per_call": run.per,
                      "autoencoder_images_per_call": plan.ae_images, "source": plan.source,
                      "calls": len(run.chunks), "network_evaluations": run.total},
            **self.speed_settings,
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "seconds": round(time.perf_counter() - run.t_start, 3),
            "versions": _versions(),
        }

    # -- the pieces ------------------------------------------------------------------------
    def _model_input(self, t: torch.Tensor) -> torch.Tensor:
        return t.contiguous(memory_format=torch.channels_last) if self.channels_last else t

    def _encode(self, xs: np.ndarray, geom, seeds: list[int], deterministic: bool,
                per_call: int) -> torch.Tensor:
        """Binary codes (n, C, h, w) of slices ``xs``, encoded ``per_call`` images at a time; the
        Bernoulli draws use one generator per image seed (independent of the batching)."""
        codes = []
        with torch.inference_mode():
            for a in range(0, len(xs), per_call):
                xb = preprocess.to_model(torch.from_numpy(xs[a:a + per_call]).to(self.device), geom)
                # float32 even under amp: one call per slice, and the codes stay exact
                probs = self.autoencoder.encode(self._model_input(xb)).float().contiguous()
                if deterministic:
                    codes.append((probs > 0.5).float())
                else:
                    u = torch.stack([torch.rand(probs.shape[1:], device=self.device,
                                                generator=_gen(s, self.device))
                                     for s in seeds[a:a + per_call]])
                    codes.append((u < probs).float())
        return torch.cat(codes)

    def _decode_into(self, z0: torch.Tensor, x: np.ndarray, sel: np.ndarray, K: int, geom,
                     per_call: int, recon: np.ndarray, amap: np.ndarray) -> None:
        """Decode the codes ``z0`` (trajectory ``b * K + k`` for slice ``sel[b]``) a few slices at
        a time and write reconstructions and squared-error maps into ``recon`` / ``amap``."""
        C, H, W = x.shape[1:]
        per = max(1, per_call // K)
        with torch.inference_mode():
            for a in range(0, len(sel), per):
                part = sel[a:a + per]
                nb = len(part)
                with autocast(self.device, self.amp_dtype):
                    rec = self.autoencoder.decode(self._model_input(z0[a * K:(a + nb) * K]))
                rec = preprocess.from_model(rec.float().clamp_(0, 1), geom).clamp_(0, 1)
                xin = torch.from_numpy(x[part]).to(self.device).repeat_interleave(K, dim=0)
                err = ((xin - rec) ** 2).sum(dim=1)
                recon[:, part] = rec.reshape(nb, K, C, H, W).transpose(0, 1).cpu().numpy()
                amap[:, part] = err.reshape(nb, K, H, W).transpose(0, 1).cpu().numpy()

    def _flip_model(self, z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``eps_hat`` for the sampler: the U-Net (autocast, channels_last, compiled as set up),
        sigmoid in float32, returned in the sampler's (contiguous float32) layout."""
        with autocast(self.device, self.amp_dtype):
            logits = self._unet_forward(self._model_input(z_t), t)
        return torch.sigmoid(logits.float()).contiguous()


# -- helpers ------------------------------------------------------------------------------
def _gen(seed: int, device) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


def _host_bytes(device: torch.device, *arrays: np.ndarray) -> int:
    """Bytes the result arrays will occupy in the memory the batches draw on (CPU only)."""
    return sum(a.nbytes for a in arrays) if device.type == "cpu" else 0


def _versions() -> dict:
    from ... import __version__

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
    check_finite(arr)
    return arr
