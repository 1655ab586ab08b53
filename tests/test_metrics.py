"""Metrics and post-processing on hand-computed cases (docs/method.md §8)."""

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from napari_berdiff.core.evaluation.metrics import (DiceSweep, PooledRanking, auprc, auroc, best_threshold,
                                         dice, image_auroc, paper_slice_metrics, psnr, summarize)
from napari_berdiff.core.inference.postprocess import (normalize_map, paper_anomaly_map,
                                             remove_small_components, segment)


# ----------------------------------------------------------------------------- Dice
def test_dice_of_two_known_masks():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[0, :3] = True  # 3 px
    b[0, 1:] = True  # 3 px, overlap 2
    assert dice(a, b) == pytest.approx(2 * 2 / (3 + 3))
    assert dice(a, a) == 1.0
    assert dice(a, ~a) == 0.0


def test_dice_empty_convention():
    e = np.zeros((3, 3), bool)
    assert dice(e, e) == 1.0
    assert math.isnan(dice(e, e, empty=np.nan))
    one = e.copy()
    one[1, 1] = True
    assert dice(e, one) == 0.0 and dice(one, e) == 0.0


# ----------------------------------------------------------------------------- ranking
def test_auprc_auroc_perfect_and_known_rankings():
    y = np.array([0, 0, 1, 1])
    assert auprc([0.1, 0.2, 0.8, 0.9], y) == 1.0
    assert auroc([0.1, 0.2, 0.8, 0.9], y) == 1.0
    assert auroc([0.9, 0.8, 0.2, 0.1], y) == 0.0
    # ranking 1,0,1,0 (descending): precision at the recalls 1/2 and 1 is 1 and 2/3
    s = np.array([0.9, 0.8, 0.7, 0.6])
    y2 = np.array([1, 0, 1, 0])
    assert auprc(s, y2) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert auroc(s, y2) == pytest.approx(0.75)  # 3 of the 4 positive-negative pairs ordered


def test_single_class_is_nan_and_summary_skips_nan():
    assert math.isnan(auprc([0.1, 0.2], [0, 0]))
    assert math.isnan(auroc([0.1, 0.2], [1, 1]))
    assert math.isnan(image_auroc([0.3, 0.4], [True, True]))
    s = summarize([1.0, 3.0, float("nan")])
    assert s == {"mean": 2.0, "std": 1.0, "n": 2}
    assert summarize([])["n"] == 0 and math.isnan(summarize([])["mean"])


def test_image_auroc_of_masked_fractions():
    assert image_auroc([0.1, 0.2, 0.5, 0.6], [False, False, True, True]) == 1.0
    assert image_auroc([0.1, 0.5, 0.2, 0.6], [False, False, True, True]) == pytest.approx(0.75)


def test_pooled_ranking_exact_and_binned_agree_with_sklearn():
    rng = np.random.default_rng(0)
    y = rng.random((6, 20, 20)) < 0.1
    s = rng.random((6, 20, 20)) * 0.5 + 0.8 * y * rng.random((6, 20, 20))
    exact = PooledRanking(0.0, 2.0, sqrt=True)
    binned = PooledRanking(0.0, 2.0, sqrt=True, max_exact=500, bins=1 << 16)
    for i in range(6):
        exact.update(s[i], y[i])
        binned.update(s[i], y[i])
    re, rb = exact.result(), binned.result()
    assert re["exact"] and not rb["exact"] and rb["pixels"] == 2400
    assert re["auprc"] == pytest.approx(average_precision_score(y.ravel(), s.ravel()))
    assert re["auroc"] == pytest.approx(roc_auc_score(y.ravel(), s.ravel()))
    assert rb["auprc"] == pytest.approx(re["auprc"], abs=2e-3)
    assert rb["auroc"] == pytest.approx(re["auroc"], abs=2e-3)
    # the valid mask drops pixels
    v = PooledRanking()
    v.update(np.array([0.9, 0.1, 0.5]), np.array([1, 0, 0]), valid=np.array([1, 1, 0], bool))
    assert v.result()["pixels"] == 2 and v.result()["auprc"] == 1.0


# ----------------------------------------------------------------------------- PSNR
def test_psnr_of_a_known_mse():
    x = np.zeros((1, 4, 4))
    x[0, 0, 0] = 1.0  # max(x) = 1
    rec = x + 0.1  # mse = 0.01 -> 20 log10(1 / 0.1) = 20 dB
    assert psnr(x, rec) == pytest.approx(20.0)
    assert psnr(2 * x, 2 * x + 0.1) == pytest.approx(20 * math.log10(2 / 0.1))
    assert psnr(x, x) == float("inf")
    assert math.isnan(psnr(np.zeros((2, 2)), np.ones((2, 2))))


# ----------------------------------------------------------------------------- post-processing
def test_component_of_9_px_removed_at_min_size_10_and_10_px_kept():
    m = np.zeros((20, 20), bool)
    m[1:4, 1:4] = True  # 9 px
    m[10, 5:15] = True  # 10 px
    out = remove_small_components(m, min_size=10)
    assert not out[1:4, 1:4].any() and out[10, 5:15].all() and out.sum() == 10
    assert segment(m.astype(float), 0.5, min_size=10).sum() == 10
    assert remove_small_components(m, min_size=16).sum() == 0  # the released code's <= 15 px


