"""Structured corruption of the clean code for diffusion training (``--corruption``).

A share of the training codes gets a coherent wrong region (``patch``, ``blob`` or ``image``)
before the usual noise; the target stays ``z_t XOR z_0``. ``iid``, the default, is the paper
(docs/method.md §11.1, docs/design-notes.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .content_mix import content_mix
from .settings import KINDS, SHAPES, Corruption

__all__ = ["Corruption", "KINDS", "SHAPES", "region_masks", "corrupt_codes", "corrupt_images"]


def region_masks(n: int, h: int, w: int, cfg: Corruption, device=None) -> torch.Tensor:
    """``n`` boolean regions ``(n, 1, h, w)``, each covering a share of the cells drawn uniformly
    in ``[cfg.min_area, cfg.max_area]`` (up to rounding to whole cells)."""
    area = cfg.min_area + (cfg.max_area - cfg.min_area) * torch.rand(n)
    k = (area * h * w).round().clamp(1, h * w).long()
    if cfg.shape == "box":
        out = torch.zeros(n, 1, h, w, dtype=torch.bool)
        aspect = torch.exp((torch.rand(n) - 0.5) * 1.4)  # height / width in about [0.5, 2]
        bh = (k.float() * aspect).sqrt().round().clamp(1, h).long()
        bw = (k.float() / bh.float()).round().clamp(1, w).long()
        top = (torch.rand(n) * (h - bh + 1).float()).long()
        left = (torch.rand(n) * (w - bw + 1).float()).long()
        for i in range(n):
            out[i, 0, top[i]:top[i] + bh[i], left[i]:left[i] + bw[i]] = True
        return out.to(device) if device is not None else out
    field = torch.randn(n, 1, cfg.coarse, cfg.coarse)
    field = F.interpolate(field, size=(h, w), mode="bicubic", align_corners=False).flatten(1)
    # the k largest cells of each smooth field: one or a few smooth blobs of the drawn area
    order = field.argsort(dim=1, descending=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(h * w).expand(n, -1))
    out = (ranks < k[:, None]).view(n, 1, h, w)
    return out.to(device) if device is not None else out


def _chosen(n: int, prob: float) -> torch.Tensor:
    return torch.rand(n) < float(prob)


def corrupt_codes(z0: torch.Tensor, cfg: Corruption) -> torch.Tensor:
    """The code the forward noise starts from: ``z0`` (B, C, h, w) in {0, 1} with a corrupted
    region in a share ``cfg.prob`` of the codes (``patch`` or ``blob``; ``iid`` and ``image``
    return ``z0`` itself). Donors of ``patch`` are other codes of the batch (the code itself,
    shifted, when the batch holds one)."""
    if not cfg.active or cfg.kind == "image":
        return z0
    b, _, h, w = z0.shape
    chosen = _chosen(b, cfg.prob)
    region = region_masks(b, h, w, cfg) & chosen[:, None, None, None]
    if cfg.kind == "patch":
        donor_of = (torch.arange(b) + torch.randint(1, max(b, 2), (b,))) % b
        s = cfg.max_shift
        shifts = torch.randint(-s, s + 1, (b, 2))
        donor = torch.stack([torch.roll(z0[int(donor_of[i])], (int(shifts[i, 0]), int(shifts[i, 1])),
                                        dims=(-2, -1)) for i in range(b)])
        return torch.where(region.to(z0.device), donor, z0)
    flips = torch.rand(z0.shape) < cfg.flip_rate  # blob
    return torch.where((region & flips).to(z0.device), 1.0 - z0, z0)


def corrupt_images(x: torch.Tensor, cfg: Corruption) -> torch.Tensor:
    """``image`` kind: the batch of training images with a pasted region of another image of the
    batch in a share ``cfg.prob`` of them (other kinds: ``x`` itself)."""
    if not cfg.active or cfg.kind != "image":
        return x
    return content_mix(x, cfg.prob)
