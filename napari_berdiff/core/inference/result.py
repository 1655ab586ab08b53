"""What a detection returns (:class:`DetectionResult`) and yields while it runs (:class:`Progress`);
plain numpy, no torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ..diffusion.thresholds import find_p
from .settings import POST, PostProcess

if TYPE_CHECKING:
    from ..diffusion.sampler import SamplerStep

__all__ = ["DetectionResult", "Progress"]


@dataclass
class DetectionResult:
    """Outputs at the input's geometry; the leading axis K runs over the thresholds P.

    ``slices``: the slice numbers of the N outputs (the seed indices by default; the napari
    widget: the layer's slices). ``segmentation`` holds the segmentation of threshold ``k`` once
    ``seg_ready[k]`` (computed on request: :meth:`ensure_segmentation`)."""

    thresholds: list[float]
    reconstruction: np.ndarray  # (K, N, C, H, W) float32 in [0, 1]
    anomaly_map: np.ndarray  # (K, N, H, W) float32: sum_c (x - x_rec)^2
    masked_fraction: np.ndarray  # (K, N) the image-level score
    input: np.ndarray  # (N, C, H, W) the normalised input the maps compare against
    mask_history: np.ndarray | None = None  # (S, K, N, h, w) float16: share of bits masked
    provenance: dict = field(default_factory=dict)
    slices: list[int] = field(default_factory=list)
    segmentation: np.ndarray | None = None  # (K, N, H, W) uint8 (allocated when first needed)
    seg_ready: list[bool] = field(default_factory=list)

    def __post_init__(self) -> None:
        K, N = self.anomaly_map.shape[:2]
        if not self.slices:
            self.slices = list(range(N))
        if not self.seg_ready:
            self.seg_ready = [False] * K

    def find(self, P: float) -> int | None:
        """Index of threshold ``P`` in the sweep, None when it was not sampled (the same P:
        :func:`~napari_berdiff.core.diffusion.thresholds.p_key`)."""
        return find_p(self.thresholds, P)

    def index_of(self, P: float) -> int:
        """Index of threshold ``P`` in the sweep (ValueError when it was not sampled)."""
        k = self.find(P)
        if k is None:
            raise ValueError(f"P={P} was not in the sweep {self.thresholds}")
        return k

    def ensure_segmentation(self, k: int, post: PostProcess = POST) -> np.ndarray:
        """The segmentation of threshold ``k``, computed now if it was not yet."""
        if not self.seg_ready[k]:
            from .postprocess import paper_anomaly_map, segment_map

            if self.segmentation is None:
                self.segmentation = np.zeros(self.anomaly_map.shape, np.uint8)
            amap = paper_anomaly_map(self.input, self.reconstruction[k], post.median_size)
            self.segmentation[k] = segment_map(amap, post)
            self.seg_ready[k] = True
        return self.segmentation[k]


@dataclass
class Progress:
    """A progress tick, and a cancellation point: :meth:`Detector.iter_detect` yields one after
    each network evaluation (``stage`` "sampling"); the napari widget's run also while it loads
    and post-processes."""

    done: int
    total: int
    stage: str = "sampling"
    elapsed: float = 0.0  # seconds since the start
    masked: float = float("nan")  # mean masked fraction of the batch (where computed)
    images: tuple[int, int] = (0, 0)  # the slice range [first, last + 1) of the current batch
    slices: tuple[int, ...] = ()  # the stack positions in the current batch (skipped ones absent)
    step: SamplerStep | None = None  # the sampler's step (tensors on the device)
