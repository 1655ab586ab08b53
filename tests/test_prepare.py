"""Tests of src_training.prepare / prepared_format / datasets on small fake BraTS and OCT trees."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from napari_berdiff.core.io.files import DataError
from napari_berdiff.core.io.readers import BRATS_MODALITIES
from src_training.train.datasets import PreparedDataset, load_eval_split
from src_training.prepare.cli import main
from src_training.prepare.prepare import prepare_brats, prepare_folder, prepare_oct
from src_training.prepare.common import assign_split

Z_KEEP = 6  # axial slices left after dropping the default 80 bottom and 26 top slices
TUMOUR = (82, 83, 84)  # absolute slice indices with a tumour blob


def write_case(root: Path, cid: str, shape=(40, 36, 80 + Z_KEEP + 26), seed=0, ext=".nii.gz"):
    folder = root / cid
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    x, y, z = shape
    xx, yy = np.mgrid[:x, :y]
    brain = ((xx - x / 2) / (0.4 * x)) ** 2 + ((yy - y / 2) / (0.4 * y)) ** 2 < 1
    seg = np.zeros(shape, np.uint8)
    cx, cy = x // 2, y // 2
    for s in TUMOUR:
        seg[cx - 3:cx + 3, cy - 3:cy + 3, s] = 2
        seg[cx - 1:cx + 1, cy - 1:cy + 1, s] = 4
    for c, mod in enumerate(BRATS_MODALITIES):
        vol = np.zeros(shape, np.int16)
        vol[brain] = 200 * (c + 1) + rng.integers(0, 100, (int(brain.sum()), z))
        vol[seg > 0] += 400
        nib.save(nib.Nifti1Image(vol, np.eye(4)), str(folder / f"{cid}_{mod}{ext}"))
    nib.save(nib.Nifti1Image(seg, np.eye(4)), str(folder / f"{cid}_seg{ext}"))
    return folder


@pytest.fixture(scope="module")
def brats_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("brats") / "MICCAI_BraTS2020_TrainingData"
    for i in range(1, 7):
        write_case(root, f"BraTS20_Training_{i:03d}", seed=i)
    (root / "name_mapping.csv").write_text("not a case\n")
    return root


@pytest.fixture(scope="module")
def brats_prepared(brats_tree, tmp_path_factory):
    out = tmp_path_factory.mktemp("prep") / "brats48"
    meta = prepare_brats(brats_tree, out, image_size=48, seed=0, show_progress=False)
    return out, meta


def leftovers(out: Path) -> list[Path]:
    return list(out.parent.glob(out.name + ".tmp-*")) + list(out.parent.glob(out.name + ".old-*"))


def test_brats_slices_split_and_counts(brats_prepared):
    out, meta = brats_prepared
    split = json.loads((out / "split.json").read_text())
    ids = [split[s] for s in ("train", "val", "test")]
    assert sorted(sum(ids, [])) == [f"BraTS20_Training_{i:03d}" for i in range(1, 7)]
    assert all(not set(a) & set(b) for a in ids for b in ids if a is not b)
    assert [len(x) for x in ids] == [4, 1, 1] and split["seed"] == 0
    assert split["params"]["drop_bottom"] == 80 and split["params"]["drop_top"] == 26

    train = np.load(out / "train_healthy.npy")
    healthy_per_case = Z_KEEP - len(TUMOUR)
    assert train.shape == (4 * healthy_per_case, 4, 48, 48) and train.dtype == np.uint8
    idx = np.load(out / "train_healthy_index.npz")
    assert set(idx["case_id"]) == set(split["train"])
    assert set(idx["slice_index"]) == set(range(80, 80 + Z_KEEP)) - set(TUMOUR)
    for s in ("val", "test"):
        ev = load_eval_split(out, s)
        assert ev.images.shape == (Z_KEEP, 4, 48, 48) and ev.images.dtype == np.float32
        assert list(ev.slice_index) == list(range(80, 80 + Z_KEEP))
        assert set(ev.case_id) == set(split[s])
        assert ev.labels.dtype == np.uint8 and set(np.unique(ev.labels)) == {0, 1}
        assert set(np.unique(ev.raw_labels)) == {0, 2, 4}
        sick = np.isin(ev.slice_index, TUMOUR)
        assert np.array_equal(~ev.healthy, sick)
        assert np.array_equal(ev.labels.reshape(Z_KEEP, -1).max(1) > 0, sick)
    assert meta["channels"] == ["flair", "t1", "t1ce", "t2"]
    c = meta["counts"]
    assert c["train"]["healthy"] == train.shape[0] and c["train"]["diseased"] == 0
    assert c["train"]["diseased_left_out"] == 4 * len(TUMOUR) and c["train"]["cases"] == 4
    assert c["test"] == {"count": 6, "healthy": 3, "diseased": 3, "cases": 1}
    assert json.loads((out / "meta.json").read_text())["counts"] == c
    assert not leftovers(out) and not list(out.glob("*.part"))


def test_brats_padding_and_normalisation(brats_prepared):
    out, _ = brats_prepared
    x = np.load(out / "train_healthy.npy").astype(np.float32) / 255
    assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() == 1.0
    # 40x36 in plane -> zero-padded, centred, to 48x48: rows 4 + 4, columns 6 + 6
    assert np.all(x[..., :4, :] == 0) and np.all(x[..., -4:, :] == 0)
    assert np.all(x[..., :, :6] == 0) and np.all(x[..., :, -6:] == 0)
    assert np.all(x[..., 24, 24] > 0.0)  # brain centre is foreground in every channel
    assert x[..., 4, 6].max() == 0.0  # corners (outside the brain) stay background


def test_brats_default_geometry_240_to_256(tmp_path):
    src = tmp_path / "src"
    write_case(src, "BraTS20_Training_010", shape=(240, 240, 80 + 2 + 26))
    out = tmp_path / "out"
    meta = prepare_brats(src, out, split=(1.0, 0.0, 0.0), show_progress=False)
    train = np.load(out / "train_healthy.npy", mmap_mode="r")
    assert train.shape == (2, 4, 256, 256)
    assert np.all(train[:, :, :8] == 0) and np.all(train[:, :, 248:] == 0)
    assert np.all(train[:, :, :, :8] == 0) and np.all(train[:, :, :, 248:] == 0)
    assert train[:, :, 8:248, 8:248].max() == 255
    assert meta["geometry"]["transform"]["steps"][0]["offsets"] == [[8, 8], [8, 8]]
    assert np.load(out / "test_images.npy").shape == (0, 4, 256, 256)
    assert len(load_eval_split(out, "val")) == 0


def test_brats_smaller_image_size_resizes(brats_tree, tmp_path):
    out = tmp_path / "b32"
    meta = prepare_brats(brats_tree, out, image_size=32, show_progress=False)
    assert [s["kind"] for s in meta["geometry"]["transform"]["steps"]] == ["padcrop", "resize"]
    ev = load_eval_split(out, "test")
    assert ev.images.shape[1:] == (4, 32, 32) and ev.labels.shape[1:] == (32, 32)
    assert 0 <= ev.images.min() and ev.images.max() <= 1 and ev.labels.max() == 1


def test_split_is_deterministic_by_seed(brats_prepared, brats_tree, tmp_path):
    out, _ = brats_prepared
    first = json.loads((out / "split.json").read_text())
    ids = [f"BraTS20_Training_{i:03d}" for i in range(1, 7)]
    again = assign_split(ids, (0.7, 0.1, 0.2), 0)
    assert all(again[s] == first[s] for s in ("train", "val", "test"))
    assert assign_split(ids[::-1], (0.7, 0.1, 0.2), 0) == again
    others = [assign_split(ids, (0.7, 0.1, 0.2), s) for s in range(1, 6)]
    assert any(o != again for o in others)
    assert [len(v) for v in assign_split(ids[:3], (0.7, 0.1, 0.2), 0).values()] == [1, 1, 1]
    with pytest.raises(ValueError):
        assign_split(ids, (0.5, 0.1, 0.1), 0)


def test_brats_bad_inputs_abort_atomically(brats_tree, tmp_path):
    src = tmp_path / "src"
    good = write_case(src, "BraTS20_Training_001")
    bad = write_case(src, "BraTS20_Training_002")
    f = bad / "BraTS20_Training_002_t1ce.nii.gz"
    raw = f.read_bytes()
    f.write_bytes(raw[: len(raw) // 2])
    out = tmp_path / "out"
    with pytest.raises(DataError, match="BraTS20_Training_002_t1ce.nii.gz"):
        prepare_brats(src, out, image_size=48, show_progress=False)
    assert not out.exists() and not leftovers(out)
    with pytest.warns(UserWarning, match="BraTS20_Training_002"):
        meta = prepare_brats(src, out, image_size=48, skip_bad=True, show_progress=False)
    assert [d["case"] for d in meta["skipped"]] == ["BraTS20_Training_002"]
    assert "t1ce" in meta["skipped"][0]["file"]
    assert "BraTS20_Training_002" not in sum((json.loads((out / "split.json").read_text())[s]
                                              for s in ("train", "val", "test")), [])
    (bad / "BraTS20_Training_002_t1ce.nii.gz").unlink()
    out2 = tmp_path / "out2"
    with pytest.raises(DataError, match="BraTS20_Training_002_t1ce.nii.gz"):
        prepare_brats(src, out2, image_size=48, show_progress=False)
    assert not out2.exists() and not leftovers(out2)
    assert good.exists()


def test_brats_nan_policy(tmp_path):
    src = tmp_path / "src"
    folder = write_case(src, "BraTS20_Training_003")
    p = folder / "BraTS20_Training_003_flair.nii.gz"
    vol = np.asanyarray(nib.load(str(p)).dataobj).astype(np.float32)
    vol[20, 18, 81] = np.nan
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(p))
    with pytest.raises(DataError, match="BraTS20_Training_003_flair.nii.gz") as e:
        prepare_brats(src, tmp_path / "o1", image_size=48, show_progress=False)
    assert "1 non-finite" in str(e.value)
    meta = prepare_brats(src, tmp_path / "o2", image_size=48, nan_policy="zero",
                         show_progress=False)
    assert meta["counts"]["train"]["cases"] + meta["counts"]["test"]["cases"] == 1


def test_no_overwrite_without_flag(brats_tree, tmp_path):
    src = tmp_path / "src"
    write_case(src, "BraTS20_Training_004")
    out = tmp_path / "out"
    prepare_brats(src, out, image_size=48, show_progress=False)
    stamp = (out / "meta.json").read_text()
    with pytest.raises(FileExistsError, match="overwrite"):
        prepare_brats(src, out, image_size=48, show_progress=False)
    assert (out / "meta.json").read_text() == stamp
    meta = prepare_brats(src, out, image_size=40, overwrite=True, show_progress=False)
    assert meta["image_size"] == 40 and np.load(out / "train_healthy.npy").shape[-1] == 40
    assert not leftovers(out)
    assert main(["brats", str(src), str(out), "--image-size", "48", "--quiet"]) == 2


def test_prepared_dataset(brats_prepared):
    out, _ = brats_prepared
    ds = PreparedDataset(out)
    assert len(ds) == 4 * (Z_KEEP - len(TUMOUR)) and ds.channels == 4 and ds.image_size == 48
    x = ds[0]
    assert isinstance(x, torch.Tensor) and x.dtype == torch.float32 and x.shape == (4, 48, 48)
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    stored = np.load(out / "train_healthy.npy")[0].astype(np.float32) / 255
    np.testing.assert_allclose(x.numpy(), stored, atol=1e-6)
    torch.manual_seed(0)
    flipped = PreparedDataset(out, hflip=True)
    seen = {bool(torch.equal(flipped[0], torch.flip(x, (-1,)))) for _ in range(20)}
    assert seen == {True, False}
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=5)))
    assert batch.shape == (5, 4, 48, 48)
    assert len(PreparedDataset(out, "test")) == Z_KEEP - len(TUMOUR)
    assert ds.info(0)[1] in range(80, 80 + Z_KEEP)


# ----------------------------------------------------------------------------- OCT and folders


def write_oct(folder: Path, name: str, shape=(496, 512), value=0.5, mask=False, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    img = np.clip(rng.normal(value, 0.1, shape), 0, 1)
    Image.fromarray((img * 255).astype(np.uint8)).save(folder / f"{name}.jpeg", quality=90)
    if mask:
        m = np.zeros(shape, np.uint8)
        m[200:260, 100:200] = 255
        mdir = folder.parent / f"{folder.name}_masks"
        mdir.mkdir(exist_ok=True)
        Image.fromarray(m).save(mdir / f"{name}.png")


@pytest.fixture(scope="module")
def oct_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("oct") / "OCT2017"
    for p in range(5):
        for n in (1, 2):
            write_oct(root / "NORMAL", f"NORMAL-{1000 + p}-{n}", shape=(496, 512 if p else 768))
    for p in range(3):
        write_oct(root / "DRUSEN", f"DRUSEN-{2000 + p}-1", value=0.6, mask=True)
    for p in range(2):
        write_oct(root / "CNV", f"CNV-{3000 + p}-1", value=0.7)
    return root


def test_oct_flat_layout(oct_tree, tmp_path):
    out = tmp_path / "oct"
    meta = prepare_oct(oct_tree, out, val_fraction=0.2, show_progress=False)
    train = np.load(out / "train_healthy.npy")
    tidx = np.load(out / "train_healthy_index.npz")
    assert set(tidx["class_name"]) == {"NORMAL"} and train.shape == (8, 1, 256, 256)
    assert set(tidx["case_id"]) <= {str(1000 + p) for p in range(5)}
    val, test = load_eval_split(out, "val"), load_eval_split(out, "test")
    assert set(val.class_name) == {"NORMAL", "DRUSEN", "CNV"}
    assert not set(val.case_id[val.healthy]) & set(tidx["case_id"])  # split by patient
    assert set(test.class_name) == {"DRUSEN", "CNV"} and not test.healthy.any()
    assert len(val) + len(test) == 7 and len(test) == 3
    drusen = test.class_name == "DRUSEN"
    assert np.all(test.has_mask == drusen) and test.labels[drusen].max() == 1
    assert test.labels[~drusen].max() == 0 and test.raw_labels is None
    m = test.labels[drusen][0]  # rows 200:260 of 496 -> about 103:134 of 256
    assert m[110:130, 60:90].all() and not m[:95].any()
    assert test.images.shape[1:] == (1, 256, 256)
    assert 0 <= test.images.min() <= test.images.max() <= 1
    assert meta["counts"]["train"]["classes"] == {"NORMAL": 8} and meta["channels"] == ["oct"]
    assert not leftovers(out)

    out2 = tmp_path / "oct_aspect"
    prepare_oct(oct_tree, out2, keep_aspect=True, image_size=128, val_fraction=0.0,
                max_per_class=3, show_progress=False)
    x = PreparedDataset(out2)
    assert len(x) == 3 and x[0].shape == (1, 128, 128)
    imgs = np.load(out2 / "train_healthy.npy")
    src = np.load(out2 / "train_healthy_index.npz")["source"]
    wide = np.array(["1000" in s for s in src])  # 496x768 -> 83x128, padded rows
    assert np.all(imgs[~wide][:, :, :2] == 0) and np.all(imgs[~wide][:, :, 2:126, 5:-5] > 0)
    assert np.all(imgs[wide][:, :, :20] == 0) and np.all(imgs[wide][:, :, 30:90] > 0)


def test_oct_kermany_layout(tmp_path):
    root = tmp_path / "kermany"
    for p in range(4):
        write_oct(root / "train" / "NORMAL", f"NORMAL-{10 + p}-1", shape=(64, 64))
        write_oct(root / "train" / "DME", f"DME-{20 + p}-1", shape=(64, 64))
    for cls in ("NORMAL", "DME"):
        write_oct(root / "test" / cls, f"{cls}-99-1", shape=(64, 64))
    meta = prepare_oct(root, tmp_path / "o", image_size=32, val_fraction=0.25,
                       show_progress=False)
    assert meta["counts"]["train"]["count"] == 3 and meta["counts"]["val"]["count"] == 2
    assert meta["counts"]["train"]["diseased_unused"] == 3
    test = load_eval_split(tmp_path / "o", "test")
    assert sorted(test.class_name) == ["DME", "NORMAL"] and test.healthy.sum() == 1
    with pytest.raises(DataError, match="NORMAL"):
        prepare_oct(root / "test" / "DME", tmp_path / "none", show_progress=False)


def test_prepare_folder_images_and_nifti(tmp_path):
    src = tmp_path / "mixed"
    write_oct(src / "pngs", "a", shape=(50, 70))
    write_oct(src / "pngs", "b", shape=(30, 30))
    vol = np.zeros((20, 24, 5), np.float32)
    vol[4:16, 4:20] = np.arange(1, 6)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(src / "vol.nii.gz"))
    (src / "notes.txt").write_text("ignored")
    meta = prepare_folder(src, tmp_path / "f", image_size=32, show_progress=False)
    ds = PreparedDataset(tmp_path / "f")
    assert len(ds) == 2 + 5 and ds[0].shape == (1, 32, 32)
    assert meta["counts"]["train"]["healthy"] == 7 and meta["counts"]["test"]["count"] == 0
    x = np.load(tmp_path / "f" / "train_healthy.npy")
    idx = np.load(tmp_path / "f" / "train_healthy_index.npz")
    vol_slices = x[idx["case_id"] == "vol.nii.gz"]
    assert vol_slices.shape == (5, 1, 32, 32) and np.all(vol_slices[:, :, :6] == 0)
    assert vol_slices.max() == 255


def test_cli_oct(oct_tree, tmp_path, capsys):
    assert main(["oct", str(oct_tree), str(tmp_path / "c"), "--image-size", "32", "--quiet"]) == 0
    assert "train" in capsys.readouterr().out
    assert (tmp_path / "c" / "meta.json").is_file()


def test_berdiff_prepare_brats_cli(brats_tree, tmp_path):
    """The command line as a user calls it: prepared output, then a refusal to overwrite it."""
    import subprocess
    import sys

    out = tmp_path / "prep"
    cmd = [sys.executable, "-m", "napari_berdiff.cli", "prepare-brats", str(brats_tree), str(out),
           "--image-size", "48", "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "wrote" in proc.stdout and (out / "meta.json").is_file()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode != 0 and "exists" in again.stderr and "Traceback" not in again.stderr
