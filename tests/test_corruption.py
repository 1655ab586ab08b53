"""Structured corruption for diffusion training (--corruption): healthy donors only, the target
is exactly the flips relative to the clean code, seeded, and a run resumes bit-exactly."""

from __future__ import annotations

import pytest
import torch

from _train_data import Blobs
from napari_berdiff.core.models.checkpoint import load_checkpoint, load_raw
from src_training.train.corruption import Corruption, corrupt_codes, corrupt_images, region_masks
from src_training.train.train_autoencoder import train_autoencoder
from src_training.train.train_diffusion import train_diffusion

pytestmark = pytest.mark.usefixtures("one_thread")


def _codes(b=6, c=3, s=16, seed=0):
    return torch.bernoulli(torch.full((b, c, s, s), 0.5), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("shape", ["blob", "box"])
def test_regions_cover_the_drawn_share_of_cells(shape):
    torch.manual_seed(0)
    cfg = Corruption(kind="patch", min_area=0.1, max_area=0.2, shape=shape)
    m = region_masks(200, 16, 16, cfg)
    area = m.float().mean(dim=(1, 2, 3))
    assert m.dtype == torch.bool and m.shape == (200, 1, 16, 16)
    tol = 1.5 / 256 if shape == "blob" else 0.15 * 0.2  # a box rounds its sides to whole cells
    assert float(area.min()) >= 0.1 - tol and float(area.max()) <= 0.2 + tol
    assert float(area.std()) > 0.01  # the share is drawn, not fixed
    if shape == "blob":  # smooth: most region cells have region neighbours (not scattered bits)
        inner = m[:, :, 1:-1, 1:-1] & m[:, :, :-2, 1:-1] & m[:, :, 2:, 1:-1]
        assert inner.sum() > 0.5 * m[:, :, 1:-1, 1:-1].sum()


def test_patch_bits_come_from_other_codes_of_the_batch_shifted():
    """Every corrupted code equals its clean code outside one region and, inside it, another
    training code of the batch rolled by at most max_shift cells: no invented bits."""
    z0 = _codes(b=6)
    torch.manual_seed(1)
    cfg = Corruption(kind="patch", prob=1.0, max_shift=3)
    src = corrupt_codes(z0, cfg)
    changed = 0
    for i in range(len(z0)):
        diff = (src[i] != z0[i]).any(0)
        if not diff.any():
            continue
        changed += 1
        found = False
        for j in range(len(z0)):
            if j == i:
                continue
            for dy in range(-3, 4):
                for dx in range(-3, 4):
                    d = torch.roll(z0[j], (dy, dx), dims=(-2, -1))
                    inside = (src[i] == d).all(0)  # cells that equal the donor everywhere
                    outside = (src[i] == z0[i]).all(0)
                    if bool((inside | outside).all()) and bool(inside[diff].all()):
                        found = True
        assert found, f"code {i}: the changed bits are not another code of the batch, shifted"
    assert changed >= 5


def test_prob_zero_and_iid_leave_the_code_alone_and_draw_nothing():
    z0 = _codes()
    for cfg in (Corruption(), Corruption(kind="patch", prob=0.0), Corruption(kind="image")):
        state = torch.get_rng_state()
        assert corrupt_codes(z0, cfg) is z0
        assert torch.equal(torch.get_rng_state(), state)  # the paper's run is unchanged


def test_blob_flips_only_inside_one_region_at_the_rate():
    z0 = _codes(b=64)
    torch.manual_seed(2)
    cfg = Corruption(kind="blob", prob=0.5, flip_rate=0.5, min_area=0.2, max_area=0.2)
    src = corrupt_codes(z0, cfg)
    hit = (src != z0).any(dim=(1, 2, 3))
    assert 16 <= int(hit.sum()) <= 48  # about half of the codes
    per_code = (src != z0).float().mean(dim=(1, 2, 3))[hit]
    assert float(per_code.mean()) == pytest.approx(0.2 * 0.5, abs=0.02)


def test_corruption_is_deterministic_under_a_seed():
    z0 = _codes()
    for kind in ("patch", "blob"):
        cfg = Corruption(kind=kind, prob=0.7)
        torch.manual_seed(5)
        a = corrupt_codes(z0, cfg)
        torch.manual_seed(5)
        b = corrupt_codes(z0, cfg)
        torch.manual_seed(6)
        c = corrupt_codes(z0, cfg)
        assert torch.equal(a, b) and not torch.equal(a, c)
    x = Blobs(6).x
    torch.manual_seed(5)
    a = corrupt_images(x, Corruption(kind="image", prob=1.0))
    torch.manual_seed(5)
    assert torch.equal(a, corrupt_images(x, Corruption(kind="image", prob=1.0)))
    assert not torch.equal(a, x)


@pytest.mark.parametrize("bad, msg", [
    (dict(kind="lesion"), "corruption must be one of iid, patch, blob, image"),
    (dict(kind="patch", prob=1.5), "probability must be in [0, 1]"),
    (dict(kind="patch", min_area=0.3, max_area=0.2), "0 < min <= max <= 1"),
    (dict(kind="patch", max_shift=-1), "shift must be >= 0"),
])
def test_bad_settings_are_refused(bad, msg):
    with pytest.raises(ValueError, match=msg.replace("[", r"\[").replace("]", r"\]")):
        Corruption(**bad)


@pytest.fixture(scope="module")
def ae_tiny(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("ae")
    return train_autoencoder(Blobs(20), out, preset="tiny", steps=12, batch_size=8, lr=2e-3,
                             ema=0.9, ckpt_every=12, sample_every=1000, log_every=4, device="cpu",
                             resume=False, progress=False)


KW = dict(batch_size=8, lr=1e-3, ema=0.9, log_every=2, sample_every=1000, seed=4, device="cpu",
          progress=False)


@pytest.mark.parametrize("kind", ["patch", "image"])
def test_training_target_is_exactly_the_flips_of_the_clean_code(ae_tiny, tmp_path, kind):
    """The task's pairs: z_t is noised from the corrupted code, the loss's target z_t XOR z0 is
    relative to the clean code z0 (the corrupted bits count as flips)."""
    seen = {}

    def grab(task):
        seen["task"] = task

    cor = Corruption(kind=kind, prob=1.0, min_area=0.3, max_area=0.3)
    train_diffusion(Blobs(20), ae_tiny, tmp_path / "d", steps=1, ckpt_every=1, resume=False,
                    t_max=1, corruption=cor, on_end=grab, **KW)
    task = seen["task"]
    x = torch.stack([Blobs(20).x[i] for i in range(8)])
    if task.codes_cached:
        x = task.encode(x).float()
    torch.manual_seed(11)
    z0, z_t, t = task.noisy_pair(x)
    assert set(torch.unique(z0).tolist()) <= {0.0, 1.0} and torch.all(t == 1)
    # at t = 1 the noise flips a bit with probability 5e-5: the target is the corruption itself
    target = (z_t != z0)
    assert 0 < float(target.float().mean()) < 0.4
    torch.manual_seed(11)
    if kind == "patch":
        z0b = torch.bernoulli(x.float())
        assert torch.equal(z0b, z0)
        src = corrupt_codes(z0b, cor)
    else:
        probs = task.encode(x).float()
        mixed = task.encode(corrupt_images(x, cor)).float()
        u = torch.rand_like(probs)
        assert torch.equal((u < probs).float(), z0)
        src = (u < mixed).float()
    assert float((target != (src != z0)).float().mean()) < 1e-3  # only the rare t = 1 flips
    assert ck_meta(tmp_path / "d")["training"]["corruption"]["kind"] == kind


def ck_meta(out):
    return load_checkpoint(out / "model.pt").meta


def test_corrupted_run_is_seeded_and_resumes_bit_exactly(ae_tiny, tmp_path):
    cor = Corruption(kind="patch", prob=0.8)
    full, again, part = tmp_path / "full", tmp_path / "again", tmp_path / "part"
    train_diffusion(Blobs(20), ae_tiny, full, steps=6, ckpt_every=6, resume=False, corruption=cor,
                    **KW)
    train_diffusion(Blobs(20), ae_tiny, again, steps=6, ckpt_every=6, resume=False, corruption=cor,
                    **KW)
    iid = tmp_path / "iid"
    train_diffusion(Blobs(20), ae_tiny, iid, steps=6, ckpt_every=6, resume=False, **KW)
    train_diffusion(Blobs(20), ae_tiny, part, steps=3, ckpt_every=3, resume=False, corruption=cor,
                    **KW)
    train_diffusion(Blobs(20), ae_tiny, part, steps=6, ckpt_every=3, resume=part / "last.pt",
                    corruption=cor, **KW)
    w = {d: load_checkpoint(d / "model.pt").unet_state for d in (full, again, part, iid)}
    assert all(torch.equal(w[full][k], w[again][k]) for k in w[full])  # seeded
    assert all(torch.equal(w[full][k], w[part][k]) for k in w[full])   # resumed exactly
    assert not all(torch.equal(w[full][k], w[iid][k]) for k in w[full])  # it did something
    assert load_raw(part / "last.pt")["training_state"]["step"] == 6
    meta = ck_meta(full)["training"]
    assert meta["corruption"] == cor.to_dict() and meta["corruption_description"].startswith("patch")
    assert ck_meta(iid)["training"]["corruption"]["kind"] == "iid"


def test_resuming_with_other_corruption_is_refused(ae_tiny, tmp_path):
    out = tmp_path / "r"
    train_diffusion(Blobs(20), ae_tiny, out, steps=2, ckpt_every=2, resume=False,
                    corruption=Corruption(kind="patch"), **KW)
    with pytest.raises(ValueError, match=r"trained with corruption \[patch.*this run asks for \[iid"):
        train_diffusion(Blobs(20), ae_tiny, out, steps=4, ckpt_every=2, **KW)
