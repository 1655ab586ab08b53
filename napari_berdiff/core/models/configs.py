"""Configurations of the two networks and the named presets.

A config is a frozen dataclass that fully describes a network, stored in a checkpoint as a
JSON-safe dict (:meth:`to_dict` / :meth:`from_dict`). Presets ``paper``, ``small``, ``small128``,
``small-f4`` and ``tiny``: docs/design-notes.md and ``berdiff configs``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, TypeVar

__all__ = [
    "AutoencoderConfig",
    "UNetConfig",
    "Preset",
    "PRESETS",
    "get_preset",
    "describe_presets",
]

_C = TypeVar("_C", bound="_ConfigBase")


class _ConfigBase:
    """JSON round-trip shared by the configs (tuples <-> lists, unknown keys rejected)."""

    _tuple_fields: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict of all fields (tuples become lists)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls: type[_C], d: Mapping[str, Any]) -> _C:
        """Inverse of :meth:`to_dict`; missing keys take their defaults, unknown keys are an error."""
        if not isinstance(d, Mapping):
            raise ValueError(f"{cls.__name__}.from_dict expects a mapping, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(
                f"unknown key(s) for {cls.__name__}: {unknown}; known keys: {sorted(names)}"
            )
        kwargs = {k: (tuple(v) if k in cls._tuple_fields else v) for k, v in d.items()}
        try:
            return cls(**kwargs)
        except TypeError as exc:  # missing required field
            raise ValueError(f"cannot build {cls.__name__} from {dict(d)!r}: {exc}") from None

    def _coerce_tuples(self) -> None:
        # frozen dataclass: lists given by a caller become tuples so the config stays hashable
        for name in self._tuple_fields:
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))


def _check_groups(what: str, channels: int, groups: int) -> None:
    if channels % groups:
        raise ValueError(f"{what}: {channels} channels are not divisible by {groups} GroupNorm groups")


@dataclass(frozen=True)
class AutoencoderConfig(_ConfigBase):
    """Binarizing autoencoder (docs/method.md §6): image (c, S, S) -> bits (latent_channels, S/f, S/f).

    ``attn_resolutions`` lists image-space resolutions at which the encoder/decoder levels get an
    attention block after each ResBlock (none in the paper; the mid blocks always have one when
    ``mid_attention``). ``disc_channels`` is the width of the PatchGAN discriminator used in training.
    """

    image_size: int = 256
    in_channels: int = 1
    nf: int = 32
    ch_mult: tuple[int, ...] = (1, 2, 2, 4)
    num_res_blocks: int = 2
    latent_channels: int = 128
    z_channels: int = 256
    attn_resolutions: tuple[int, ...] = ()
    mid_attention: bool = True
    norm_groups: int = 32
    norm_eps: float = 1e-6
    disc_channels: int = 64

    _tuple_fields = ("ch_mult", "attn_resolutions")

    def __post_init__(self) -> None:
        self._coerce_tuples()
        for name in ("image_size", "in_channels", "nf", "latent_channels", "z_channels",
                     "norm_groups", "disc_channels"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"AutoencoderConfig.{name} must be >= 1")
        if not self.ch_mult or min(self.ch_mult) < 1:
            raise ValueError("AutoencoderConfig.ch_mult must be a non-empty tuple of positive ints")
        if self.num_res_blocks < 1:
            raise ValueError("AutoencoderConfig.num_res_blocks must be >= 1")
        if self.image_size % self.downsample_factor:
            raise ValueError(
                f"image_size {self.image_size} is not divisible by the downsampling factor "
                f"{self.downsample_factor}"
            )
        for m in self.ch_mult:
            _check_groups("AutoencoderConfig", self.nf * m, self.norm_groups)
        _check_groups("AutoencoderConfig", self.nf, self.norm_groups)
        _check_groups("AutoencoderConfig (z_channels)", self.z_channels, self.norm_groups)

    @property
    def downsample_factor(self) -> int:
        """Spatial compression factor f = 2 ** (len(ch_mult) - 1)."""
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def latent_size(self) -> int:
        """Side of the binary latent: image_size // downsample_factor."""
        return self.image_size // self.downsample_factor


