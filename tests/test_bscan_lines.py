"""The geometry behind "click a B-scan line, jump to that B-scan" (plugin/bscan_lines.py)."""

from __future__ import annotations

import numpy as np

from napari_berdiff.plugin.bscan_lines import nearest_line, pick_tolerance, segment_distances

# a raster of 5 horizontal lines (row, col): B-scan k on row 100 - 10 k, columns 20..220
RASTER = np.array([[[100 - 10 * k, 20], [100 - 10 * k, 220]] for k in range(5)], float)


def test_distance_is_to_the_segment_not_the_infinite_line():
    d = segment_distances(RASTER[:1], (103.0, 120.0))
    np.testing.assert_allclose(d, [3.0])
    d = segment_distances(RASTER[:1], (104.0, 223.0))  # beyond the end: to the end point
    np.testing.assert_allclose(d, [5.0])
    d = segment_distances(np.array([[[5.0, 5.0], [5.0, 5.0]]]), (8.0, 9.0))  # a degenerate line
    np.testing.assert_allclose(d, [5.0])


def test_the_nearest_line_wins_and_far_clicks_pick_none():
    assert nearest_line(RASTER, (71.0, 50.0)) == 3  # row 70 is B-scan 3
    assert nearest_line(RASTER, (84.0, 219.0)) == 2  # row 80, nearer than 90
    assert nearest_line(RASTER, (86.0, 219.0)) == 1
    tol = pick_tolerance(RASTER)
    assert tol == 10.0  # the spacing between lines
    assert nearest_line(RASTER, (100.0 + 9.0, 120.0), tol) == 0
    assert nearest_line(RASTER, (100.0 + 11.0, 120.0), tol) is None
    assert nearest_line(RASTER, (80.0, 240.0), tol) is None  # 20 px past the lines' ends
    assert nearest_line(np.empty((0, 2, 2)), (0.0, 0.0)) is None


def test_oblique_lines_and_the_minimum_tolerance():
    # two parallel diagonal lines; (60, 80) lies on the second
    lines = np.array([[[0, 0], [100, 100]], [[0, 20], [100, 120]]], float)
    assert nearest_line(lines, (60.0, 80.0)) == 1
    assert nearest_line(lines, (60.0, 61.0)) == 0
    assert pick_tolerance(lines[:1]) == 5.0
    assert pick_tolerance(np.array([[[0, 0], [0, 9]], [[1, 0], [1, 9]]], float)) == 5.0
