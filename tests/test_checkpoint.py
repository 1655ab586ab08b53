"""One-file checkpoints: round trip, safe loading, clear errors, atomic writes."""

import os
import pickle

import pytest
import torch

from napari_berdiff.core.models.autoencoder import BinaryAutoencoder
from napari_berdiff.core.models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from napari_berdiff.core.models.configs import get_preset
from napari_berdiff.core.diffusion.schedule import BernoulliSchedule
from napari_berdiff.core.models.unet import BernoulliUNet


def tiny_models(c=2, seed=0):
    torch.manual_seed(seed)
    ae_cfg, unet_cfg = get_preset("tiny", c)
    return BinaryAutoencoder(ae_cfg), BernoulliUNet(unet_cfg)


def test_round_trip_rebuilds_identical_models(tmp_path):
    ae, unet = tiny_models()
    with torch.no_grad():  # make the zero-initialised output conv non-trivial
        for p in unet.parameters():
            p.add_(0.01 * torch.randn_like(p))
    path = save_checkpoint(tmp_path / "m.pt", autoencoder=ae, unet=unet, schedule=BernoulliSchedule(),
                           meta={"channel_names": ["flair", "t2"], "name": "test"})
    ck = load_checkpoint(path)
    assert ck.in_channels == 2 and ck.meta["channel_names"] == ["flair", "t2"]
    assert len(ck.sha256) == 64 and ck.short_hash == ck.sha256[:12]
    ae2, unet2 = ck.build_autoencoder(), ck.build_unet()
    for a, b in zip(list(ae.state_dict().values()) + list(unet.state_dict().values()),
                    list(ae2.state_dict().values()) + list(unet2.state_dict().values())):
        assert torch.equal(a, b)
    z = torch.randint(0, 2, (1, 8, 8, 8)).float()
    assert torch.equal(unet.eval()(z, 10), unet2(z, 10))
    assert ck.build_schedule() == BernoulliSchedule()


def test_autoencoder_only_checkpoint(tmp_path):
    ae, _ = tiny_models(c=1)
    ck = load_checkpoint(save_checkpoint(tmp_path / "ae.pt", autoencoder=ae))
    assert ck.unet_config is None
    ck.build_autoencoder()
    with pytest.raises(CheckpointError, match="no diffusion U-Net"):
        ck.build_unet()


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_pickle_that_would_run_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "napari-berdiff", "version": 1, "meta": Evil()}, path)
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_checkpoint(path)
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps({"a": Evil()}))
    with pytest.raises(CheckpointError):
        load_checkpoint(plain)


def test_foreign_corrupt_and_missing_files(tmp_path):
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, other)
    with pytest.raises(CheckpointError, match="not a napari-berdiff checkpoint"):
        load_checkpoint(other)
    ae, unet = tiny_models()
    good = save_checkpoint(tmp_path / "good.pt", autoencoder=ae, unet=unet)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(cut)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_weights_not_matching_config_give_a_clear_error(tmp_path):
    ae, unet = tiny_models()
    path = save_checkpoint(tmp_path / "m.pt", autoencoder=ae, unet=unet)
    obj = torch.load(path, weights_only=True)
    obj["unet"]["config"]["model_channels"] = 16
    torch.save(obj, path)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_checkpoint(path).build_unet()


def test_channel_mismatch_error(tmp_path):
    ae, unet = tiny_models(c=4)
    ck = load_checkpoint(save_checkpoint(tmp_path / "m.pt", autoencoder=ae, unet=unet,
                                         meta={"channel_names": ["flair", "t1", "t1ce", "t2"]}))
    ck.check_channels(4)
    with pytest.raises(CheckpointError, match="1 channel.*expects 4 .flair, t1, t1ce, t2"):
        ck.check_channels(1)


def test_atomic_save_keeps_the_previous_file_when_a_write_fails(tmp_path, monkeypatch):
    ae, unet = tiny_models()
    path = save_checkpoint(tmp_path / "m.pt", autoencoder=ae, unet=unet, meta={"v": 1})
    before = path.read_bytes()

    def broken_save(obj, fh, *a, **k):
        fh.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, autoencoder=ae, unet=unet, meta={"v": 2})
    assert path.read_bytes() == before
    assert load_checkpoint(path).meta == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no temp file left behind


def test_no_overwrite_when_asked(tmp_path):
    ae, _ = tiny_models()
    path = save_checkpoint(tmp_path / "m.pt", autoencoder=ae)
    with pytest.raises(FileExistsError):
        save_checkpoint(path, autoencoder=ae, overwrite=False)


def test_atomic_writes_get_ordinary_permissions(tmp_path):
    """Temporary files are private (0600); the published result follows the umask like open()."""
    import stat

    from napari_berdiff.core.io.atomic import _UMASK, atomic_dir, atomic_write_text
    from napari_berdiff.core.io.atomic import AtomicFiles

    atomic_write_text(tmp_path / "a.json", "{}")
    with atomic_dir(tmp_path / "folder") as d:
        (d / "x.txt").write_text("x")
    with AtomicFiles() as files:
        files.temp(tmp_path / "b.csv").write_text("1")
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(tmp_path / "a.json") == 0o666 & ~_UMASK
    assert mode(tmp_path / "b.csv") == 0o666 & ~_UMASK
    assert mode(tmp_path / "folder") == 0o777 & ~_UMASK
