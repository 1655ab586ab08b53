"""The widget's status line and ETA as pure functions (no viewer, no Qt)."""

from __future__ import annotations

import numpy as np

from napari_berdiff.core.inference.result import DetectionResult, Progress
from napari_berdiff.plugin.status import done_text, eta_seconds, explain, progress_text, running_text


def test_the_eta_needs_a_second_tick_and_uses_the_rate_since_the_first_shown():
    first = (2.0, 1)  # elapsed, done of the first tick shown (loading excluded)
    assert eta_seconds(None, Progress(3, 11, elapsed=3.0)) is None
    assert eta_seconds(first, Progress(1, 11, elapsed=2.0)) is None  # no rate yet
    assert eta_seconds(first, Progress(3, 11, elapsed=3.0)) == 4.0  # 0.5 s per step, 8 to go
    assert eta_seconds(first, Progress(11, 11, elapsed=7.0)) == 0.0


def test_progress_text_counts_steps_or_names_the_stage():
    tick = Progress(3, 11, "sampling", 3.0, masked=0.125)
    assert progress_text(tick, (2.0, 1)) == "sampling: 3/11, 3.0 s, ETA 4.0 s, masked 12.5%"
    assert progress_text(Progress(1, 11, "sampling", 2.0)) == "sampling: 1/11, 2.0 s"
    assert progress_text(Progress(0, 0, "model loaded", 1.24)) == "model loaded (1.2 s)"


def test_running_done_and_error_texts():
    assert running_text(200, 5, 9) == "running: L=200, 5 slice(s) x 9 P value(s)"
    res = DetectionResult([0.3, 0.5], np.zeros((2, 3, 1, 4, 4), np.float32),
                          np.zeros((2, 3, 4, 4), np.float32), np.zeros((2, 3), np.float32),
                          np.zeros((3, 1, 4, 4), np.float32),
                          provenance={"device": "cpu", "L": 20, "steps": 4, "seed": 1})
    assert done_text(2.345, res) == "done: 2.3 s on cpu, 3 slice(s) x 2 P (L=20, S=4, seed 1)"
    assert explain(ValueError("bad input\nmore")) == "bad input"
    assert explain(RuntimeError("CUDA out of memory. Tried")).startswith("out of memory:")
    assert explain(KeyError("x")) == "the run failed (KeyError: 'x')"
