"""Reading prepared dataset directories (written by :mod:`src_training.prepare`) for training
and evaluation."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from src_training.prepare.prepared_format import dequantise, open_split, read_meta, split_files

__all__ = ["PreparedDataset", "EvalSplit", "load_eval_split"]


class PreparedDataset(Dataset):
    """Healthy slices of a prepared directory as float32 tensors ``(C, S, S)`` in [0, 1].

    ``split="train"`` (default) reads ``train_healthy.npy``; ``"val"`` / ``"test"`` read the
    healthy slices of those splits (``healthy_only=False``: all of them). The array is
    memory-mapped, opened lazily in each DataLoader worker. ``hflip=True`` flips each sample
    left-right with probability 0.5 (torch's global RNG, so worker seeding applies).
    """

    def __init__(self, root: str | Path, split: str = "train", *, hflip: bool = False,
                 healthy_only: bool = True, mmap: bool = True):
        self.root = Path(root)
        self.meta = read_meta(self.root)
        self.split = split
        self.hflip = bool(hflip)
        self.mmap = bool(mmap)
        self._path = self.root / split_files(split)["images"]
        if not self._path.is_file():
            raise FileNotFoundError(f"{self._path} is missing: incomplete prepared directory")
        with np.load(self.root / split_files(split)["index"], allow_pickle=False) as z:
            healthy = z["healthy"]
            self.case_id = z["case_id"]
            self.slice_index = z["slice_index"]
        self.indices = (np.flatnonzero(healthy) if healthy_only and split != "train"
                        else np.arange(len(healthy)))
        self._arr: np.ndarray | None = None

    @property
    def channels(self) -> int:
        return len(self.meta["channels"])

    @property
    def image_size(self) -> int:
        return int(self.meta["image_size"])

    def _array(self) -> np.ndarray:
        if self._arr is None:
            self._arr = np.load(self._path, mmap_mode="r" if self.mmap else None,
                                allow_pickle=False)
        return self._arr

    def __getstate__(self) -> dict[str, Any]:  # do not pickle the (memory-mapped) array
        state = self.__dict__.copy()
        state["_arr"] = None
        return state

    def __len__(self) -> int:
        return int(len(self.indices))

    def __getitem__(self, i: int) -> torch.Tensor:
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        x = dequantise(np.asarray(self._array()[self.indices[i]]))
        t = torch.from_numpy(x)
        if self.hflip and torch.rand(()) < 0.5:
            t = torch.flip(t, dims=(-1,))
        return t

    def info(self, i: int) -> tuple[str, int]:
        """``(case_id, slice_index)`` of sample ``i``."""
        j = self.indices[i]
        return str(self.case_id[j]), int(self.slice_index[j])


@dataclass
class EvalSplit:
    """All slices of a val/test split. ``images`` (N, C, S, S) float32 in [0, 1] (or the stored
    uint8 with ``decode=False``); ``labels`` (N, S, S) uint8 binary; ``raw_labels`` (BraTS) or
    None; ``healthy`` (N,) bool; ``case_id`` (N,) str; ``slice_index`` (N,) int; ``class_name``,
    ``has_mask`` (OCT) and ``source`` per slice; ``meta`` the directory's meta.json."""

    images: np.ndarray
    labels: np.ndarray
    healthy: np.ndarray
    case_id: np.ndarray
    slice_index: np.ndarray
    raw_labels: np.ndarray | None = None
    class_name: np.ndarray | None = None
    has_mask: np.ndarray | None = None
    source: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, sel) -> "EvalSplit":
        """Rows selected by a boolean mask or index array (e.g. ``s.subset(~s.healthy)``)."""
        pick = lambda a: None if a is None else a[sel]  # noqa: E731
        return EvalSplit(pick(self.images), pick(self.labels), pick(self.healthy),
                         pick(self.case_id), pick(self.slice_index), pick(self.raw_labels),
                         pick(self.class_name), pick(self.has_mask), pick(self.source), self.meta)


def load_eval_split(out_dir: str | Path, split: str = "test", *, decode: bool = True,
                    mmap: bool = True) -> EvalSplit:
    """Read a prepared directory's ``"val"`` or ``"test"`` split into an :class:`EvalSplit`.

    ``decode=True`` returns images as float32 in [0, 1] (read fully into memory); with
    ``decode=False`` they stay the stored uint8 (memory-mapped when ``mmap``), to decode per
    batch with :func:`src_training.prepare.prepared_format.dequantise`.
    """
    if split not in ("val", "test"):
        raise ValueError(f"split must be 'val' or 'test', got {split!r}")
    meta = read_meta(out_dir)
    d = open_split(out_dir, split, mmap=mmap)
    images = dequantise(d["images"]) if decode else d["images"]
    labels = np.asarray(d["labels"]) if d["labels"] is not None else np.zeros(
        (images.shape[0],) + images.shape[2:], np.uint8)
    return EvalSplit(images=images, labels=labels, healthy=d["healthy"].astype(bool),
                     case_id=d["case_id"], slice_index=d["slice_index"],
                     raw_labels=None if d.get("raw_labels") is None
                     else np.asarray(d["raw_labels"]),
                     class_name=d.get("class_name"), has_mask=d.get("has_mask"),
                     source=d.get("source"), meta=meta)
