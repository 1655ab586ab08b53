"""The diffusion stage's code cache: the stored probabilities are the encoder's, per orientation,
and training from them is the same process as encoding every batch."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from _train_data import Blobs
from napari_berdiff.core.models.checkpoint import load_checkpoint
from src_training.train.code_cache import CodeCache, cache_bytes, should_cache
from src_training.train.train_autoencoder import train_autoencoder
from src_training.train.train_diffusion import train_diffusion

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ae_ckpt(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("ae")
    return train_autoencoder(Blobs(12), out, preset="tiny", steps=6, batch_size=4, lr=2e-3,
                             ckpt_every=6, sample_every=6, log_every=3, device="cpu",
                             resume=False, progress=False)


class Flippable(Blobs):
    """Blobs with the ``hflip`` switch of PreparedDataset."""

    def __init__(self, n):
        super().__init__(n, as_tuple=True)
        self.hflip = True

    def __getitem__(self, i):
        x, j = super().__getitem__(i)
        if self.hflip and torch.rand(()) < 0.5:
            x = torch.flip(x, dims=(-1,))
        return x, j


def test_cached_codes_are_the_encoder_probabilities_of_both_orientations(ae_ckpt):
    ae = load_checkpoint(ae_ckpt).build_autoencoder()
    ds = Flippable(10)
    cache = CodeCache(ds, ae.encode, batch_size=4)
    assert ds.hflip is True  # restored after encoding
    assert len(cache) == 10 and cache.codes.dtype == torch.float16
    assert cache.nbytes == cache_bytes(10, ae.latent_shape, hflip=True)
    with torch.no_grad():
        plain = ae.encode(ds.x)
        flipped = ae.encode(torch.flip(ds.x, dims=(-1,)))
    assert torch.allclose(cache.codes[:, 0].float(), plain, atol=5e-4)
    assert torch.allclose(cache.codes[:, 1].float(), flipped, atol=5e-4)
    # the encoder is not flip-equivariant: the flipped view is not just the flipped code
    assert not torch.allclose(flipped, torch.flip(plain, dims=(-1,)), atol=1e-3)
    torch.manual_seed(0)
    views = [0 if torch.equal(cache[3], cache.codes[3, 0].float()) else 1 for _ in range(200)]
    assert 60 < sum(views) < 140  # both orientations, about half each


def test_without_flips_one_view_and_no_randomness(ae_ckpt):
    ae = load_checkpoint(ae_ckpt).build_autoencoder()
    cache = CodeCache(Blobs(5), ae.encode)
    assert cache.codes.shape[1] == 1 and not cache.hflip
    state = torch.get_rng_state()
    _ = cache[2]
    assert torch.equal(state, torch.get_rng_state())


def test_should_cache_modes():
    assert should_cache("on", 10**12)[0] and not should_cache("off", 1)[0]
    assert should_cache("auto", 1024)[0]
    use, why = should_cache("auto", 10**15)
    assert not use and "skipped" in why
    with pytest.raises(ValueError, match="auto"):
        should_cache("sometimes", 1)


def test_training_from_the_cache_matches_encoding_every_batch(ae_ckpt, tmp_path):
    kw = dict(steps=4, batch_size=6, lr=3e-3, ema=0.9, ckpt_every=4, log_every=1,
              sample_every=100, seed=3, device="cpu", resume=False, progress=False)
    runs = {}
    for mode in ("off", "on"):
        out = tmp_path / mode
        train_diffusion(Blobs(12), ae_ckpt, out, cache_codes=mode, **kw)
        log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
        runs[mode] = [r["bce"] for r in log if "bce" in r]
        assert load_checkpoint(out / "model.pt").meta["training"].get("code_cache", False) == (
            mode == "on")
    assert len(runs["on"]) == len(runs["off"]) == 4
    # same RNG stream, same probabilities up to float16 rounding: the same training run
    np.testing.assert_allclose(runs["on"], runs["off"], atol=2e-3)
