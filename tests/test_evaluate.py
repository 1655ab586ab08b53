"""evaluate() and the evaluate / grid commands on a tiny model and a tiny prepared BraTS tree."""

from __future__ import annotations

import json
import math
import subprocess
import sys

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

from _eval_data import prepared_brats32


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return prepared_brats32(tmp_path_factory)


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
