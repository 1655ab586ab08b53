"""Small helpers shared by the network modules."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["count_parameters", "zero_module", "group_norm"]


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters of ``module`` (optionally only those with requires_grad)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def zero_module(module: nn.Module) -> nn.Module:
    """Set all parameters of ``module`` to zero in place and return it."""
    with torch.no_grad():
        for p in module.parameters():
            p.zero_()
    return module


def group_norm(channels: int, groups: int, eps: float) -> nn.GroupNorm:
    """GroupNorm with affine parameters; ``groups`` must divide ``channels``."""
    return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=eps, affine=True)


class Upsample(nn.Module):
    """Nearest-neighbour x2 then conv3x3 (the up-sampling of both networks, docs/method.md §6)."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
