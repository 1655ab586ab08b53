"""Shrink a trained checkpoint for shipping: float16 storage of the weights (loaded back into
float32 models, see :func:`~.checkpoint.load_checkpoint`), no training state; and write a copy
with new meta entries (:func:`write_meta`, used by ``berdiff calibrate``)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .checkpoint import atomic_torch_save, file_sha256, load_raw

__all__ = ["export_checkpoint", "write_meta"]


def _half(state: dict) -> dict:
    return {k: v.half() if torch.is_floating_point(v) else v for k, v in state.items()}


def export_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, *, half: bool = True,
                      overwrite: bool = False) -> Path:
    """Write ``src``'s networks, schedule and meta to ``dst`` (atomically) without the training
    state; with ``half`` the floating-point weights are stored as float16 (half the size; the
    models compute in float32 after loading). ``meta["export"]`` records what was done."""
    src, dst = Path(src), Path(dst)
    if dst.resolve() == src.resolve():  # checked first: --overwrite would not help here
        raise ValueError("the export must go to another file than its source")
    if dst.is_dir():
        raise ValueError(f"{dst} is a folder: give the file name to write (e.g. {dst / src.name})")
    if dst.exists() and not overwrite:
        raise FileExistsError(f"{dst} exists; pass --overwrite to replace it")
    obj = load_raw(src)
    out = {k: v for k, v in obj.items() if k != "training_state"}
    for key in ("autoencoder", "unet"):
        if key in out:
            state = out[key]["state_dict"]
            out[key] = dict(out[key], state_dict=_half(state) if half else state)
    meta = dict(out.get("meta", {}))
    # no time stamp: exporting the same file twice gives the same bytes (and hash)
    meta["export"] = {"from": src.name, "from_sha256": file_sha256(src),
                      "weights": "float16" if half else "float32"}
    out["meta"] = meta
    atomic_torch_save(out, dst)
    return dst


def write_meta(src: str | os.PathLike, dst: str | os.PathLike, updates: dict, *,
               overwrite: bool = False) -> Path:
    """Write ``src`` to ``dst`` with ``meta`` entries replaced by ``updates`` (everything else,
    weights and training state included, unchanged). ``dst`` may be ``src`` itself (in place):
    like every write here it goes to a temporary file first and is renamed over the target, so
    an interruption leaves the old file whole. Another existing ``dst`` needs ``overwrite``."""
    src, dst = Path(src), Path(dst)
    same = dst.exists() and dst.resolve() == src.resolve()
    if dst.is_dir():
        raise ValueError(f"{dst} is a folder: give the file name to write (e.g. {dst / src.name})")
    if dst.exists() and not same and not overwrite:
        raise FileExistsError(f"{dst} exists; pass --overwrite to replace it")
    obj = load_raw(src)
    obj["meta"] = {**dict(obj.get("meta") or {}), **updates}
    atomic_torch_save(obj, dst)
    return dst
