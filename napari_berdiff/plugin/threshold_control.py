"""The widget's segmentation controls: the rule (calibrated threshold or paper rule) and the
threshold slider with the false-positive rate beside it. It knows the model's calibration and
reports each change; re-segmenting is the widget's (:mod:`.segmenter`)."""

from __future__ import annotations

from typing import Callable

from ..core.inference.calibration import Calibration, ThresholdRule
from .inputs import InputError
from .segmenter import slider_range, widget_rule
from .status import threshold_text

__all__ = ["ThresholdControl"]


class ThresholdControl:
    """Owns ``seg_mode``, ``seg_threshold`` and ``seg_info`` of the controls; ``on_change()``
    after the user changed the rule or moved the slider."""

    def __init__(self, controls, on_change: Callable[[], None]):
        self.c, self.on_change = controls, on_change
        self.meta: dict | None = None
        self.calibration: Calibration | None = None
        self.error: str | None = None  # a malformed calibration
        self.model_key = None
        self._noted: set = set()  # models whose fallback note was shown
        self._setting = False
        controls.seg_mode.changed.connect(self._changed)
        controls.seg_threshold.changed.connect(self._changed)
        self._refresh()

    def set_model(self, checkpoint) -> None:
        """Another model (None: none): the slider starts at its calibrated threshold."""
        meta = None if checkpoint is None else checkpoint.meta
        try:
            cal, err = Calibration.from_meta(meta), None
        except ValueError as e:
            cal, err = None, str(e)
        self.meta, self.calibration, self.error = meta, cal, err
        self.model_key = None if checkpoint is None else checkpoint.sha256
        hi, step = slider_range(cal)
        self._set_slider(hi, step, cal.default_threshold if cal is not None else 0.0)
        self._refresh()

    def widen(self, map_high: float) -> None:
        """Let the slider reach a run's largest map values (its value stays)."""
        hi, step = slider_range(self.calibration, map_high)
        if hi > self.c.seg_threshold.max:
            self._set_slider(hi, step, self.c.seg_threshold.value)

    def _set_slider(self, hi: float, step: float, value: float) -> None:
        s = self.c.seg_threshold
        self._setting = True
        try:
            s.max = hi
            s.step = step
            s.value = min(max(value, 0.0), hi)
        finally:
            self._setting = False

    @property
    def calibrated_value(self) -> float | None:
        return None if self.calibration is None else self.calibration.default_threshold

    def rule(self) -> ThresholdRule:
        """The rule the controls show (InputError for a malformed calibration)."""
        if self.error:
            raise InputError(self.error)
        value = self.c.seg_threshold.value if self.calibration is not None else None
        return widget_rule(self.meta, self.c.seg_mode.value, value)

    def note_once(self, rule: ThresholdRule) -> str | None:
        """The rule's note (an uncalibrated model's fallback) the first time for this model."""
        if not rule.note or self.model_key in self._noted:
            return None
        self._noted.add(self.model_key)
        return rule.note

    def _changed(self, *_):
        if self._setting:
            return
        self._refresh()
        self.on_change()

    def _refresh(self) -> None:
        c = self.c
        c.seg_threshold.enabled = self.calibration is not None and c.seg_mode.value == "calibrated"
        if self.error:
            c.set_info(c.seg_info, self.error, "error")
            return
        c.set_info(c.seg_info, threshold_text(self.rule(), self.calibrated_value))
