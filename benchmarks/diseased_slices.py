"""What the model-diagnosis benchmarks (``unet_anomaly.py``, ``oracle_mask.py``) share: a model
and the diseased slices of a prepared split, the labels on the latent grid, the common options."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from napari_berdiff.core.models.checkpoint import load_checkpoint  # noqa: E402
from napari_berdiff.core.evaluation.report import pick_slices  # noqa: E402
from src_training.train.datasets import load_eval_split  # noqa: E402


def load_diseased(ckpt_path: str, data: str, split: str, max_slices: int | None):
    """``(checkpoint, slices, cell)``: the model, at most ``max_slices`` slices with a labelled
    anomaly (evenly spaced over the split) and the pixels per latent cell side. Unreadable input
    ends the program with one line naming it."""
    try:
        ck = load_checkpoint(ckpt_path)
        if ck.unet_config is None or ck.ae_config is None:
            raise ValueError(f"{ckpt_path} is not a full model (autoencoder and U-Net)")
        s = load_eval_split(data, split)
        ck.check_channels(s.images.shape[1], f"{data} ({split})")
    except (OSError, ValueError, KeyError) as e:
        raise SystemExit(f"error: {e}") from None
    diseased = np.flatnonzero(s.labels.reshape(len(s), -1).any(axis=1))
    if diseased.size == 0:
        raise SystemExit(f"error: {data} ({split}) has no labelled anomalies")
    s = s.subset(diseased[pick_slices(diseased.size, max_slices)])
    return ck, s, s.images.shape[-1] // ck.ae_config.latent_size


def cell_fraction(labels: np.ndarray, cell: int) -> np.ndarray:
    """(B, H, W) pixel mask -> (B, H/cell, W/cell): the labelled fraction of each latent cell."""
    b, h, w = labels.shape
    return labels.reshape(b, h // cell, cell, w // cell, cell).mean(axis=(2, 4))


def parser(doc: str, max_slices: int, batch: int) -> argparse.ArgumentParser:
    """The options both benchmarks take; each adds its own."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("model", help="a full model (autoencoder and U-Net) or a diffusion run's last.pt")
    ap.add_argument("data", help="a prepared dataset with labelled anomalies")
    ap.add_argument("--split", default="test", choices=("val", "test"))
    ap.add_argument("--max-slices", type=int, default=max_slices, help="diseased slices, evenly spaced")
    ap.add_argument("--P", type=float, default=0.5, help="mask threshold")
    ap.add_argument("--batch", type=int, default=batch)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", help="also write the figures here")
    return ap


def parse(ap: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    return a
