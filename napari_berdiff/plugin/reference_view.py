"""The widget's figures against annotations that came with its input (no Qt): after a run on an
OCT volume whose export carried pixel annotations (drusen; the reader opens each as a Labels
layer with ``annotation`` in its metadata), the Dice and AUPRC of the run's segmentation and
filtered anomaly map against them, as ``berdiff detect`` writes them in
``<stem>_berdiff_reference.json`` (:mod:`napari_berdiff.core.evaluation.reference`).
"""

from __future__ import annotations

import numpy as np

from ..core.evaluation.reference import reference_line, reference_report

__all__ = ["annotation_layers", "run_reference", "reference_text"]


def annotation_layers(viewer, layer) -> list:
    """The Labels layers holding pixel annotations read from the same OCT export as ``layer``
    (not its layer segmentation, not our outputs), of its shape."""
    meta = layer.metadata or {}
    if not meta.get("oct_volume") or "output" in meta:
        return []
    out = []
    for ly in viewer.layers:
        m = ly.metadata or {}
        if (type(ly).__name__ == "Labels" and m.get("annotation") not in (None, "layers")
                and "output" not in m and m.get("source") == meta.get("source")
                and tuple(ly.data.shape) == tuple(layer.data.shape)):
            out.append(ly)
    return out


def run_reference(viewer, layer, outcome, segmenter, k: int) -> dict | None:
    """:func:`reference_report` of swept P index ``k`` of the run ``outcome`` on ``layer``
    (segmentation by the rule in force, filtered maps as kept by ``segmenter``), or None when
    the layer has no annotation in the viewer."""
    anns = {str(ly.metadata["annotation"]): np.asarray(ly.data) > 0
            for ly in annotation_layers(viewer, layer)}
    if not anns:
        return None
    kept = segmenter.kept_maps(k)
    amap = np.stack([kept.map(i) for i in range(len(kept))])
    return reference_report(anns, amap, segmenter.segmentation(k), outcome.slices)


def reference_text(report: dict | None) -> str | None:
    """The status line's sentence for a :func:`run_reference` report."""
    return None if not report else "Against the file's annotation: " + reference_line(report)
