"""The fast median filter of the paper protocol equals scipy's median_filter (mode "reflect")."""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import ndimage

from napari_berdiff.core.inference.postprocess import _selection_network, median_filter_2d, paper_anomaly_map


def _scipy(a, k):
    return ndimage.median_filter(a, size=(1,) * (a.ndim - 2) + (k, k))  # mode "reflect" (default)


@pytest.mark.parametrize("shape", [(1, 1), (2, 3), (3, 7), (7, 3), (5, 5), (11, 13), (2, 31, 17),
                                   (2, 3, 24, 40), (300, 9, 9), (1, 97, 61)])
@pytest.mark.parametrize("size", [2, 3, 4, 5, 7])
def test_median_filter_2d_equals_scipy_on_random_arrays(shape, size):
    rng = np.random.default_rng(hash((shape, size)) % 2**32)
    a = rng.standard_normal(shape).astype(np.float32)
    np.testing.assert_array_equal(median_filter_2d(a, size), _scipy(a, size))


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.int16, np.uint8])
def test_median_filter_2d_keeps_dtype_and_handles_ties(dtype):
    rng = np.random.default_rng(1)
    a = rng.integers(0, 4, size=(3, 19, 23)).astype(dtype)  # many equal values
    out = median_filter_2d(a, 5)
    assert out.dtype == a.dtype and out.shape == a.shape
    np.testing.assert_array_equal(out, _scipy(a, 5))


def test_median_filter_2d_with_non_finite_values_matches_scipy():
    a = np.random.default_rng(2).random((2, 12, 12))
    a[0, 3, 4] = np.nan
    a[1, 0, 0] = np.inf
    np.testing.assert_array_equal(median_filter_2d(a, 5), _scipy(a, 5))


def test_median_filter_2d_size_one_is_a_copy_and_1d_is_refused():
    a = np.arange(12.0).reshape(3, 4)
    out = median_filter_2d(a, 1)
    np.testing.assert_array_equal(out, a)
    assert out is not a
    with pytest.raises(ValueError):
        median_filter_2d(np.arange(5.0), 3)


def test_selection_network_is_small():
    ops, _ = _selection_network(25, 12)
    assert len(ops) <= 120  # 113 comparators for the median of 25


def test_paper_anomaly_map_uses_the_fast_median_and_equals_the_scipy_definition():
    rng = np.random.default_rng(3)
    x = rng.random((3, 4, 40, 36)).astype(np.float32)
    r = rng.random((3, 4, 40, 36)).astype(np.float32)
    err = (x - r) ** 2
    expect = ndimage.median_filter(err, size=(1, 1, 5, 5)).sum(axis=1, dtype=np.float32)
    np.testing.assert_array_equal(paper_anomaly_map(x, r), expect)
    np.testing.assert_array_equal(paper_anomaly_map(x[0], r[0]), expect[0])


def test_median_filter_2d_speed_against_scipy(capsys):
    """A measurement, not a timed assertion: printed with ``-s`` (or shown in the report)."""
    a = np.random.default_rng(4).random((4, 240, 240)).astype(np.float32)
    best = {}
    for name, fn in (("scipy", lambda: _scipy(a, 5)), ("fast", lambda: median_filter_2d(a, 5))):
        fn()
        ts = []
        for _ in range(3):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        best[name] = min(ts)
    with capsys.disabled():
        print(f"\n5x5 median of 4x240x240 float32: scipy {best['scipy'] * 1e3:.1f} ms, "
              f"median_filter_2d {best['fast'] * 1e3:.1f} ms ({best['scipy'] / best['fast']:.1f}x)")
