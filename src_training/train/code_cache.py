"""Encode the training images once: the diffusion stage then trains at the U-Net's own speed.

The autoencoder is frozen, so drawing each step's code from cached float16 probabilities is the
same distribution as encoding each batch (docs/method.md §4); with flips both orientations are
cached (docs/design-notes.md, "Training internals").
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.utils.data import Dataset

from napari_berdiff.core.inference.batching import available_memory

from .train_state import collate_first

__all__ = ["CodeCache", "cache_bytes", "describe", "should_cache"]


def cache_bytes(n_items: int, latent_shape: tuple[int, int, int], hflip: bool) -> int:
    """Bytes the float16 cache of ``n_items`` codes takes (twice that with flips)."""
    c, h, w = latent_shape
    return int(n_items) * c * h * w * 2 * (2 if hflip else 1)


def should_cache(mode: str, n_bytes: int, budget_fraction: float = 0.25) -> tuple[bool, str]:
    """Decide on the cache: ``mode`` "on", "off" or "auto" (when it fits in a quarter of the
    available memory). Returns the decision and a sentence saying why."""
    mib = n_bytes / 2**20
    if mode == "off":
        return False, "code cache off: the encoder runs on every batch"
    if mode == "on":
        return True, f"code cache on: {mib:.0f} MiB"
    if mode != "auto":
        raise ValueError(f"cache mode must be 'auto', 'on' or 'off', got {mode!r}")
    free = available_memory("cpu")
    if n_bytes <= budget_fraction * free:
        return True, f"code cache: {mib:.0f} MiB (of {free / 2**30:.1f} GiB available)"
    return False, (f"code cache skipped: {mib:.0f} MiB would exceed a quarter of the "
                   f"{free / 2**30:.1f} GiB available; the encoder runs on every batch")


class CodeCache(Dataset):
    """Items are the autoencoder's probabilities ``(latent_channels, h, w)`` (float32 tensors) of
    the items of ``dataset``, computed once by ``encode`` (a function of a batch of images on
    ``device``). ``dataset.hflip`` (when set) is honoured as described in the module docstring."""

    def __init__(self, dataset, encode: Callable[[torch.Tensor], torch.Tensor],
                 device: torch.device | str = "cpu", batch_size: int = 32) -> None:
        self.hflip = bool(getattr(dataset, "hflip", False))
        n = len(dataset)
        if n == 0:
            raise ValueError("cannot cache the codes of an empty dataset")
        had = getattr(dataset, "hflip", None)
        if had is not None:
            dataset.hflip = False  # read the stored orientation; flips are cached separately
        try:
            views = [self._encode_all(dataset, encode, device, batch_size, flip)
                     for flip in ((False, True) if self.hflip else (False,))]
        finally:
            if had is not None:
                dataset.hflip = had
        self.codes = torch.stack(views, 1)  # (N, 1 or 2, C, h, w) float16

    @staticmethod
    @torch.no_grad()
    def _encode_all(dataset, encode, device, batch_size, flip) -> torch.Tensor:
        out = []
        n = len(dataset)
        for a in range(0, n, batch_size):
            x = collate_first([dataset[i] for i in range(a, min(a + batch_size, n))]).to(device)
            if flip:
                x = torch.flip(x, dims=(-1,))
            out.append(encode(x).float().cpu().to(torch.float16))
        return torch.cat(out)

    @property
    def nbytes(self) -> int:
        return int(self.codes.numel() * self.codes.element_size())

    def __len__(self) -> int:
        return int(self.codes.shape[0])

    def __getitem__(self, i: int) -> torch.Tensor:
        view = 1 if self.hflip and torch.rand(()) < 0.5 else 0
        return self.codes[i, view].float()


def describe(cache: CodeCache) -> str:
    views = "both orientations" if cache.hflip else "one orientation"
    return f"{len(cache)} codes ({views}), {cache.nbytes / 2**20:.0f} MiB"