@dataclass(frozen=True)
class UNetConfig(_ConfigBase):
    """Diffusion U-Net on binary latents (docs/method.md §6, guided-diffusion style).

    ``attention_resolutions`` are latent-space resolutions (in latent pixels) where the encoder and
    decoder ResBlocks get an attention block; the middle block has one when ``mid_attention``.
    """

    latent_channels: int = 128
    latent_size: int = 32
    model_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (16,)
    mid_attention: bool = True
    num_heads: int = 1
    dropout: float = 0.0
    time_embed_dim: int = 512
    norm_groups: int = 32
    norm_eps: float = 1e-5

    _tuple_fields = ("channel_mult", "attention_resolutions")

    def __post_init__(self) -> None:
        self._coerce_tuples()
        for name in ("latent_channels", "latent_size", "model_channels", "num_heads",
                     "time_embed_dim", "norm_groups"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"UNetConfig.{name} must be >= 1")
        if not self.channel_mult or min(self.channel_mult) < 1:
            raise ValueError("UNetConfig.channel_mult must be a non-empty tuple of positive ints")
        if self.num_res_blocks < 1:
            raise ValueError("UNetConfig.num_res_blocks must be >= 1")
        if self.model_channels % 2:
            raise ValueError("UNetConfig.model_channels must be even (sinusoidal embedding)")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError("UNetConfig.dropout must be in [0, 1)")
        levels = len(self.channel_mult)
        if self.latent_size % 2 ** (levels - 1):
            raise ValueError(
                f"latent_size {self.latent_size} is not divisible by 2**{levels - 1} "
                f"({levels} levels)"
            )
        reached = set(self.resolutions)
        missing = [r for r in self.attention_resolutions if r not in reached]
        if missing:
            raise ValueError(
                f"attention_resolutions {missing} are never reached; level resolutions are "
                f"{list(self.resolutions)}"
            )
        for m in self.channel_mult:
            ch = self.model_channels * m
            _check_groups("UNetConfig", ch, self.norm_groups)
            if ch % self.num_heads:
                raise ValueError(f"UNetConfig: {ch} channels not divisible by {self.num_heads} heads")
        _check_groups("UNetConfig", self.model_channels, self.norm_groups)

    @property
    def resolutions(self) -> tuple[int, ...]:
        """Latent resolution of each level, top to bottom (e.g. 32, 16, 8, 4)."""
        return tuple(self.latent_size // 2**i for i in range(len(self.channel_mult)))


@dataclass(frozen=True)
class Preset:
    """A named pair of configs; ``autoencoder.in_channels`` is a placeholder set by get_preset."""

    description: str
    autoencoder: AutoencoderConfig
    unet: UNetConfig


_SMALL_AE = AutoencoderConfig(
    image_size=128, nf=16, ch_mult=(1, 2, 4, 4), num_res_blocks=1,
    latent_channels=64, z_channels=64, norm_groups=8, disc_channels=32,
)
_SMALL_UNET = UNetConfig(
    latent_channels=64, latent_size=16, model_channels=48, channel_mult=(1, 2, 2),
    num_res_blocks=1, attention_resolutions=(8,), time_embed_dim=192, norm_groups=16,
)

PRESETS: dict[str, Preset] = {
    "paper": Preset(
        description="docs/method.md §6 / paper: 256x256 image -> 128 bits x 32x32; AE ~4.1M, U-Net 36.0M params",
        autoencoder=AutoencoderConfig(),
        unet=UNetConfig(),
    ),
    "small": Preset(
        description="bundled CPU models: 128x128 image -> 64 bits x 16x16; AE ~0.9M, U-Net ~2.6M params",
        autoencoder=_SMALL_AE,
        unet=_SMALL_UNET,
    ),
    "small128": Preset(
        description="CPU models with the paper's bits per value: 128x128 image -> 128 bits x 16x16; "
        "AE ~0.9M, U-Net ~2.6M params",
        autoencoder=dataclasses.replace(_SMALL_AE, latent_channels=128, z_channels=128),
        unet=dataclasses.replace(_SMALL_UNET, latent_channels=128),
    ),
    "small-f4": Preset(
        description="CPU models with the paper's latent grid: 128x128 image -> 32 bits x 32x32 "
        "(downsampling 4); AE ~0.7M, U-Net ~2.8M params",
        autoencoder=dataclasses.replace(_SMALL_AE, ch_mult=(1, 2, 4), latent_channels=32),
        # 32 channels at 32x32 (the costly level), 128 at 8x8 with attention: 25% faster per
        # step on the CPU than the "small" U-Net's widths at this grid
        unet=dataclasses.replace(_SMALL_UNET, latent_channels=32, latent_size=32,
                                 model_channels=32, channel_mult=(1, 2, 4)),
    ),
    "tiny": Preset(
        description="tests: 32x32 image -> 8 bits x 8x8; AE ~55k, U-Net ~46k params",
        autoencoder=AutoencoderConfig(
            image_size=32, nf=8, ch_mult=(1, 2, 2), num_res_blocks=1,
            latent_channels=8, z_channels=16, norm_groups=4, disc_channels=8,
        ),
        unet=UNetConfig(
            latent_channels=8, latent_size=8, model_channels=8, channel_mult=(1, 2),
            num_res_blocks=1, attention_resolutions=(4,), time_embed_dim=32, norm_groups=4,
        ),
    ),
}


def get_preset(name: str, in_channels: int) -> tuple[AutoencoderConfig, UNetConfig]:
    """Configs of the preset ``name`` for images with ``in_channels`` channels."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; available presets: {sorted(PRESETS)}")
    if int(in_channels) < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    preset = PRESETS[name]
    ae = dataclasses.replace(preset.autoencoder, in_channels=int(in_channels))
    unet = preset.unet
    if ae.latent_size != unet.latent_size or ae.latent_channels != unet.latent_channels:
        raise ValueError(
            f"preset {name!r} is inconsistent: autoencoder latent "
            f"{ae.latent_channels}x{ae.latent_size}x{ae.latent_size} vs U-Net "
            f"{unet.latent_channels}x{unet.latent_size}x{unet.latent_size}"
        )
    return ae, unet


def describe_presets() -> dict[str, str]:
    """One-line description of each preset, by name."""
    return {name: p.description for name, p in PRESETS.items()}
