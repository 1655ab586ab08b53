"""PatchGAN discriminator for the autoencoder's adversarial loss (docs/method.md §6)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["PatchDiscriminator"]


class PatchDiscriminator(nn.Module):
    """PatchGAN: conv4x4 s2 c->w, LReLU 0.2; conv4x4 s2 w->2w, BN, LReLU; conv4x4 s2 2w->4w, BN,
    LReLU; conv4x4 s1 4w->8w, BN, LReLU; conv4x4 s1 8w->1. ``width`` w = 64 is the paper's.

    Output: one logit per patch, ``(B, 1, S/8 - 2, S/8 - 2)`` for an ``S x S`` input.
    Weights are initialised DCGAN-style (conv N(0, 0.02), BN weight N(1, 0.02), bias 0).
    """

    def __init__(self, in_channels: int, width: int = 64) -> None:
        super().__init__()
        if in_channels < 1 or width < 1:
            raise ValueError("in_channels and width must be >= 1")
        w = width
        self.main = nn.Sequential(
            nn.Conv2d(in_channels, w, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
            *self._bn_block(w, 2 * w, stride=2),
            *self._bn_block(2 * w, 4 * w, stride=2),
            *self._bn_block(4 * w, 8 * w, stride=1),
            nn.Conv2d(8 * w, 1, 4, stride=1, padding=1),
        )
        self.reset_parameters()

    @staticmethod
    def _bn_block(cin: int, cout: int, stride: int) -> list[nn.Module]:
        return [
            nn.Conv2d(cin, cout, 4, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.LeakyReLU(0.2, inplace=True),
        ]

    def reset_parameters(self) -> None:
        """DCGAN-style initialisation."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Patch logits (higher = more real)."""
        return self.main(x)
