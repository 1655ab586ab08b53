"""The detection settings, in one place: noise level L, threshold P, steps S, seed, the P sweep
and the post-processing. The widget's controls, its job, the ``detect`` / ``evaluate`` / ``grid``
flags, the function defaults of the core and the napari manifest's defaults all come from here
(``tests/test_settings.py`` checks the manifest).

To add a setting, add a field with a default; a post-processing field with a ``help`` in its
metadata is also a ``berdiff detect`` flag (``napari_berdiff.cli.dataclass_args``).
:meth:`PostProcess.from_dict` ignores keys it does not know, so older records still load.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace

from ..diffusion.thresholds import unique_ps

__all__ = ["Record", "PostProcess", "DetectSettings", "DEFAULTS", "POST", "P_SWEEP", "GRID_L",
           "GRID_P", "format_sweep", "THRESHOLD_MODES", "DEFAULT_THRESHOLD_MODE", "DEFAULT_FPR"]

P_SWEEP = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # sampled in one batch by the widget
GRID_L = (50, 100, 200, 300)  # berdiff grid (the paper's Fig. 3)
GRID_P = (0.1, 0.3, 0.5, 0.7, 0.9)
# how a filtered map becomes a mask (core/inference/calibration.py, docs/thresholds.md)
THRESHOLD_MODES = ("calibrated", "paper", "absolute")
DEFAULT_THRESHOLD_MODE = "calibrated"  # a model without calibration falls back to "paper"
DEFAULT_FPR = 1e-3  # berdiff calibrate's default: 0.1% of healthy foreground pixels


def _help(text: str) -> dict:
    return {"help": text}


class Record:
    """Dataclass settings as plain dicts and back (keys a newer version added are ignored)."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None):
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (d or {}).items() if k in names})


@dataclass(frozen=True)
class PostProcess(Record):
    """From reconstructions to anomaly maps and segmentations (the paper protocol): per-channel
    squared error, ``median_size`` median filter, summed over channels; per slice clipped to the
    [``low``, ``high``] percentiles and scaled to [0, 1]; ``> threshold``; components smaller than
    ``min_size`` pixels removed (``connectivity`` 2: 8-connected). With ``abs_threshold`` the
    filtered map is thresholded directly instead (e.g. a threshold chosen on a validation split).
    ``threshold_mode`` (None: absolute when ``abs_threshold`` is given, else calibrated) and
    ``fpr`` choose between these and the model's calibrated threshold
    (:func:`.calibration.rule_for`, which needs the model's meta; :func:`.postprocess.segment_map`
    knows only the paper and absolute rules)."""

    median_size: int = 5
    low: float = 1.0
    high: float = 99.0
    threshold_mode: str | None = field(default=None, metadata={
        "help": "how the map becomes a mask: calibrated (default: map > the model's calibrated "
                "threshold, see berdiff calibrate; a model without one falls back to paper and "
                "says so), paper (the evaluation protocol: each slice's map scaled to its own "
                "1-99th percentiles, > --threshold; every slice gets a mask), absolute (map > "
                "--abs-threshold; implied by it)", "choices": THRESHOLD_MODES})
    fpr: float | None = field(default=None, metadata={
        "help": "calibrated mode: the threshold whose false-positive rate on healthy calibration "
                f"pixels is F (default: the calibration's, {DEFAULT_FPR:g})", "metavar": "F"})
    threshold: float = field(default=0.5, metadata=_help(
        "paper mode: threshold on the per-slice normalised map (default {default})"))
    abs_threshold: float | None = field(default=None, metadata={
        "help": "absolute mode: threshold the median-filtered map at T (its healthy FPR is "
                "reported for a calibrated model)", "metavar": "T"})
    min_size: int = field(default=10, metadata=_help(
        "remove segmented components smaller than this many pixels, 8-connected (paper 10; "
        "the released code 16)"))
    connectivity: int = 2

    def rule(self) -> str:
        """The rule of :func:`.postprocess.segment_map` in words (provenance)."""
        if self.abs_threshold is not None:
            return "map > abs_threshold"
        return f"normalize_map ({self.low:g}-{self.high:g} percentile) > threshold"


@dataclass(frozen=True)
class DetectSettings:
    """One detection run: noise level ``L``, threshold ``P``, sampler ``steps`` S (at most L; None:
    every step), ``seed``, the ``p_sweep`` sampled together with P (the widget) and the
    post-processing."""

    L: int = 200
    P: float = 0.5
    steps: int | None = 20  # berdiff detect's and the widget's S; 20 matched S = 200 in Dice
    seed: int = 0
    samples: int = 1  # stochastic reconstructions per slice (> 1: mean + spread; .uncertainty)
    p_sweep: tuple[float, ...] = P_SWEEP
    post: PostProcess = field(default_factory=PostProcess)

    @property
    def S(self) -> int | None:
        """The sampler steps for this L: ``min(steps, L)`` (None: every step)."""
        return None if self.steps is None else min(int(self.steps), int(self.L))

    def thresholds(self) -> list[float]:
        """The P values a run samples: the sweep and P, sorted, each once (canonical: the same P
        by :func:`~napari_berdiff.core.diffusion.thresholds.p_key`)."""
        return unique_ps([*self.p_sweep, self.P])

    def with_post(self, **changes) -> "DetectSettings":
        """A copy with post-processing fields changed."""
        return replace(self, post=replace(self.post, **changes))


DEFAULTS = DetectSettings()
POST = DEFAULTS.post


def format_sweep(values) -> str:
    """A P sweep as the widget's text field shows it: ``"0.1, 0.2, 0.5"``."""
    return ", ".join(f"{float(v):g}" for v in values)
