"""One rule for "the same P" (core.diffusion.thresholds.p_key): the sweep parser, the settings,
DetectionResult.index_of and the sampler's seeds agree; the seeds are those of before the rule."""

from __future__ import annotations

import numpy as np
import pytest

from napari_berdiff.core.diffusion.sampler import trajectory_seed
from napari_berdiff.core.diffusion.thresholds import canonical_p, find_p, p_key, unique_ps
from napari_berdiff.core.inference.result import DetectionResult
from napari_berdiff.core.inference.settings import DetectSettings


def test_the_seeds_key_p_in_millionths_as_before():
    for seed, P in ((0, 0.5), (7, 0.1), (3, 0.30000000000000004), (2**33 + 5, 0.9999996)):
        key = int(round(P * 1_000_000))
        expect = int(np.random.SeedSequence([seed & 0xFFFFFFFF, 0x5A3F, key & 0xFFFFFFFF])
                     .generate_state(1, dtype=np.uint64)[0] >> 1)
        assert trajectory_seed(seed, P) == expect
    assert trajectory_seed(0, 0.3) == trajectory_seed(0, 0.1 + 0.2)  # the same P, the same seed


def test_same_p_is_the_same_key_everywhere():
    from napari_berdiff.plugin.inputs import parse_sweep

    assert p_key(0.1 + 0.2) == p_key(0.3) != p_key(0.300002)
    assert canonical_p(0.1 + 0.2) == 0.3
    assert unique_ps([0.7, 0.1 + 0.2, 0.3, 0.5]) == [0.3, 0.5, 0.7]
    assert parse_sweep("0.3, 0.30000001, 0.7") == [0.3, 0.7]
    assert DetectSettings(P=0.1 + 0.2, p_sweep=(0.3, 0.7)).thresholds() == [0.3, 0.7]
    assert find_p([0.3, 0.7], 0.1 + 0.2) == 0 and find_p([0.3, 0.7], 0.5) is None
    res = DetectionResult([0.3, 0.7], np.zeros((2, 1, 1, 4, 4), np.float32),
                          np.zeros((2, 1, 4, 4), np.float32), np.zeros((2, 1), np.float32),
                          np.zeros((1, 1, 4, 4), np.float32))
    assert res.index_of(0.1 + 0.2) == 0 and res.find(0.7000000001) == 1 and res.find(0.5) is None
    with pytest.raises(ValueError):
        res.index_of(0.5)
    assert res.slices == [0] and res.seg_ready == [False, False]
    assert res.ensure_segmentation(1).shape == (1, 4, 4) and res.seg_ready == [False, True]
