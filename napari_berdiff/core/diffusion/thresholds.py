"""When two thresholds P are the same: one rule (:func:`p_key`) for the widget's sweep parser and
slider, evaluation, the sampler's per-trajectory seeds and ``DetectionResult.index_of``."""

from __future__ import annotations

from typing import Iterable, Sequence

__all__ = ["P_RESOLUTION", "p_key", "canonical_p", "unique_ps", "find_p"]

P_RESOLUTION = 1_000_000  # thresholds are told apart to a millionth


def p_key(P: float) -> int:
    """The integer key of a threshold (P in millionths, rounded): two thresholds with the same key
    are the same, and the sampler seeds a trajectory by it."""
    return int(round(float(P) * P_RESOLUTION))


def canonical_p(P: float) -> float:
    """The float of ``P``'s key (``0.30000000000000004`` -> ``0.3``)."""
    return p_key(P) / P_RESOLUTION


def unique_ps(values: Iterable[float]) -> list[float]:
    """The distinct thresholds among ``values``, canonical and sorted."""
    return sorted({p_key(v): canonical_p(v) for v in values}.values())


def find_p(thresholds: Sequence[float], P: float) -> int | None:
    """The index of the threshold ``P`` in ``thresholds`` (None when it is not there)."""
    key = p_key(P)
    for k, p in enumerate(thresholds):
        if p_key(p) == key:
            return k
    return None
