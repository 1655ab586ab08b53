"""Content mixing for autoencoder training (src_training/train/content_mix.py): where it pastes, what it
pastes, that it is off at 0 and recorded in the checkpoint when on."""

from __future__ import annotations

import pytest
import torch

from _train_data import Blobs
from napari_berdiff.core.models.checkpoint import load_checkpoint
from src_training.train.content_mix import blob_masks, content_mix, mixed_fraction
from src_training.train.train_autoencoder import train_autoencoder

pytestmark = pytest.mark.usefixtures("one_thread")


def _discs(b: int = 6, c: int = 2, s: int = 48) -> torch.Tensor:
    """Batch of images: a bright disc of radius 14 (a different level per image) on zero air."""
    yy, xx = torch.meshgrid(torch.arange(s), torch.arange(s), indexing="ij")
    disc = ((yy - s / 2) ** 2 + (xx - s / 2) ** 2 <= 14 ** 2).float()
    levels = torch.linspace(0.3, 0.9, b)
    return (levels[:, None, None, None] * disc[None, None]).repeat(1, c, 1, 1)


def test_off_and_trivial_cases_return_the_batch_itself():
    x = _discs()
    assert content_mix(x, 0.0) is x
    one = x[:1]
    assert content_mix(one, 1.0) is one
    with pytest.raises(ValueError, match=r"\(B, C, S, S\)"):
        content_mix(x[0], 1.0)


def test_every_image_is_changed_inside_its_organ_only_and_stays_in_range():
    x = _discs()
    g = torch.Generator().manual_seed(3)
    m = content_mix(x, 1.0, generator=g)
    assert m.shape == x.shape and m.dtype == x.dtype
    assert float(m.min()) >= 0.0 and float(m.max()) <= 1.0
    changed = (m - x).abs().amax(1) > 1e-6  # (B, S, S)
    assert bool(changed.flatten(1).any(1).all())  # prob 1: every image got a region
    # never further than the 4-pixel dilation of the foreground: the corners (air) are untouched
    organ = x.amax(1) > 0.05
    dilated = torch.nn.functional.max_pool2d(organ.float()[:, None], 9, 1, 4)[:, 0] > 0
    assert not bool((changed & ~dilated).any())
    assert 0.0 < mixed_fraction(x, m) < 0.6
    # the input is not modified in place
    assert torch.equal(x, _discs())


def test_seeded_runs_repeat_and_probability_is_respected():
    x = _discs(b=40, s=32)
    a = content_mix(x, 0.5, generator=torch.Generator().manual_seed(7))
    b = content_mix(x, 0.5, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    hit = ((a - x).abs().flatten(1).amax(1) > 1e-6).float().mean().item()
    assert 0.2 < hit < 0.8  # about half of the 40 images (a region can be fully clipped: rare)


def test_pasted_content_has_new_contrast_per_channel():
    # two channels that agree everywhere in the input: after mixing, somewhere they differ,
    # because gain and offset are drawn per channel (new combinations of contrast)
    x = _discs(b=8)
    m = content_mix(x, 1.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x[:, 0], x[:, 1])
    assert float((m[:, 0] - m[:, 1]).abs().max()) > 0.05


def test_blob_masks_are_soft_and_centred():
    centres = torch.tensor([[20.0, 20.0], [40.0, 10.0]])
    masks = blob_masks(2, 64, centres, generator=torch.Generator().manual_seed(1))
    assert masks.shape == (2, 1, 64, 64)
    assert float(masks.min()) >= 0 and float(masks.max()) <= 1
    assert masks[0, 0, 20, 20] > 0.5 and masks[1, 0, 40, 10] > 0.5
    assert masks[0, 0, 63, 63] < 0.01 and masks[1, 0, 0, 63] < 0.01


def test_training_with_content_mix_runs_and_is_recorded(tmp_path):
    kw = dict(preset="tiny", steps=10, batch_size=4, lr=1e-3, disc_weight=0, ckpt_every=10,
              log_every=5, sample_every=100, seed=0, device="cpu", resume=False, progress=False)
    path = train_autoencoder(Blobs(12), tmp_path / "mix", content_mix=0.5, **kw)
    assert load_checkpoint(path).meta["training"]["content_mix"] == 0.5
    with pytest.raises(ValueError, match="content_mix"):
        train_autoencoder(Blobs(4), tmp_path / "bad", content_mix=1.5, **kw)
