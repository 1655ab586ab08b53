"""One source for the settings: the manifest, the CLI flags and the core defaults agree with
napari_berdiff.core.inference.settings (and the training dataclasses)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from napari_berdiff.cli import build_parser
from napari_berdiff.core.inference.postprocess import (normalize_map, remove_small_components,
                                                       segment, segment_map)
from napari_berdiff.core.inference.settings import (DEFAULTS, GRID_L, GRID_P, POST, DetectSettings,
                                                    PostProcess)

ROOT = Path(__file__).resolve().parents[1]


def _manifest_widget_defaults() -> dict:
    manifest = yaml.safe_load((ROOT / "napari.yaml").read_text())
    props = manifest["contributions"]["configurations"]["widget"]["properties"]
    return {k: v["default"] for k, v in props.items()}


def test_the_manifest_defaults_are_the_settings():
    from napari_berdiff.plugin.inputs import parse_sweep
    from napari_berdiff.plugin.widget_controls import PREFERENCES

    got = _manifest_widget_defaults()
    assert set(PREFERENCES) <= set(got)
    for key, name in PREFERENCES.items():
        value = tuple(parse_sweep(got[key])) if name == "p_sweep" else got[key]
        assert value == getattr(DEFAULTS, name), key


def test_detect_evaluate_and_grid_flags_default_to_the_settings():
    parser = build_parser()
    det = parser.parse_args(["detect", "in.nii.gz", "--out", "o", "--model", "m.pt"])
    assert (det.L, det.P, det.seed) == (DEFAULTS.L, DEFAULTS.P, DEFAULTS.seed)
    assert (det.threshold, det.abs_threshold, det.min_size) == (
        POST.threshold, POST.abs_threshold, POST.min_size)
    ev = parser.parse_args(["evaluate", "data", "--model", "m.pt"])
    assert (ev.L, ev.P, ev.seed, ev.min_size) == (DEFAULTS.L, DEFAULTS.P, DEFAULTS.seed,
                                                  POST.min_size)
    grid = parser.parse_args(["grid", "data", "--model", "m.pt", "--out", "o"])
    assert (grid.L, grid.P, grid.min_size) == (list(GRID_L), list(GRID_P), POST.min_size)
    changed = parser.parse_args(["detect", "x", "--out", "o", "--model", "m", "--min-size", "3",
                                 "--abs-threshold", "0.2"])
    from napari_berdiff.cli.model_args import postprocess_from_args

    assert postprocess_from_args(changed) == PostProcess(min_size=3, abs_threshold=0.2)
    assert postprocess_from_args(det) == POST


def test_segment_map_is_the_paper_rule_or_the_absolute_threshold():
    rng = np.random.default_rng(0)
    amap = rng.random((3, 30, 30)).astype(np.float32)
    amap[1, 5:12, 5:12] += 3.0
    np.testing.assert_array_equal(segment_map(amap), segment(normalize_map(amap), 0.5, 10, 2))
    absolute = PostProcess(abs_threshold=1.5, min_size=4)
    np.testing.assert_array_equal(segment_map(amap, absolute),
                                  remove_small_components(amap > 1.5, 4, 2))
    assert segment_map(amap, absolute)[1].sum() == 49 and not segment_map(amap, absolute)[0].any()


def test_settings_records_round_trip_and_ignore_unknown_keys():
    pp = PostProcess(threshold=0.3, min_size=16)
    assert PostProcess.from_dict(pp.to_dict() | {"from_a_newer_version": 1}) == pp
    s = DetectSettings(L=6, steps=20, p_sweep=(0.7, 0.3))
    assert s.S == 6 and DetectSettings(steps=None).S is None
    assert s.thresholds() == [0.3, 0.5, 0.7]
    assert s.with_post(min_size=3).post.min_size == 3 and s.post.min_size == POST.min_size
    with pytest.raises(TypeError):
        PostProcess(no_such_setting=1)


def test_the_training_flags_are_the_training_dataclasses():
    from src_training.train.settings import AutoencoderTraining, Corruption, DiffusionTraining

    from napari_berdiff.cli.cmd_train import corruption_from_args, stage_settings

    parser = build_parser()
    ae = parser.parse_args(["train-ae", "data", "--out", "o"])
    assert stage_settings(AutoencoderTraining, ae) == AutoencoderTraining()
    diff = parser.parse_args(["train-diffusion", "data", "--ae", "a.pt", "--out", "o"])
    assert corruption_from_args(diff) == Corruption() and stage_settings(DiffusionTraining, diff) == DiffusionTraining()
    changed = parser.parse_args(["train-diffusion", "data", "--ae", "a.pt", "--out", "o",
                                 "--config", "tiny", "--init", "m.pt", "--sample-L", "50",
                                 "--no-resume", "--quiet", "--corruption", "blob",
                                 "--corruption-shift", "3"])
    s = stage_settings(DiffusionTraining, changed)
    assert (s.preset, s.init_unet, s.sample_L, s.resume, s.progress) == ("tiny", "m.pt", 50,
                                                                         False, False)
    assert corruption_from_args(changed) == Corruption(kind="blob", max_shift=3)
    assert (AutoencoderTraining().steps, DiffusionTraining().steps) == (12000, 200_000)
