"""Content mixing for autoencoder training: teach the autoencoder to reproduce what it never saw.

Pastes a soft-edged region of another healthy slice, with new contrast, into each image; the
target is the mixed image itself. Off by default (``train-ae --content-mix``; docs/method.md §7,
docs/design-notes.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["content_mix", "blob_masks", "mixed_fraction"]


def blob_masks(n: int, size: int, centres: torch.Tensor, *, generator: torch.Generator | None = None,
               min_radius: float = 0.04, max_radius: float = 0.22) -> torch.Tensor:
    """``n`` soft irregular blobs ``(n, 1, size, size)`` in [0, 1] around ``centres`` ((n, 2)
    pixel rows/cols); radii are fractions of ``size``, the outline is modulated by smooth noise."""
    dev = centres.device
    radius = (min_radius + (max_radius - min_radius) * torch.rand(n, generator=generator)) * size
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32),
                            torch.arange(size, dtype=torch.float32), indexing="ij")
    yy, xx = yy.to(dev), xx.to(dev)
    dy = yy[None] - centres[:, 0, None, None]
    dx = xx[None] - centres[:, 1, None, None]
    dist = torch.sqrt(dy * dy + dx * dx)
    # irregular outline: the radius varies with a smooth random field (coarse noise, upsampled)
    coarse = torch.rand(n, 1, 6, 6, generator=generator) * 2 - 1
    wobble = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)[:, 0]
    r_local = radius.to(dev)[:, None, None] * (1 + 0.45 * wobble.to(dev))
    soft = 1.0 + 1.5 * torch.rand(n, generator=generator).to(dev)[:, None, None]
    return torch.sigmoid((r_local - dist) / soft)[:, None]


def content_mix(x: torch.Tensor, prob: float, *, generator: torch.Generator | None = None,
                foreground: float = 0.05) -> torch.Tensor:
    """A copy of the batch ``x`` (B, C, S, S) in [0, 1] where each image, with probability
    ``prob``, carries one pasted region from another image of the batch (see the module text).

    The region is centred on a pixel drawn with probability proportional to the receiving image's
    squared intensity (largest over channels) and kept within its foreground (any channel above
    ``foreground``, dilated by 4 pixels), so the new content lies in the organ, not in the air;
    values stay in [0, 1]. ``prob <= 0`` or a batch of one returns ``x`` unchanged (the same tensor).
    """
    if x.ndim != 4:
        raise ValueError(f"content_mix expects (B, C, S, S), got shape {tuple(x.shape)}")
    b, c, h, w = x.shape
    if prob <= 0 or b < 2:
        return x
    if h != w:
        raise ValueError(f"content_mix expects square images, got {h}x{w}")
    chosen = torch.rand(b, generator=generator) < float(prob)
    if not bool(chosen.any()):
        return x
    idx = torch.nonzero(chosen).flatten()
    n = int(idx.numel())
    # donor: another image of the batch (a derangement of the chosen ones), shifted at random
    donor_of = (idx + torch.randint(1, b, (n,), generator=generator)) % b
    shifts = torch.randint(-h // 4, h // 4 + 1, (n, 2), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5
    donors = []
    for k in range(n):
        d = torch.roll(x[donor_of[k]], shifts=(int(shifts[k, 0]), int(shifts[k, 1])), dims=(-2, -1))
        donors.append(torch.flip(d, dims=(-1,)) if bool(flips[k]) else d)
    donor = torch.stack(donors)
    gain = 0.4 + 1.4 * torch.rand(n, c, 1, 1, generator=generator)
    offset = 0.5 * torch.rand(n, c, 1, 1, generator=generator) - 0.25
    content = (donor * gain.to(x) + offset.to(x)).clamp(0, 1)
    # centres drawn with probability ~ intensity^2 of the receiving image (in the organ, on its
    # brighter structures, not in the air); the region stays within its (dilated) foreground
    recv = x[idx].amax(1)
    weights = recv.flatten(1).clamp_min(0) ** 2
    empty = weights.sum(1) <= 0
    weights[empty] = 1.0
    flat = torch.multinomial(weights.cpu().float(), 1, generator=generator).flatten()
    centres = torch.stack([flat // w, flat % w], 1).float()
    m = blob_masks(n, h, centres.to(x.device), generator=generator).to(x.dtype)
    fg = F.max_pool2d((recv > foreground).to(x.dtype)[:, None], 9, stride=1, padding=4)
    m = m * torch.where(empty[:, None, None, None].to(x.device), torch.ones_like(fg), fg)
    out = x.clone()
    out[idx] = x[idx] * (1 - m) + content * m
    return out


def mixed_fraction(x: torch.Tensor, mixed: torch.Tensor, tol: float = 1e-6) -> float:
    """Fraction of pixels changed by the mixing (to inspect a setting; used by the tests)."""
    return float(((x - mixed).abs().amax(1) > tol).float().mean())

