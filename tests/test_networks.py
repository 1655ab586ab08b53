"""Tests of the two networks, their configs and presets (docs/method.md §6)."""

from __future__ import annotations

import json

import pytest
import torch

from napari_berdiff.core.models.autoencoder import BinaryAutoencoder
from napari_berdiff.core.models.configs import (
    PRESETS,
    AutoencoderConfig,
    UNetConfig,
    describe_presets,
    get_preset,
)
from napari_berdiff.core.models.nn_utils import count_parameters
from napari_berdiff.core.models.unet import BernoulliUNet, timestep_embedding


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    n = torch.get_num_threads()
    torch.set_num_threads(min(n, 2))
    yield
    torch.set_num_threads(n)


def _tiny(in_channels: int = 1) -> tuple[AutoencoderConfig, UNetConfig]:
    return get_preset("tiny", in_channels)


def _randomize_(module: torch.nn.Module) -> None:
    """Overwrite every parameter (zero-inits included) with small random values."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.1)


def _bits(cfg: UNetConfig, batch: int = 2) -> torch.Tensor:
    shape = (batch, cfg.latent_channels, cfg.latent_size, cfg.latent_size)
    return torch.bernoulli(torch.full(shape, 0.5))


# ---------------------------------------------------------------- parameter counts


# Exact counts per preset: (autoencoder c=1, autoencoder c=4, U-Net). The paper's are published
# (docs/method.md §6); all are listed by `berdiff configs` and in docs/training.md.
PARAMETERS = {
    "paper": (4_101_985, 4_103_716, 36_034_432),
    "small": (881_137, 882_004, 2_552_368),
    "small128": (979_697, 980_564, 2_607_728),
    "small-f4": (654_929, 655_796, 2_834_880),
    "tiny": (54_657, 55_092, 45_984),
}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_parameter_counts(name: str) -> None:
    (ae1, unet), (ae4, _) = get_preset(name, 1), get_preset(name, 4)
    counts = (count_parameters(BinaryAutoencoder(ae1)), count_parameters(BinaryAutoencoder(ae4)),
              count_parameters(BernoulliUNet(unet)))
    assert counts == PARAMETERS[name]


# ---------------------------------------------------------------- presets and configs


def test_presets_are_consistent() -> None:
    descriptions = describe_presets()
    assert set(descriptions) == set(PRESETS) >= {"paper", "small", "tiny"}
    assert all(isinstance(d, str) and d and "\n" not in d for d in descriptions.values())
    expected = {"paper": (256, 8, 128, 32), "small": (128, 8, 64, 16),
                "small128": (128, 8, 128, 16), "small-f4": (128, 4, 32, 32),
                "tiny": (32, 4, 8, 8)}
    for name, (size, factor, bits, latent) in expected.items():
        ae, unet = get_preset(name, 3)
        assert ae.in_channels == 3
        assert (ae.image_size, ae.downsample_factor, ae.latent_channels, ae.latent_size) == (
            size, factor, bits, latent)
        assert (unet.latent_channels, unet.latent_size) == (bits, latent)
    ae, unet = get_preset("paper", 1)
    assert (ae.norm_groups, ae.norm_eps, unet.norm_groups, unet.norm_eps) == (32, 1e-6, 32, 1e-5)
    assert (unet.num_heads, unet.dropout, unet.time_embed_dim) == (1, 0.0, 512)


def test_unknown_preset_lists_names() -> None:
    with pytest.raises(ValueError, match="paper") as info:
        get_preset("huge", 1)
    assert "huge" in str(info.value) and "tiny" in str(info.value)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_config_round_trip(name: str) -> None:
    for cfg in get_preset(name, 4):
        d = json.loads(json.dumps(cfg.to_dict()))
        assert all(not isinstance(v, tuple) for v in cfg.to_dict().values())
        back = type(cfg).from_dict(d)
        assert back == cfg and hash(back) == hash(cfg)


def test_from_dict_rejects_unknown_and_bad_values() -> None:
    d = UNetConfig().to_dict()
    d["num_head"] = 2
    with pytest.raises(ValueError, match="num_head"):
        UNetConfig.from_dict(d)
    with pytest.raises(ValueError, match="unknown key"):
        AutoencoderConfig.from_dict({"bits": 3})
    with pytest.raises(ValueError):
        AutoencoderConfig(image_size=100)  # not divisible by 8
    with pytest.raises(ValueError):
        UNetConfig(attention_resolutions=(3,))  # never reached
    assert AutoencoderConfig(ch_mult=[1, 2, 2, 4]).ch_mult == (1, 2, 2, 4)  # lists coerced


# ---------------------------------------------------------------- shapes


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_shapes(name: str) -> None:
    in_channels = 1 if name == "paper" else 4  # the paper c=4 model is only counted
    ae_cfg, unet_cfg = get_preset(name, in_channels)
    ae, unet = BinaryAutoencoder(ae_cfg).eval(), BernoulliUNet(unet_cfg).eval()
    s, f, c = ae_cfg.image_size, ae_cfg.downsample_factor, ae_cfg.latent_channels
    x = torch.rand(1, in_channels, s, s)
    with torch.inference_mode():
        probs = ae.encode(x)
        assert probs.shape == (1, c, s // f, s // f)
        assert ae.latent_shape == (c, s // f, s // f)
        assert bool(((probs > 0) & (probs < 1)).all())
        bits = ae.sample_bits(probs)
        rec = ae.decode(bits)
        assert rec.shape == x.shape
        logits = unet(bits, 500)
    assert logits.shape == bits.shape
    # the zero-initialised output conv makes an untrained model say 0.5 everywhere
    assert bool((torch.sigmoid(logits) == 0.5).all())


def test_untrained_unet_flip_prob_is_half() -> None:
    _, cfg = _tiny()
    z = _bits(cfg, 3)
    p = BernoulliUNet(cfg).flip_prob(z, torch.tensor([1, 500, 1000]))
    assert p.shape == z.shape and bool((p == 0.5).all())


# ---------------------------------------------------------------- time-step convention


def test_timestep_embedding_values() -> None:
    emb = timestep_embedding(torch.tensor([0, 7]), 16)
    assert emb.shape == (2, 16) and emb.dtype == torch.float32
    assert torch.equal(emb[0], torch.cat([torch.ones(8), torch.zeros(8)]))
    assert torch.allclose(emb[1, 0], torch.cos(torch.tensor(7.0)))
    assert torch.allclose(emb[1, 8], torch.sin(torch.tensor(7.0)))


def test_unet_feeds_t_minus_one() -> None:
    _, cfg = _tiny()
    unet = BernoulliUNet(cfg)
    _randomize_(unet)
    t = torch.tensor([1, 1000])
    expected = unet.time_embed(timestep_embedding(t - 1, cfg.model_channels))
    assert torch.allclose(unet.embed_time(t, 2), expected)
    # t = 1 maps to embedding index 0: cos terms 1, sin terms 0
    zero = timestep_embedding(torch.tensor([0]), cfg.model_channels)
    assert torch.allclose(unet.embed_time(1, 1), unet.time_embed(zero))

    z = _bits(cfg, 2)
    with torch.no_grad():
        out_1, out_2 = unet(z, 1), unet(z, 2)
        assert not torch.allclose(out_1, out_2)
        assert torch.equal(unet(z, 7), unet(z, torch.tensor([7, 7])))
        assert torch.equal(unet(z, 7), unet(z, torch.tensor(7)))
    with pytest.raises(TypeError):
        unet(z, torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError):
        unet(z, torch.tensor([1, 2, 3]))


def test_unet_channels_last_and_autocast() -> None:
    _, cfg = _tiny()
    unet = BernoulliUNet(cfg).eval()
    _randomize_(unet)
    z = _bits(cfg, 2)
    t = torch.tensor([3, 900])
    with torch.no_grad():
        ref = unet(z, t)
        out_cl = unet.to(memory_format=torch.channels_last)(
            z.to(memory_format=torch.channels_last), t)
        assert torch.allclose(out_cl, ref, atol=1e-5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out_bf16 = unet(z, t)
        assert torch.allclose(out_bf16.float(), ref, atol=0.1 * ref.abs().max().item() + 1e-3)
        half = BernoulliUNet(cfg).to(torch.bfloat16)
        assert half(z.to(torch.bfloat16), t).dtype == torch.bfloat16


# ---------------------------------------------------------------- autoencoder behaviour


def test_sample_bits_deterministic_with_generator() -> None:
    probs = torch.rand(2, 8, 8, 8)
    draws = []
    for _ in range(2):
        g = torch.Generator().manual_seed(123)
        draws.append(BinaryAutoencoder.sample_bits(probs, generator=g))
    assert torch.equal(draws[0], draws[1])
    assert set(draws[0].unique().tolist()) <= {0.0, 1.0}
    other = BinaryAutoencoder.sample_bits(probs, generator=torch.Generator().manual_seed(7))
    assert not torch.equal(draws[0], other)
    extreme = torch.tensor([0.0, 1.0]).repeat(50)
    assert torch.equal(BinaryAutoencoder.sample_bits(extreme), extreme)


def test_straight_through_gradient_reaches_encoder() -> None:
    ae_cfg, _ = _tiny(2)
    ae = BinaryAutoencoder(ae_cfg)
    x = torch.rand(2, 2, ae_cfg.image_size, ae_cfg.image_size)
    probs = ae.encode(x)
    bits = ae.sample_bits(probs, generator=torch.Generator().manual_seed(0), straight_through=True)
    assert set(bits.detach().unique().tolist()) <= {0.0, 1.0}
    bits.sum().backward()
    grad = ae.encoder.blocks[0].weight.grad
    assert grad is not None and grad.abs().sum() > 0
    # without the straight-through form the bits carry no gradient
    assert not ae.sample_bits(ae.encode(x)).requires_grad


def test_decode_accepts_continuous_codes() -> None:
    ae_cfg, _ = _tiny(1)
    ae = BinaryAutoencoder(ae_cfg).eval()
    c, h, _ = ae.latent_shape
    with torch.no_grad():
        soft = ae.decode(torch.rand(2, c, h, h))
        hard = ae.decode(torch.randint(0, 2, (2, c, h, h)))  # integer bits are cast
    assert soft.shape == hard.shape == (2, 1, ae_cfg.image_size, ae_cfg.image_size)
    assert soft.dtype == torch.float32 and bool(torch.isfinite(soft).all())


def test_forward_returns_reconstruction_probs_bits() -> None:
    ae_cfg, _ = _tiny(3)
    ae = BinaryAutoencoder(ae_cfg)
    x = torch.rand(2, 3, ae_cfg.image_size, ae_cfg.image_size)
    rec1, probs, bits = ae(x, generator=torch.Generator().manual_seed(5))
    rec2, _, bits2 = ae(x, generator=torch.Generator().manual_seed(5))
    assert rec1.shape == x.shape and probs.shape == bits.shape
    assert torch.equal(bits, bits2) and torch.equal(rec1, rec2)
    assert ae.last_layer_weight is ae.decoder.blocks[-1].weight
    assert ae.last_layer_weight.shape[0] == 3


# ---------------------------------------------------------------- no unused parameters


def test_every_autoencoder_parameter_gets_a_gradient() -> None:
    ae_cfg, _ = _tiny(2)
    ae = BinaryAutoencoder(ae_cfg)
    x = torch.rand(2, 2, ae_cfg.image_size, ae_cfg.image_size)
    rec, probs, _ = ae(x)
    ((rec - x) ** 2).mean().backward()
    missing = [n for n, p in ae.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing


def test_every_unet_parameter_gets_a_gradient() -> None:
    _, cfg = _tiny()
    unet = BernoulliUNet(cfg)
    _randomize_(unet)  # zero-initialised convs would block the gradient to earlier layers
    z = _bits(cfg, 2)
    unet(z, torch.tensor([4, 600])).pow(2).mean().backward()
    missing = [n for n, p in unet.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing


def test_models_carry_their_config_and_rebuild_from_it() -> None:
    ae_cfg, unet_cfg = _tiny(2)
    ae, unet = BinaryAutoencoder(ae_cfg), BernoulliUNet(unet_cfg)
    assert ae.config is ae_cfg and unet.config is unet_cfg
    for model in (ae, unet):
        clone = type(model)(type(model.config).from_dict(model.config.to_dict()))
        clone.load_state_dict(model.state_dict(), strict=True)
        assert count_parameters(clone) == count_parameters(model)
