"""Diffusion U-Net on binary latents (docs/method.md §6, guided-diffusion style).

``BernoulliUNet(cfg)(z_t, t)`` returns logits of the per-bit flip probability (docs/method.md §4).
``t`` is 1-based; :meth:`BernoulliUNet.embed_time` is the one place that feeds ``t - 1`` to the
sinusoidal embedding, so callers always pass the paper's t.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .configs import UNetConfig
from .nn_utils import Upsample, group_norm, zero_module

__all__ = ["BernoulliUNet", "timestep_embedding"]


def timestep_embedding(t_minus_1: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding ``[cos(t f_i), sin(t f_i)]`` of 0-based steps, float32 ``(B, dim)``.

    ``f_i = max_period ** (-i / (dim/2))`` for ``i = 0..dim/2-1``. Pass ``t - 1`` for paper steps t.
    """
    if dim % 2:
        raise ValueError(f"embedding dim must be even, got {dim}")
    half = dim // 2
    steps = torch.as_tensor(t_minus_1, device=getattr(t_minus_1, "device", None)).reshape(-1)
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=steps.device) / half
    )
    args = steps.to(torch.float32)[:, None] * freqs[None, :]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class ResBlock(nn.Module):
    """GN-SiLU-conv3x3, + SiLU-Linear(temb) added, GN-SiLU-dropout-zero conv3x3, + skip."""

    def __init__(self, in_ch: int, out_ch: int, temb_dim: int, groups: int, eps: float,
                 dropout: float) -> None:
        super().__init__()
        self.in_layers = nn.Sequential(
            group_norm(in_ch, groups, eps), nn.SiLU(), nn.Conv2d(in_ch, out_ch, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(temb_dim, out_ch))
        self.out_layers = nn.Sequential(
            group_norm(out_ch, groups, eps), nn.SiLU(), nn.Dropout(dropout),
            zero_module(nn.Conv2d(out_ch, out_ch, 3, padding=1)),
        )
        self.skip: nn.Module = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        h = h + self.emb_layers(emb)[:, :, None, None]
        return self.skip(x) + self.out_layers(h)


class AttentionBlock(nn.Module):
    """GN, 1x1 conv to q/k/v, multi-head (default single-head) softmax attention, zero 1x1 proj, residual."""

    def __init__(self, ch: int, num_heads: int, groups: int, eps: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm = group_norm(ch, groups, eps)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj_out = zero_module(nn.Conv2d(ch, ch, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, hgt, wid = x.shape
        heads = self.num_heads
        qkv = self.qkv(self.norm(x)).reshape(b, 3, heads, c // heads, hgt * wid)
        q, k, v = (qkv[:, i].transpose(-1, -2) for i in range(3))  # (B, heads, HW, ch)
        out = F.scaled_dot_product_attention(q, k, v)  # scale 1/sqrt(ch)
        out = out.transpose(-1, -2).reshape(b, c, hgt, wid)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """conv3x3 with stride 2."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class _Stage(nn.ModuleList):
    """A sequence of layers where ResBlocks also receive the time embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class BernoulliUNet(nn.Module):
    """U-Net predicting flip logits of noisy binary latents; see the module docstring."""

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        self.config = cfg
        mc, temb = cfg.model_channels, cfg.time_embed_dim
        g, eps = cfg.norm_groups, cfg.norm_eps

        def res(cin: int, cout: int) -> ResBlock:
            return ResBlock(cin, cout, temb, g, eps, cfg.dropout)

        def attn(ch: int) -> AttentionBlock:
            return AttentionBlock(ch, cfg.num_heads, g, eps)

        self.time_embed = nn.Sequential(nn.Linear(mc, temb), nn.SiLU(), nn.Linear(temb, temb))

        self.input_blocks = nn.ModuleList([_Stage([nn.Conv2d(cfg.latent_channels, mc, 3, padding=1)])])
        skip_chans = [mc]
        ch, res_px = mc, cfg.latent_size
        last = len(cfg.channel_mult) - 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers: list[nn.Module] = [res(ch, mc * mult)]
                ch = mc * mult
                if res_px in cfg.attention_resolutions:
                    layers.append(attn(ch))
                self.input_blocks.append(_Stage(layers))
                skip_chans.append(ch)
            if level != last:
                self.input_blocks.append(_Stage([Downsample(ch)]))
                skip_chans.append(ch)
                res_px //= 2

        mid: list[nn.Module] = [res(ch, ch)]
        if cfg.mid_attention:
            mid.append(attn(ch))
        mid.append(res(ch, ch))
        self.middle_block = _Stage(mid)

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers = [res(ch + skip_chans.pop(), mc * mult)]
                ch = mc * mult
                if res_px in cfg.attention_resolutions:
                    layers.append(attn(ch))
                if level != 0 and i == cfg.num_res_blocks:
                    layers.append(Upsample(ch))
                    res_px *= 2
                self.output_blocks.append(_Stage(layers))
        assert not skip_chans

        self.out = nn.Sequential(
            group_norm(ch, g, eps), nn.SiLU(),
            zero_module(nn.Conv2d(ch, cfg.latent_channels, 3, padding=1)),
        )

    def embed_time(self, t: torch.Tensor | int, batch: int, device: torch.device | None = None
                   ) -> torch.Tensor:
        """Time embedding ``(batch, time_embed_dim)`` of **1-based** steps ``t`` (feeds ``t - 1``)."""
        weight = self.time_embed[0].weight
        device = weight.device if device is None else device
        steps = torch.as_tensor(t, device=device)
        if steps.dtype.is_floating_point or steps.dtype == torch.bool:
            raise TypeError(f"t must hold integer steps 1..T, got dtype {steps.dtype}")
        if steps.ndim == 0:
            steps = steps.expand(batch)
        if steps.shape != (batch,):
            raise ValueError(f"t must be an int or have shape ({batch},), got {tuple(steps.shape)}")
        emb = timestep_embedding(steps - 1, self.config.model_channels)  # float32
        return self.time_embed(emb.to(weight.dtype))

    def forward(self, z_t: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """Flip logits ``(B, C, h, w)`` for noisy bits ``z_t`` (float 0/1) at 1-based steps ``t``."""
        if z_t.ndim != 4 or z_t.shape[1] != self.config.latent_channels:
            raise ValueError(
                f"z_t must be (B, {self.config.latent_channels}, h, w), got {tuple(z_t.shape)}"
            )
        if not z_t.dtype.is_floating_point:
            z_t = z_t.to(self.out[-1].weight.dtype)
        emb = self.embed_time(t, z_t.shape[0], z_t.device)
        h = z_t
        skips: list[torch.Tensor] = []
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)

    def flip_prob(self, z_t: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """``eps_hat = sigmoid(forward(z_t, t))``: probability that each bit of z_t is flipped."""
        return torch.sigmoid(self(z_t, t))
