"""Helpers shared by the two training stages: dataset checks, provenance and checkpoint metadata."""

from __future__ import annotations

import datetime as _dt
import json
import sys
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from .train_state import LoopOptions, collate_first

__all__ = ["probe_dataset", "check_dataset", "fixed_batch", "training_record",
           "meta_from_prepared", "dataset_label", "start_stage", "loop_options"]

_NIFTI = (".nii", ".nii.gz")


def start_stage(settings):
    """The process group and device of a stage (``settings``: a TrainingRun); sets the CPU
    threads and says on stderr when the device asked for is not available."""
    from .distributed import init_distributed

    info = init_distributed(settings.device)
    if settings.threads:
        torch.set_num_threads(int(settings.threads))
    if info.device_warning and info.is_main:
        print(f"warning: {info.device_warning}", file=sys.stderr)
    return info


def loop_options(settings, out_dir, on_end=None) -> LoopOptions:
    """The training loop's options from a stage's settings (a TrainingRun)."""
    s = settings
    return LoopOptions(out_dir=Path(out_dir), steps=s.steps, batch_size=s.batch_size, seed=s.seed,
                       ckpt_every=s.ckpt_every, log_every=s.log_every,
                       sample_every=s.sample_every, resume=s.resume, num_workers=s.num_workers,
                       progress=s.progress, on_end=on_end)


def probe_dataset(dataset) -> tuple[int, int]:
    """``(channels, size)`` of the dataset's first image (which must be square ``(C, S, S)``)."""
    if len(dataset) == 0:
        raise ValueError("the training dataset is empty")
    x = collate_first([dataset[0]])[0]
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"dataset images must be square (C, S, S), got {tuple(x.shape)}")
    return int(x.shape[0]), int(x.shape[-1])


def check_dataset(dataset, in_channels: int, image_size: int, what: str,
                  probed: tuple[int, int] | None = None) -> None:
    """A clear error when the dataset's images do not fit the model's input (``probed``: the
    ``(channels, size)`` from :func:`probe_dataset`, if already known)."""
    c, s = probed or probe_dataset(dataset)
    if c != in_channels:
        raise ValueError(f"the dataset has {c} channel(s) but {what} expects {in_channels}")
    if s != image_size:
        raise ValueError(f"the dataset's images are {s}x{s} but {what} expects "
                         f"{image_size}x{image_size}; prepare the data with --image-size "
                         f"{image_size} or choose a config made for {s}x{s} images")


def fixed_batch(dataset, n: int, device: torch.device) -> torch.Tensor:
    """``n`` images for the sample grids: from the prepared directory's validation split when it
    has one (half healthy, half diseased slices, so that the grids show whether anomalies are
    removed on images the model never trained on), else evenly spread over ``dataset``."""
    val = _val_images(dataset, n)
    if val is not None:
        return val.to(device)
    n = max(1, min(int(n), len(dataset)))
    idx = torch.linspace(0, len(dataset) - 1, n).round().long().tolist()
    return collate_first([dataset[i] for i in idx]).to(device)


def _val_images(dataset, n: int) -> torch.Tensor | None:
    root = getattr(dataset, "root", None)
    if root is None:
        return None
    from .datasets import PreparedDataset
    from ..prepare.prepared_format import split_files
    try:
        val = PreparedDataset(root, "val", healthy_only=False)
    except (FileNotFoundError, OSError, ValueError, KeyError):
        return None
    if len(val) == 0:
        return None
    with np.load(Path(root) / split_files("val")["index"], allow_pickle=False) as z:
        healthy = np.asarray(z["healthy"], bool)
    sick, well = np.flatnonzero(~healthy), np.flatnonzero(healthy)
    k = min(len(sick), int(n) - min(len(well), int(n) // 2))
    pick = [int(i) for i in np.linspace(0, len(sick) - 1, k).round()] if k > 0 else []
    idx = [sick[i] for i in pick]
    rest = int(n) - len(idx)
    if rest > 0 and len(well):
        idx += [well[int(i)] for i in np.linspace(0, len(well) - 1, min(rest, len(well))).round()]
    if not idx:
        return None
    return collate_first([val[int(i)] for i in sorted(idx)])


def dataset_label(dataset) -> str:
    """A human-readable name of the dataset (its directory for a PreparedDataset)."""
    root = getattr(dataset, "root", None)
    return str(root) if root is not None else type(dataset).__name__


def training_record(stage: str, *, steps: int, preset: str | None, dataset, world_size: int,
                    **hyper: Any) -> dict:
    """Provenance for ``meta["training"]``: command line, steps, data, preset, time, settings."""
    return {"stage": stage, "trained_with": " ".join(sys.argv), "steps": int(steps),
            "preset": preset, "dataset": dataset_label(dataset), "n_samples": len(dataset),
            "world_size": int(world_size),
            "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            **{k: v for k, v in hyper.items()
               if v is None or isinstance(v, (bool, int, float, str, list, tuple))}}


def _preprocess_mode(prepared: Mapping[str, Any], root: Path | None) -> dict:
    if isinstance(prepared.get("preprocess"), Mapping):
        return dict(prepared["preprocess"])
    kind = prepared.get("dataset")
    geometry = prepared.get("geometry", {}) or {}
    if kind == "brats":
        return {"mode": "pad"}  # zero-pad 240 -> 256 (or pad to square, then resize)
    if kind == "folder" and root is not None and (root / "split.json").is_file():
        files = json.loads((root / "split.json").read_text()).get("train", [])
        if files and all(str(f).lower().endswith(_NIFTI) for f in files):
            return {"mode": "pad"}  # NIfTI slices follow the BraTS rule
    return {"mode": "square" if geometry.get("keep_aspect") else "resize"}


def meta_from_prepared(prepared: Mapping[str, Any], root: str | Path | None = None) -> dict:
    """Checkpoint metadata from a prepared directory's ``meta.json``: the channel names, the
    preprocessing the detector must repeat (``preprocess``), the modality and the normalisation."""
    root = Path(root) if root is not None else None
    meta: dict[str, Any] = {"channel_names": list(prepared.get("channels", [])),
                            "preprocess": _preprocess_mode(prepared, root),
                            "modality": prepared.get("dataset"),
                            "image_size": prepared.get("image_size")}
    if "normalisation" in prepared:
        meta["normalisation"] = prepared["normalisation"]
    if root is not None:
        meta["prepared_data"] = str(root)
    return meta
