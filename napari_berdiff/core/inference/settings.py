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

__all__ = ["PostProcess", "DetectSettings", "DEFAULTS", "POST", "P_SWEEP", "GRID_L", "GRID_P",
           "format_sweep"]

P_SWEEP = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # sampled in one batch by the widget
GRID_L = (50, 100, 200, 300)  # berdiff grid (the paper's Fig. 3)
GRID_P = (0.1, 0.3, 0.5, 0.7, 0.9)


def _help(text: str) -> dict:
    return {"help": text}


@dataclass(frozen=True)
class PostProcess:
    """From reconstructions to anomaly maps and segmentations (the paper protocol): per-channel
    squared error, ``median_size`` median filter, summed over channels; per slice clipped to the
    [``low``, ``high``] percentiles and scaled to [0, 1]; ``> threshold``; components smaller than
    ``min_size`` pixels removed (``connectivity`` 2: 8-connected). With ``abs_threshold`` the
    filtered map is thresholded directly instead (e.g. a threshold chosen on a validation split)."""

    median_size: int = 5
    low: float = 1.0
    high: float = 99.0
    threshold: float = field(default=0.5, metadata=_help(
        "threshold on the per-slice normalised map (paper: 0.5)"))
    abs_threshold: float | None = field(default=None, metadata=_help(
        "threshold the median-filtered map directly instead (e.g. the val_threshold reported "
        "by `berdiff evaluate`)"))
    min_size: int = field(default=10, metadata=_help(
        "remove segmented components smaller than this many pixels, 8-connected (paper 10; "
        "the released code 16)"))
    connectivity: int = 2

    def rule(self) -> str:
        """The segmentation rule in words (provenance)."""
        if self.abs_threshold is not None:
            return "map > abs_threshold"
        return f"normalize_map ({self.low:g}-{self.high:g} percentile) > threshold"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> "PostProcess":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (d or {}).items() if k in names})


@dataclass(frozen=True)
class DetectSettings:
    """One detection run: noise level ``L``, threshold ``P``, sampler ``steps`` S (at most L; None:
    every step), ``seed``, the ``p_sweep`` sampled together with P (the widget) and the
    post-processing."""

    L: int = 200
    P: float = 0.5
    steps: int | None = 20  # berdiff detect's and the widget's S; 20 matched S = 200 in Dice
    seed: int = 0
    p_sweep: tuple[float, ...] = P_SWEEP
    post: PostProcess = field(default_factory=PostProcess)

    @property
    def S(self) -> int | None:
        """The sampler steps for this L: ``min(steps, L)`` (None: every step)."""
        return None if self.steps is None else min(int(self.steps), int(self.L))

    def thresholds(self) -> list[float]:
        """The P values a run samples: the sweep and P, sorted, each once."""
        return sorted({float(p) for p in self.p_sweep} | {float(self.P)})

    def with_post(self, **changes) -> "DetectSettings":
        """A copy with post-processing fields changed."""
        return replace(self, post=replace(self.post, **changes))


DEFAULTS = DetectSettings()
POST = DEFAULTS.post


def format_sweep(values) -> str:
    """A P sweep as the widget's text field shows it: ``"0.1, 0.2, 0.5"``."""
    return ", ".join(f"{float(v):g}" for v in values)
