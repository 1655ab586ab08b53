"""Figures of a detection against annotations that came with the input (an OCT volume's drusen
annotation, ``core.io.oct_volume.OctVolume.maps``), in the terms of ``berdiff evaluate``.

:func:`reference_figures` takes the per-slice anomaly maps, the segmentation and the annotation
(all ``(n, H, W)``, the same slices) and gives the paper protocol's figures (mean and standard
deviation of Dice and AUPRC over the slices that hold annotated pixels) and the pooled ones (over
all pixels of all slices), with how many slices each figure used. :func:`reference_report` does
it for every annotation of an input over the slices a run covered (``berdiff detect`` writes it as
``<stem>_berdiff_reference.json``; the widget computes it after a run on such a layer), and
:func:`reference_line` says it in one line.
"""

from __future__ import annotations

import numpy as np

from .metrics import auprc, dice, summarize

__all__ = ["reference_figures", "reference_report", "reference_line"]


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


def reference_report(annotations, anomaly_map, segmentation, slices) -> dict[str, dict]:
    """``{annotation name: reference_figures}`` of a run: ``annotations`` name -> ``(N, H, W)``
    masks of the whole input, ``anomaly_map`` / ``segmentation`` ``(n, H, W)`` of the ``n``
    slices ``slices`` (indices into the annotations' first axis) the run covered."""
    idx = [int(i) for i in slices]
    return {str(name): reference_figures(anomaly_map, segmentation, np.asarray(ann)[idx])
            for name, ann in annotations.items()}


def _num(v: float) -> str:
    return "n/a" if v is None or v != v else f"{v:.3f}"


def reference_line(report: dict[str, dict], unit: str = "B-scan") -> str:
    """One line for a :func:`reference_report`: ``"drusen: Dice 0.412 +- 0.101 (paper, 3
    annotated B-scans), 0.450 pooled; AUPRC 0.520 +- 0.080, 0.500 pooled"`` (annotations
    separated by " | ")."""
    parts = []
    for name, f in report.items():
        d, a, n = f["dice"], f["auprc"], f["slices_with_annotation"]
        parts.append(f"{name}: Dice {_num(d['mean'])} +- {_num(d['std'])} (paper, {n} annotated "
                     f"{unit}{'' if n == 1 else 's'}), {_num(f['dice_pooled'])} pooled; AUPRC "
                     f"{_num(a['mean'])} +- {_num(a['std'])}, {_num(f['auprc_pooled'])} pooled")
    return " | ".join(parts)