def test_connectivity_decides_whether_diagonal_pixels_join():
    m = np.zeros((8, 8), bool)
    for i in range(6):
        m[i, i] = True  # a 6-px diagonal line
    assert remove_small_components(m, min_size=6, connectivity=8).sum() == 6
    assert remove_small_components(m, min_size=6, connectivity=4).sum() == 0
    assert remove_small_components(m, min_size=2, connectivity=1).sum() == 0


def test_stack_is_processed_per_slice():
    m = np.zeros((2, 10, 10), bool)
    m[0, :3, :3] = True  # 9 px
    m[1, :4, :3] = True  # 12 px
    out = remove_small_components(m, min_size=10)
    assert out[0].sum() == 0 and out[1].sum() == 12


def test_median_filter_removes_a_salt_pixel_and_sums_channels():
    x = np.zeros((2, 9, 9), np.float32)
    rec = np.zeros_like(x)
    rec[0, 4, 4] = 1.0  # one salt pixel in channel 0
    rec[1, 2:7, 2:7] = 0.5  # a 5x5 block in channel 1: its centre survives the filter
    a = paper_anomaly_map(x, rec)
    assert a.shape == (9, 9) and a[4, 4] == pytest.approx(0.25)  # only channel 1's 0.5^2
    raw = paper_anomaly_map(x, rec, median_size=1)
    assert raw[4, 4] == pytest.approx(1.0 + 0.25)
    stack = paper_anomaly_map(np.stack([x, x]), np.stack([rec, x]))
    assert stack.shape == (2, 9, 9) and stack[1].max() == 0
    np.testing.assert_allclose(stack[0], a)


def test_normalize_map_clips_to_percentiles():
    a = np.arange(100, dtype=np.float32).reshape(10, 10)  # percentiles 1 and 99: 0.99, 98.01
    n = normalize_map(a)
    assert n.min() == 0.0 and n.max() == 1.0
    lo, hi = np.percentile(a, [1, 99])
    assert (lo, hi) == pytest.approx((0.99, 98.01))
    assert n[0, 0] == 0.0  # 0 is below the 1st percentile: clipped
    assert n[0, 1] == pytest.approx((1 - 0.99) / (98.01 - 0.99), rel=1e-4)
    assert n[5, 0] == pytest.approx((50 - lo) / (hi - lo))
    assert n[9, 9] == 1.0 and n[9, 8] < 1.0  # 99 is above the 99th percentile 98.01: clipped
    spike = np.zeros((40, 40), np.float32)
    spike[0, 0] = 1000.0  # one outlier above the 99th percentile: clipped away, nothing left
    assert np.all(normalize_map(spike) == 0)
    const = normalize_map(np.full((5, 5), 3.0))
    assert np.all(const == 0)  # documented: a constant map normalises to zeros
    two = normalize_map(np.stack([a, 2 * a + 5]))
    np.testing.assert_allclose(two[0], two[1], atol=1e-6)  # per slice


# ----------------------------------------------------------------------------- thresholds
def test_best_threshold_on_a_validation_stack():
    maps = np.zeros((2, 10, 10), np.float32)
    labels = np.zeros((2, 10, 10), bool)
    labels[0, 2:6, 2:6] = True
    maps[0, 2:6, 2:6] = 0.8
    maps[0, 0, :] = 0.4  # 10 px of false positives at 0.4
    maps[1, 5:9, 5:9] = 0.3  # false positives on a healthy slice
    t, d = best_threshold(maps, labels, [0.2, 0.35, 0.5, 0.9])
    assert d == 1.0 and 0.4 <= t < 0.8
    sweep = DiceSweep([0.2, 0.5, 0.9])
    sweep.update(maps, labels)
    # t=0.2: 16 TP, 16+10+16 predicted -> 2*16/(42+16)
    np.testing.assert_allclose(sweep.dice(), [32 / 58, 1.0, 0.0])
    # component removal inside the sweep: the 10-px row survives min_size 10, not 11
    s2 = DiceSweep([0.35], min_size=11)
    s2.update(maps, labels)
    assert s2.dice()[0] == 1.0


def test_paper_slice_metrics_on_a_clean_anomaly():
    x = np.zeros((1, 32, 32), np.float32)
    x[0, 10:20, 10:20] = 1.0  # a bright square the "reconstruction" removes
    rng = np.random.default_rng(0)
    rec = x.copy()
    rec[0, 10:20, 10:20] = 0.0
    rec += 0.01 * rng.random(rec.shape).astype(np.float32)
    label = np.zeros((32, 32), bool)
    label[10:20, 10:20] = True
    r = paper_slice_metrics(x, rec, label)
    assert r["dice"] > 0.9 and r["auprc"] > 0.9 and r["auroc"] > 0.99
    assert r["psnr"] == pytest.approx(psnr(x, rec))
