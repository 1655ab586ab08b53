"""From a checkpoint to anomaly maps: preprocess -> encode -> masked sampler -> decode -> map.

:class:`Detector` works on a stack of 2D slices ``(N, C, H, W)`` (a single slice ``(C, H, W)`` or a
whole volume ``(C, X, Y, Z)`` via :meth:`Detector.detect_volume`). Slices and the sweep of
thresholds P run batched together. :meth:`Detector.iter_detect` is a generator (progress ticks,
cancel between steps) for the napari widget; :meth:`Detector.detect` drives it to the end. A run
is set up by :mod:`.detect_run`, batch by batch worked by :mod:`.detect_chunk` and recorded by
:mod:`.provenance`.

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

from pathlib import Path
from typing import Callable, Generator, Sequence

import numpy as np
import torch

from .preprocess import canvas_for, field_of_view
from .accel import autocast, input_layout, maybe_compile, resolve_amp, to_channels_last
from .batching import BatchPlan, available_memory, plan_batches
from .detect_chunk import run_chunk
from .detect_run import prepare_run
from ..models.checkpoint import Checkpoint, load_checkpoint
from .device import resolve_device
from .provenance import provenance
from .result import DetectionResult, Progress
from .settings import DEFAULTS
from .volume import as_channels_first, iter_detect_volume
from ..diffusion.sampler import drive
from ..diffusion.schedule import BernoulliSchedule


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
        run = prepare_run(self, images, L=L, P=P, steps=steps, seed=seed, indices=indices,
                          batch_size=batch_size, normalize=normalize, skip_empty=skip_empty,
                          keep_mask_history=keep_mask_history, spacing=spacing)
        for sel in run.chunks:
            yield from run_chunk(self, run, sel, deterministic_encoding, deterministic_last_step)
        prov = provenance(self, run, deterministic_encoding=deterministic_encoding,
                          deterministic_last_step=deterministic_last_step)
        return DetectionResult(run.thresholds, run.recon, run.amap, run.frac, run.x, run.hist, prov,
                               slices=run.idx)

    # -- the U-Net as the sampler calls it -----------------------------------------------------
    def _flip_model(self, z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``eps_hat`` for the sampler: the U-Net (autocast, channels_last, compiled as set up),
        sigmoid in float32, returned in the sampler's (contiguous float32) layout."""
        with autocast(self.device, self.amp_dtype):
            logits = self._unet_forward(input_layout(z_t, self.channels_last), t)
        return torch.sigmoid(logits.float()).contiguous()
