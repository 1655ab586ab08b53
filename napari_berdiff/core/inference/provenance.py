"""What a detection run was, recorded in its result's ``provenance`` dict."""

from __future__ import annotations

import time
from datetime import datetime, timezone

import numpy as np
import torch

from .detect_run import DetectRun


def provenance(det, run: DetectRun, **flags) -> dict:
    """The provenance of ``run`` on the detector ``det`` (``flags``: the sampler options)."""
    idx, plan = run.idx, run.plan
    return {
        "method": "masked Bernoulli latent diffusion (Wolleb et al., MICCAI 2024)",
        "L": run.L, "P": run.thresholds, "steps": run.n_steps, "seed": run.seed,
        "slice_indices": idx if len(idx) <= 4096 else f"{idx[0]}..{idx[-1]}",
        "device": str(det.device), "device_warning": det.device_warning,
        "model_hash": det.model_hash, "model": det.meta.get("name"),
        "preprocess": {"mode": det.preprocess_mode, "canvas": run.canvas,
                       "size": det.image_size,
                       "spacing_mm": (None if run.spacing is None
                                      else [float(v) for v in run.spacing]),
                       "training_spacing_mm": det.spacing_mm},
        "normalize": run.applied, **flags,
        "skip_empty": run.skip_empty,
        "skipped_slices": [idx[i] for i in np.flatnonzero(run.skipped)],
        "batch": {"trajectories_per_call": plan.trajectories, "slices_per_call": run.per,
                  "autoencoder_images_per_call": plan.ae_images, "source": plan.source,
                  "calls": len(run.chunks), "network_evaluations": run.total},
        **det.speed_settings,
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - run.t_start, 3),
        "versions": _versions(),
    }


def _versions() -> dict:
    from ... import __version__

    return {"napari_berdiff": __version__, "torch": torch.__version__}
