"""Figures of a detection against annotations that came with the input (an OCT volume's drusen
annotation, ``core.io.oct_volume.OctVolume.maps``), in the terms of ``berdiff evaluate``.

:func:`reference_figures` takes the per-slice anomaly maps, the segmentation and the annotation
(all ``(n, H, W)``, the same slices) and gives the paper protocol's figures (mean and standard
deviation of Dice and AUPRC over the slices that hold annotated pixels) and the pooled ones (over
all pixels of all slices), with how many slices each figure used.
"""

from __future__ import annotations

import numpy as np

from .metrics import auprc, dice, summarize

__all__ = ["reference_figures"]


def reference_figures(anomaly_map, segmentation, annotation) -> dict:
    """``{"dice": {mean, std, n}, "auprc": {mean, std, n}, "dice_pooled", "auprc_pooled",
    "slices_with_annotation"}`` of ``segmentation`` / ``anomaly_map`` against ``annotation``."""
    amap = np.asarray(anomaly_map, np.float64)
    seg, ref = np.asarray(segmentation, bool), np.asarray(annotation, bool)
    if not amap.shape == seg.shape == ref.shape or amap.ndim != 3:
        raise ValueError(f"need three (n, H, W) arrays of one shape, got {amap.shape}, "
                         f"{seg.shape}, {ref.shape}")
    lesion = [i for i in range(len(ref)) if ref[i].any()]
    return {"dice": summarize(dice(seg[i], ref[i]) for i in lesion),
            "auprc": summarize(auprc(amap[i], ref[i]) for i in lesion),
            "dice_pooled": dice(seg, ref, empty=float("nan")),
            "auprc_pooled": auprc(amap, ref),
            "slices_with_annotation": len(lesion)}
