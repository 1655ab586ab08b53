"""evaluate() and the evaluate / grid commands on a tiny model and a tiny prepared BraTS tree."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from napari_berdiff.core.models.autoencoder import BinaryAutoencoder
from napari_berdiff.core.models.checkpoint import save_checkpoint
from napari_berdiff.core.models.configs import get_preset
from napari_berdiff.core.io.readers import BRATS_MODALITIES
from napari_berdiff.core.inference.detector import Detector
from napari_berdiff.core.evaluation.evaluate import evaluate
from napari_berdiff.core.evaluation.report import (anomaly_kinds, markdown_table, pick_slices,
                                                   write_reports)
from napari_berdiff.core.models.unet import BernoulliUNet
from src_training.train.datasets import load_eval_split
from src_training.prepare.prepare import prepare_brats

Z_KEEP = 6
TUMOUR = (82, 83, 84)


def write_case(root: Path, cid: str, kind: str, seed: int, shape=(28, 26, 80 + Z_KEEP + 26)):
    folder = root / cid
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    x, y, z = shape
    xx, yy = np.mgrid[:x, :y]
    brain = ((xx - x / 2) / (0.42 * x)) ** 2 + ((yy - y / 2) / (0.42 * y)) ** 2 < 1
    seg = np.zeros(shape, np.uint8)
    for s in TUMOUR:
        seg[10:17, 9:16, s] = 2
    for c, mod in enumerate(BRATS_MODALITIES):
        vol = np.zeros(shape, np.int16)
        vol[brain] = 200 * (c + 1) + rng.integers(0, 60, (int(brain.sum()), z))
        vol[seg > 0] += 500 if kind == "tumour" else -150
        nib.save(nib.Nifti1Image(vol, np.eye(4)), str(folder / f"{cid}_{mod}.nii.gz"))
    nib.save(nib.Nifti1Image(seg, np.eye(4)), str(folder / f"{cid}_seg.nii.gz"))
    (folder / f"{cid}_synth.json").write_text(json.dumps({"kind": kind}))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("brats") / "src"
    for i in range(1, 7):
        write_case(root, f"BraTS20_Training_{i:03d}", "tumour" if i % 2 else "cavity", seed=i)
    out = tmp_path_factory.mktemp("prep") / "brats32"
    prepare_brats(root, out, image_size=32, seed=0, show_progress=False)
    return out


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    ae_cfg, unet_cfg = get_preset("tiny", 4)
    ae, unet = BinaryAutoencoder(ae_cfg), BernoulliUNet(unet_cfg)
    with torch.no_grad():  # give the zero-initialised output conv some signal
        for p in unet.parameters():
            p.add_(0.2 * torch.randn_like(p))
    meta = {"name": "tiny-test", "preprocess": {"mode": "pad"},
            "channel_names": list(BRATS_MODALITIES)}
    return save_checkpoint(tmp_path_factory.mktemp("ck") / "tiny.pt", autoencoder=ae, unet=unet,
                           meta=meta)


@pytest.fixture(scope="module")
def results(prepared, checkpoint):
    det = Detector.from_checkpoint(checkpoint, device="cpu")
    test, val = load_eval_split(prepared, "test"), load_eval_split(prepared, "val")
    ticks = []
    res = evaluate(det, test, val, L=10, P=0.5, steps=5, seed=0, batch_size=6, timing_slices=1,
                   kinds=anomaly_kinds(test), progress=lambda d, t: ticks.append((d, t)))
    return res, ticks


def test_evaluate_reports_every_method_and_protocol(results):
    res, ticks = results
    rows = {r["method"]: r for r in res["methods"]}
    assert list(rows) == ["masked", "unmasked", "ae_only", "threshold"]
    assert rows["masked"]["P"] == 0.5 and rows["unmasked"]["P"] == 0.0 and rows["ae_only"]["P"] == 1.0
    cfg = res["config"]
    assert cfg["sweep_P"] == [0.5, 0.0, 1.0] and cfg["n_test"] == 6 and cfg["n_val"] == 6
    assert cfg["n_test_diseased"] == 3 and cfg["n_test_healthy"] == 3
    for m, r in rows.items():
        assert r["paper_n"] == 3
        for key in ("paper_dice", "paper_auprc", "paper_auroc", "strict_auprc", "strict_auroc",
                    "strict_dice", "image_auroc_area", "val_dice"):
            assert 0.0 <= r[key] <= 1.0, (m, key, r[key])
        assert r["strict_exact"] and np.isfinite(r["val_threshold"])
        if m != "threshold":
            assert r["psnr_healthy"] > 0 and r["psnr_diseased"] > 0
            assert r["seconds_per_image"] > 0 and r["peak_mem_mb"] > 0
        else:
            assert math.isnan(r["psnr_healthy"])
    assert 0.0 <= rows["masked"]["image_auroc_fraction"] <= 1.0
    assert math.isnan(rows["unmasked"]["image_auroc_fraction"])
    # P = 0 masks every bit, P = 1 none
    assert all(f == 1.0 for f in res["per_slice"]["unmasked_masked_fraction"])
    assert all(f == 0.0 for f in res["per_slice"]["ae_only_masked_fraction"])
    # tumours are bright in FLAIR, cavities dark: the intensity baseline ranks only tumours well
    (kind,) = res["per_kind"]
    assert (rows["threshold"]["paper_auroc"] > 0.9) if kind == "tumour" else (
        rows["threshold"]["paper_auroc"] < 0.5)
    # progress ticks: val + test, 6 slices each in chunks, 5 steps per batch
    assert ticks[-1][0] == ticks[-1][1] == len(ticks)


def test_per_kind_breakdown_from_the_synthetic_case_metadata(results, prepared):
    res, _ = results
    test = load_eval_split(prepared, "test")
    kinds = anomaly_kinds(test)
    assert set(kinds[~test.healthy]) <= {"tumour", "cavity"} and set(kinds[test.healthy]) == {"healthy"}
    (kind, entry), = res["per_kind"].items()
    assert entry["n"] == 3 and set(entry) >= {"masked", "threshold"}
    assert 0.0 <= entry["masked"]["dice"] <= 1.0


def test_reports_written_and_never_overwritten(results, tmp_path):
    res, _ = results
    files = write_reports(res, tmp_path / "rep")
    assert {p.name for p in files.values()} == {"evaluation.json", "evaluation.csv",
                                                "evaluation.md", "per_slice.csv"}
    data = json.loads(files["json"].read_text())
    assert [r["method"] for r in data["methods"]] == ["masked", "unmasked", "ae_only", "threshold"]
    assert data["methods"][3]["psnr_healthy"] is None  # NaN -> null
    csv_lines = files["csv"].read_text().splitlines()
    assert len(csv_lines) == 5 and csv_lines[0].startswith("method,P,paper_dice")
    md = files["md"].read_text()
    assert "| masked Bernoulli | 0.5 |" in md and "intensity threshold" in md
    assert md == markdown_table(res)
    assert len(files["per_slice"].read_text().splitlines()) == 7
    before = files["json"].read_text()
    with pytest.raises(FileExistsError):
        write_reports(res, tmp_path / "rep")
    assert files["json"].read_text() == before
    write_reports(res, tmp_path / "rep", overwrite=True)
    assert not list((tmp_path / "rep").glob(".*"))  # no temporary files left


def test_brain_mask_and_no_validation_split(prepared, checkpoint):
    det = Detector.from_checkpoint(checkpoint, device="cpu")
    test = load_eval_split(prepared, "test", decode=False)  # stored uint8 works too
    res = evaluate(det, test, None, L=6, P=0.5, steps=3, batch_size=6, timing_slices=0,
                   baselines=("threshold",), brain_mask=True)
    rows = {r["method"]: r for r in res["methods"]}
    assert list(rows) == ["masked", "threshold"]
    assert math.isnan(rows["masked"]["strict_dice"]) and math.isnan(rows["threshold"]["paper_dice"])
    assert 0 <= rows["masked"]["strict_auprc"] <= 1 and res["config"]["brain_mask"]
    assert math.isnan(rows["masked"]["seconds_per_image"])
    from napari_berdiff.core.evaluation.report import markdown_table

    assert "no validation split was used" in markdown_table(res)  # the n/a is explained


def test_pick_slices_spans_the_split():
    assert list(pick_slices(10, None)) == list(range(10))
    assert list(pick_slices(10, 3)) == [0, 4, 9] or list(pick_slices(10, 3)) == [0, 5, 9]
    assert len(pick_slices(5, 50)) == 5


def start(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "napari_berdiff.cli", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return out


def test_evaluate_and_grid_commands(prepared, checkpoint, tmp_path, capsys):
    out, g = tmp_path / "ev", tmp_path / "grid"
    # the two commands run at the same time (two cores)
    ev = start("evaluate", prepared, "--model", checkpoint, "--L", 6, "--steps", 3,
               "--max-slices", 4, "--timing-slices", 0, "--out", out, "--no-progress",
               "--device", "cpu", "--batch-size", "auto")
    gr = start("grid", prepared, "--model", checkpoint, "--L", 4, 8, "--P", 0.3, 0.7,
               "--out", g, "--no-progress", "--device", "cpu", "--batch-size", "auto")
    stdout = finish(ev)
    finish(gr)
    assert "| masked Bernoulli |" in stdout and "| autoencoder only |" in stdout
    data = json.loads((out / "evaluation.json").read_text())
    assert data["config"]["n_test"] == 4 and data["config"]["L"] == 6
    assert data["config"]["batch_size"] >= 1  # "auto" planned from the free memory
    from napari_berdiff.cli import main

    assert main(["evaluate", str(prepared), "--model", str(checkpoint), "--out", str(out)]) == 2
    assert "already exist" in capsys.readouterr().err
    rows = (g / "grid.csv").read_text().splitlines()
    assert len(rows) == 1 + 4 and rows[0].startswith("L,P,dice")
    for name in ("grid_dice.png", "masked_fraction_box.png"):
        assert (g / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    info = json.loads((g / "grid.json").read_text())
    assert info["box_L"] == 8 and len(info["cells"]) == 4
    assert len((g / "grid_slices.csv").read_text().splitlines()) == 1 + 2 * 2 * 6


def test_oct_scans_without_masks_count_for_the_image_level_only():
    from src_training.train.datasets import EvalSplit

    torch.manual_seed(1)
    ae_cfg, unet_cfg = get_preset("tiny", 1)
    det = Detector(BinaryAutoencoder(ae_cfg), BernoulliUNet(unet_cfg), device="cpu")
    rng = np.random.default_rng(0)
    images = rng.random((4, 1, 32, 32), dtype=np.float32) * 0.5
    labels = np.zeros((4, 32, 32), np.uint8)
    labels[2, 20:26, 8:20] = 1
    images[2, 0, 20:26, 8:20] = 1.0  # bright drusen-like band
    split = EvalSplit(images=images, labels=labels, healthy=np.array([1, 1, 0, 0], bool),
                      case_id=np.array(["a", "b", "c", "d"]), slice_index=np.zeros(4, int),
                      class_name=np.array(["NORMAL", "NORMAL", "DRUSEN", "CNV"]),
                      has_mask=np.array([0, 0, 1, 0], bool), meta={"dataset": "oct",
                                                                   "channels": ["oct"]})
    res = evaluate(det, split, split, L=4, steps=2, timing_slices=0, kinds=anomaly_kinds(split))
    cfg = res["config"]
    assert cfg["n_test_pixel_labelled"] == 3 and cfg["threshold_channel"] == 0
    rows = {r["method"]: r for r in res["methods"]}
    assert all(r["paper_n"] == 1 for r in rows.values())
    assert rows["threshold"]["paper_auroc"] == 1.0  # the band is the brightest structure
    assert set(res["per_kind"]) == {"DRUSEN"}
    assert 0.0 <= rows["masked"]["image_auroc_fraction"] <= 1.0  # over all 4 scans


def test_ae_psnr_benchmark_separates_the_anomalys_cost(prepared, checkpoint, tmp_path):
    # as a user runs it: python benchmarks/ae_psnr.py CKPT PREPARED --json F
    out = tmp_path / "psnr.json"
    repo = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, str(repo / "benchmarks" / "ae_psnr.py"), str(checkpoint),
                        str(prepared), "--split", "test", "--threads", "1", "--json", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "the anomaly itself costs" in r.stdout
    got = json.loads(out.read_text())
    test = load_eval_split(prepared, "test")
    assert got["slices"] == len(test) and got["diseased"] == int((~test.healthy).sum()) > 0
    assert got["gap_db"] == pytest.approx(got["psnr_healthy"] - got["psnr_diseased"])
    # recompute the diseased slices' PSNR with and without the anomaly from the same codes
    from napari_berdiff.core.models.checkpoint import load_checkpoint

    ae = load_checkpoint(checkpoint).build_autoencoder("cpu")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # batch 16 covers the split in one call: the same draws as the script
        x = torch.from_numpy(np.ascontiguousarray(test.images))
        rec = ae.decode(ae.sample_bits(ae.encode(x), generator=gen)).clamp(0, 1).numpy()
    whole, rest = [], []
    for i in np.flatnonzero(~test.healthy):
        xi, ri, lab = test.images[i], rec[i], test.labels[i].astype(bool)
        whole.append(20 * np.log10(xi.max() / np.sqrt(((xi - ri) ** 2).mean())))
        rest.append(20 * np.log10(xi.max() / np.sqrt(((xi - ri) ** 2)[:, ~lab].mean())))
    assert got["psnr_diseased"] == pytest.approx(np.mean(whole), abs=1e-3)
    assert got["psnr_diseased_without_anomaly"] == pytest.approx(np.mean(rest), abs=1e-3)
    assert got["anomaly_cost_db"] == pytest.approx(np.mean(rest) - np.mean(whole), abs=1e-3)


def _benchmark(name: str):
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_unet_anomaly_cells_and_bits_on_a_hand_case():
    mod = _benchmark("unet_anomaly")
    lab = np.zeros((1, 4, 4), bool)
    lab[0, 0, 0:2] = True          # cell (0,0): 2 of 4 pixels -> anomaly
    lab[0, 0, 2] = True            # cell (0,1): 1 of 4 -> partial, left out
    cells = mod.cell_labels(lab, 2)
    assert cells.tolist() == [[[1, -1], [0, 0]]]
    # 1 image, 1 channel, 2x2 cells; the noise flipped the bit of cell (1,1) only
    z = np.array([[[[1, 0], [0, 1]]]], float)
    z_t = np.array([[[[1, 0], [0, 0]]]], float)
    eps = np.array([[[[0.7, 0.9], [0.2, 0.6]]]])
    scores, is_anom, hits, n = mod.split_bits(eps, z, z_t, cells, P=0.5)
    assert sorted(zip(scores.tolist(), is_anom.tolist())) == [(0.2, False), (0.7, True)]
    assert (hits, n) == (1, 1)
    _, _, hits, _ = mod.split_bits(eps, z, z_t, cells, P=0.65)
    assert hits == 0


def test_unet_anomaly_benchmark_runs_as_a_user_calls_it(prepared, checkpoint, tmp_path):
    out = tmp_path / "u.json"
    repo = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, str(repo / "benchmarks" / "unet_anomaly.py"), str(checkpoint),
                        str(prepared), "--split", "test", "--t", "20", "200", "--threads", "1",
                        "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    got = json.loads(out.read_text())
    test = load_eval_split(prepared, "test")
    assert got["slices"] == int((~test.healthy).sum()) > 0 and got["cell_pixels"] == 32 // 8
    assert [row["t"] for row in got["rows"]] == [20, 200]
    for row in got["rows"]:
        assert 0 <= row["auroc"] <= 1 and 0 <= row["noise_recall"] <= 1
        assert row["anomaly_bits"] > 0 and row["healthy_bits"] > 0
    # more noise flips more bits: fewer bits are left alone at t = 200 than at t = 20
    kept = [row["anomaly_bits"] + row["healthy_bits"] for row in got["rows"]]
    assert kept[1] < kept[0]
    assert "| 200 |" in r.stdout


def test_oracle_mask_sampler_keeps_what_it_does_not_mask(checkpoint):
    from napari_berdiff.core.models.checkpoint import load_checkpoint

    mod = _benchmark("oracle_mask")
    ck = load_checkpoint(checkpoint)
    unet, schedule = ck.build_unet("cpu"), ck.build_schedule()
    gen = torch.Generator().manual_seed(3)
    z = torch.bernoulli(torch.full((2, 8, 8, 8), 0.5), generator=gen)
    none = torch.zeros_like(z, dtype=torch.bool)
    with torch.inference_mode():
        assert torch.equal(mod.fixed_mask_sample(unet.flip_prob, z, none, schedule, 200, 10, gen), z)
        half = none.clone()
        half[..., :4] = True  # the left half of every latent row is resampled
        out = mod.fixed_mask_sample(unet.flip_prob, z, half, schedule, 400, 10, gen)
    assert torch.equal(out[..., 4:], z[..., 4:])
    assert not torch.equal(out[..., :4], z[..., :4])
    lab = np.zeros((1, 8, 8), bool)
    lab[0, 0, 0] = True
    assert mod.anomaly_cells(lab, 2, 0).sum() == 1
    assert mod.anomaly_cells(lab, 2, 1)[0].tolist() == [  # grown by one cell, 4-connected
        [True, True, False, False], [True, False, False, False], [False] * 4, [False] * 4]


def test_oracle_mask_benchmark_runs_as_a_user_calls_it(prepared, checkpoint, tmp_path):
    out = tmp_path / "o.json"
    repo = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, str(repo / "benchmarks" / "oracle_mask.py"), str(checkpoint),
                        str(prepared), "--L", "100", "--steps", "5", "--threads", "1",
                        "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    got = json.loads(out.read_text())
    test = load_eval_split(prepared, "test")
    assert got["slices"] == int((~test.healthy).sum()) > 0
    assert [row["method"] for row in got["rows"]] == [
        "autoencoder only", "masked (P=0.5)", "oracle mask", "unmasked (P=0)"]
    assert all(0 <= row["dice"] <= 1 for row in got["rows"])
    assert 0 < got["oracle_cell_fraction"] <= 1
    assert "| oracle mask |" in r.stdout


@pytest.mark.parametrize("script", ["unet_anomaly.py", "oracle_mask.py"])
def test_diagnosis_benchmarks_refuse_bad_input_in_one_line(script, prepared, checkpoint, tmp_path):
    repo = Path(__file__).resolve().parents[1]
    ae_only = tmp_path / "ae.pt"
    from napari_berdiff.core.models.checkpoint import load_checkpoint

    save_checkpoint(ae_only, autoencoder=load_checkpoint(checkpoint).build_autoencoder("cpu"),
                    meta={"name": "ae-only"})
    for args, says in (([str(checkpoint), str(tmp_path)], "not a prepared dataset"),
                       ([str(ae_only), str(prepared)], "not a full model")):
        r = subprocess.run([sys.executable, str(repo / "benchmarks" / script), *args],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 1 and says in r.stderr and "Traceback" not in r.stderr, r.stderr
