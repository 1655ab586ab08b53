"""Shared helpers of the training tests: tiny synthetic data and a prepared-like directory."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset


def blob_images(n: int = 24, channels: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    """``(n, C, S, S)`` smooth random blobs in [0, 1] (a few Gaussians per image and channel)."""
    g = torch.Generator().manual_seed(seed)
    ax = torch.linspace(0, 1, size)
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    out = torch.zeros(n, channels, size, size)
    for i in range(n):
        for _ in range(3):
            cx, cy, r = torch.rand(3, generator=g).tolist()
            amp = 0.3 + 0.7 * torch.rand(channels, generator=g)
            blob = torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (0.01 + 0.04 * r))
            out[i] += amp[:, None, None] * blob
    return out.clamp(0, 1)


class Blobs(Dataset):
    """A tiny in-memory dataset; ``as_tuple`` returns ``(image, index)`` items instead."""

    def __init__(self, n: int = 24, channels: int = 2, size: int = 32, seed: int = 0,
                 as_tuple: bool = False) -> None:
        self.x = blob_images(n, channels, size, seed)
        self.as_tuple = as_tuple

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return (self.x[i], i) if self.as_tuple else self.x[i]


def make_prepared_dir(root: Path, n: int = 24, channels: int = 2, size: int = 32) -> Path:
    """A minimal prepared dataset directory (training split only) readable by PreparedDataset."""
    from src_training.prepare.prepared_format import FORMAT_NAME, FORMAT_VERSION, SplitWriter, quantise

    root = Path(root)
    root.mkdir(parents=True)
    w = SplitWriter(root, "train", channels, size)
    w.add(quantise(blob_images(n, channels, size).numpy()), case_id="case0",
          slice_index=np.arange(n), healthy=True)
    w.finish()
    names = ["t1", "flair"][:channels] if channels <= 2 else [f"c{i}" for i in range(channels)]
    meta = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "dataset": "brats",
            "channels": names, "image_size": size,
            "normalisation": {"method": "synthetic"}, "geometry": {}}
    (root / "meta.json").write_text(json.dumps(meta))
    return root


def loss_series(log_path: Path, key: str) -> list[float]:
    return [json.loads(line)[key] for line in Path(log_path).read_text().splitlines()
            if key in json.loads(line)]
