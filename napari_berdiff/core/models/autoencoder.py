"""Binarizing autoencoder (docs/method.md §6, after Binary Latent Diffusion).

Image ``(B, c, S, S)`` -> encoder features ``(B, z_channels, S/f, S/f)`` -> 1x1 conv + sigmoid ->
per-bit probabilities ``(B, C, S/f, S/f)`` -> Bernoulli bits -> bias-free 1x1 conv back to
``z_channels`` -> decoder -> image ``(B, c, S, S)`` (no output activation; clamp to [0, 1] at use).

With the "paper" preset the model has exactly 4,103,716 (c=4) / 4,101,985 (c=1) parameters, all of
them used by the forward pass.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .configs import AutoencoderConfig
from .nn_utils import Upsample, group_norm

__all__ = ["BinaryAutoencoder", "ResBlock", "AttnBlock", "Downsample", "Upsample"]


class ResBlock(nn.Module):
    """GN-SiLU-conv3x3-GN-SiLU-conv3x3 plus a skip (1x1 conv only when the channels change)."""

    def __init__(self, in_ch: int, out_ch: int, groups: int, eps: float) -> None:
        super().__init__()
        self.norm1 = group_norm(in_ch, groups, eps)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = group_norm(out_ch, groups, eps)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip: nn.Module = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with 1x1 q/k/v/proj convs and a residual."""

    def __init__(self, ch: int, groups: int, eps: float) -> None:
        super().__init__()
        self.norm = group_norm(ch, groups, eps)
        self.q = nn.Conv2d(ch, ch, 1)
        self.k = nn.Conv2d(ch, ch, 1)
        self.v = nn.Conv2d(ch, ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, hgt, wid = x.shape
        h = self.norm(x)
        # (B, C, H, W) -> (B, 1, HW, C); SDPA scales by 1/sqrt(C)
        q, k, v = (m(h).flatten(2).transpose(1, 2).unsqueeze(1) for m in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.squeeze(1).transpose(1, 2).reshape(b, c, hgt, wid)
        return x + self.proj(out)


class Downsample(nn.Module):
    """Zero-pad right/bottom by one pixel, then conv3x3 with stride 2 (halves H and W)."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


def _level(in_ch: int, out_ch: int, n_blocks: int, attn: bool, groups: int, eps: float
           ) -> tuple[list[nn.Module], int]:
    """``n_blocks`` ResBlocks (the first changes in_ch -> out_ch), each followed by attention if asked."""
    blocks: list[nn.Module] = []
    ch = in_ch
    for _ in range(n_blocks):
        blocks.append(ResBlock(ch, out_ch, groups, eps))
        ch = out_ch
        if attn:
            blocks.append(AttnBlock(ch, groups, eps))
    return blocks, ch


def _mid(ch: int, attn: bool, groups: int, eps: float) -> list[nn.Module]:
    mid: list[nn.Module] = [ResBlock(ch, ch, groups, eps)]
    if attn:
        mid.append(AttnBlock(ch, groups, eps))
    mid.append(ResBlock(ch, ch, groups, eps))
    return mid


class Encoder(nn.Module):
    """conv3x3 c->nf; levels (downsample after all but the last); mid; GN; conv3x3 -> z_channels."""

    def __init__(self, cfg: AutoencoderConfig) -> None:
        super().__init__()
        g, eps = cfg.norm_groups, cfg.norm_eps
        blocks: list[nn.Module] = [nn.Conv2d(cfg.in_channels, cfg.nf, 3, padding=1)]
        ch, res = cfg.nf, cfg.image_size
        for i, mult in enumerate(cfg.ch_mult):
            level, ch = _level(ch, cfg.nf * mult, cfg.num_res_blocks, res in cfg.attn_resolutions, g, eps)
            blocks += level
            if i != len(cfg.ch_mult) - 1:
                blocks.append(Downsample(ch))
                res //= 2
        blocks += _mid(ch, cfg.mid_attention, g, eps)
        blocks.append(group_norm(ch, g, eps))
        blocks.append(nn.Conv2d(ch, cfg.z_channels, 3, padding=1))
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class Decoder(nn.Module):
    """GN(z); conv3x3 z->top; mid; levels reversed (upsample after all but the last); GN; conv3x3 -> c."""

    def __init__(self, cfg: AutoencoderConfig) -> None:
        super().__init__()
        g, eps = cfg.norm_groups, cfg.norm_eps
        ch = cfg.nf * cfg.ch_mult[-1]
        res = cfg.latent_size
        blocks: list[nn.Module] = [
            group_norm(cfg.z_channels, g, eps),
            nn.Conv2d(cfg.z_channels, ch, 3, padding=1),
        ]
        blocks += _mid(ch, cfg.mid_attention, g, eps)
        for i in reversed(range(len(cfg.ch_mult))):
            level, ch = _level(ch, cfg.nf * cfg.ch_mult[i], cfg.num_res_blocks,
                               res in cfg.attn_resolutions, g, eps)
            blocks += level
            if i != 0:
                blocks.append(Upsample(ch))
                res *= 2
        blocks.append(group_norm(ch, g, eps))
        blocks.append(nn.Conv2d(ch, cfg.in_channels, 3, padding=1))
        self.blocks = nn.Sequential(*blocks)

    @property
    def conv_out(self) -> nn.Conv2d:
        """The final conv3x3 -> c."""
        return self.blocks[-1]  # type: ignore[return-value]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class BinaryAutoencoder(nn.Module):
    """Binarizing autoencoder; see the module docstring. Build it from an :class:`AutoencoderConfig`."""

    def __init__(self, cfg: AutoencoderConfig) -> None:
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.to_probs = nn.Conv2d(cfg.z_channels, cfg.latent_channels, 1, bias=True)
        self.from_bits = nn.Conv2d(cfg.latent_channels, cfg.z_channels, 1, bias=False)
        self.decoder = Decoder(cfg)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Per-bit probabilities ``(B, C, S/f, S/f)`` in (0, 1) of an image batch ``(B, c, S, S)``."""
        return torch.sigmoid(self.to_probs(self.encoder(x)))

    @staticmethod
    def sample_bits(probs: torch.Tensor, generator: torch.Generator | None = None,
                    straight_through: bool = False) -> torch.Tensor:
        """Bernoulli bits (float 0/1) from ``probs``.

        With ``straight_through`` the result is ``bits + p - p.detach()``: the values are the bits,
        the gradient flows to ``probs`` as if the sampling were the identity (training).
        """
        p = probs.detach()
        bits = torch.bernoulli(p.float(), generator=generator).to(probs.dtype)
        if straight_through:
            # (probs - p) is exactly 0 in value, so the bits stay exactly 0/1
            return bits + (probs - p)
        return bits

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Image ``(B, c, S, S)`` from codes ``(B, C, S/f, S/f)``: bits or continuous values in [0, 1]."""
        return self.decoder(self.from_bits(z.to(self.from_bits.weight.dtype)))

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(x_rec, probs, bits)`` with straight-through bits (bits carry the gradient to probs)."""
        probs = self.encode(x)
        bits = self.sample_bits(probs, generator=generator, straight_through=True)
        return self.decode(bits), probs, bits

    @property
    def last_layer_weight(self) -> torch.Tensor:
        """Weight of the decoder's final conv (for the adaptive GAN loss weight)."""
        return self.decoder.conv_out.weight

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """``(C, h, w)`` of the binary latent."""
        s = self.config.latent_size
        return (self.config.latent_channels, s, s)
