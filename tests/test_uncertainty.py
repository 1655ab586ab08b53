"""K stochastic reconstructions per slice: the mean equals K separate runs, the spread is their
standard deviation, K = 1 is the plain detector, and `berdiff detect --samples K`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_berdiff.cli import main
from napari_berdiff.core.inference.uncertainty import SAMPLE_STRIDE, Sampled
from test_detect_cli import make_checkpoint, write_png
from test_detector import images, make_detector
from test_evaluate import checkpoint, prepared  # noqa: F401 (module-scoped fixtures)

RUN = dict(L=20, P=[0.3, 0.6], steps=5, seed=3)


def test_one_sample_is_the_plain_detector(one_thread):
    det = make_detector()
    x = images()
    a = det.detect(x, **RUN)
    b = Sampled(det, 1).detect(x, **RUN)
    np.testing.assert_array_equal(a.reconstruction, b.reconstruction)
    np.testing.assert_array_equal(a.masked_fraction, b.masked_fraction)
    assert b.samples == 1 and np.all(b.spread == 0)


def test_k_samples_are_k_independent_runs_averaged_in_one_batch(one_thread):
    det = make_detector()
    x = images(n=3)
    K = 3
    res = Sampled(det, K).detect(x, indices=[4, 5, 6], keep_mask_history=True, **RUN)
    runs = [det.detect(x, indices=[i + j * SAMPLE_STRIDE for i in (4, 5, 6)], **RUN)
            for j in range(K)]
    recs = np.stack([r.reconstruction for r in runs])  # (K, K_P, N, C, H, W)
    np.testing.assert_allclose(res.reconstruction, recs.mean(axis=0), atol=1e-5)
    np.testing.assert_allclose(res.spread, np.sqrt(recs.var(axis=0).sum(axis=2)), atol=1e-4)
    np.testing.assert_allclose(res.masked_fraction,
                               np.mean([r.masked_fraction for r in runs], axis=0), atol=1e-6)
    np.testing.assert_allclose(res.anomaly_map,
                               ((x[None] - res.reconstruction) ** 2).sum(axis=2), atol=1e-5)
    assert res.spread.max() > 0  # the samples do differ
    # sample 0 is the plain run: its reconstruction is one of the K averaged
    np.testing.assert_allclose(runs[0].reconstruction, det.detect(x, indices=[4, 5, 6],
                                                                  **RUN).reconstruction)
    assert res.mask_history.shape[2] == 3
    p = res.provenance
    assert p["samples"] == K and p["slice_indices"] == [4, 5, 6]
    assert p["batch"]["calls"] == 1  # the 3 x 3 x 2 trajectories share one call
    with pytest.raises(ValueError, match="samples must be at least 1, got 0"):
        Sampled(det, 0)


def test_sampled_volumes_keep_the_volume_handling(one_thread):
    det = make_detector(c=1)
    vol = np.random.default_rng(0).random((24, 26, 4)).astype(np.float32) * 900  # not in [0, 1]
    res = Sampled(det, 2).detect_volume(vol, slices=[1, 2], L=10, P=0.5, steps=3, seed=0)
    ref = det.detect_volume(vol, slices=[1, 2], L=10, P=0.5, steps=3, seed=0)
    np.testing.assert_allclose(res.input, ref.input)  # normalised per volume, as the plain run
    assert res.spread.shape == (1, 2, 24, 26) and "percentile" in res.provenance["normalize"]


def test_detect_samples_writes_the_spread(tmp_path, capsys):
    ck = make_checkpoint(tmp_path / "c1.pt", 1, "resize")
    png = write_png(tmp_path / "im.png")
    fast = ["--L", "6", "--steps", "3", "--device", "cpu", "--no-progress", "--threads", "1"]
    rc = main(["detect", *fast, str(png), "--model", str(ck), "--out", str(tmp_path / "o"),
               "--samples", "3"])
    err = capsys.readouterr().err
    assert rc == 0, err
    import tifffile

    spread = tifffile.imread(tmp_path / "o" / "im_berdiff_spread.tif")
    assert spread.shape == (40, 50) and spread.max() > 0
    prov = json.loads((tmp_path / "o" / "im_berdiff_provenance.json").read_text())
    assert prov["detector"]["samples"] == 3 and prov["outputs"]["spread"] == "im_berdiff_spread.tif"
    rc = main(["detect", *fast, str(png), "--model", str(ck), "--out", str(tmp_path / "p"),
               "--samples", "0"])
    assert rc == 2 and capsys.readouterr().err == ("berdiff detect: error: --samples must be at "
                                                   "least 1, got 0\n")


def test_uncertainty_benchmark_runs_as_a_user_calls_it(prepared, checkpoint, tmp_path, capsys):  # noqa: F811
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "bench_uncertainty", Path(__file__).resolve().parents[1] / "benchmarks" /
        "bench_uncertainty.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "u.json"
    assert bench.main([str(prepared), "--model", str(checkpoint), "--K", "1", "2", "--L", "10",
                       "--steps", "3", "--max-slices", "6", "--threads", "1",
                       "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["K"] for r in rows] == [1, 2] and rows[0]["gain_pct"] == 0.0
    assert all(0.0 <= r["auprc_pooled"] <= 1.0 for r in rows)
    assert rows[1]["cost_x"] > 0 and 0.0 <= rows[1]["auprc_spread"] <= 1.0
    assert "| K | AUPRC pooled | gain vs K=1 |" in capsys.readouterr().out
