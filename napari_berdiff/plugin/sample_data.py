"""Sample data (offline, seeded): a synthetic BraTS-like case with a tumour and OCT B-scans with
drusen, from :mod:`napari_berdiff.core.synth.brain` / :mod:`...oct`.

Layers look exactly like the reader's for the same data written to disk (same names, geometry and
metadata), so the widget auto-picks the four modality layers.
"""

from __future__ import annotations

import numpy as np

from .reader import MODALITY_TITLES, volume_layer_kwargs
from ..core.io.readers import BRATS_MODALITIES

SAMPLE_SEED = 7
QUICK_SIZE = (240, 240, 40)  # 1 mm in-plane as in training, 40 thick axial slices


def brats_case_layers(seed: int = SAMPLE_SEED, size=None, name: str | None = None) -> list[tuple]:
    """Four modality image layers (FLAIR, T1, T1ce, T2) + the ground-truth tumour labels."""
    from ..core.synth.brain import BRATS_SHAPE, make_case

    size = tuple(size or BRATS_SHAPE)
    case = make_case(seed, "tumour", size=size)
    name = name or f"synth{seed:02d}"
    source = f"synthetic:make_case(seed={seed}, kind='tumour', size={list(size)})"
    out = []
    for mod in BRATS_MODALITIES:
        orient, kw = volume_layer_kwargs(size, case["affine"], None, source, modality=mod,
                                         case=name, synthetic=_json_meta(case["meta"]))
        kw.update(name=f"{name} {MODALITY_TITLES[mod]}", colormap="gray", visible=mod == "flair")
        out.append((np.ascontiguousarray(orient.to_layer(case[mod])), kw, "image"))
    orient, kw = volume_layer_kwargs(size, case["affine"], None, source, modality="seg", case=name)
    kw.update(name=f"{name} ground truth", opacity=0.5, visible=False)
    out.append((np.ascontiguousarray(orient.to_layer(case["seg"])), kw, "labels"))
    return out


def _json_meta(meta: dict) -> dict:
    keep = ("kind", "seed", "size", "spacing_mm", "label_slices", "anomaly_volume_ml")
    return {k: meta[k] for k in keep if k in meta}


def make_brats_sample() -> list[tuple]:
    """BraTS-like case, full size (240 x 240 x 155 at 1 mm)."""
    return brats_case_layers(SAMPLE_SEED)


def make_brats_quick_sample() -> list[tuple]:
    """BraTS-like case, quick: 40 axial slices (1 mm in-plane as in training, 3.9 mm apart)."""
    return brats_case_layers(SAMPLE_SEED, QUICK_SIZE)


def oct_layers(seeds=(SAMPLE_SEED,), patient: int | None = None, name: str | None = None) -> list[tuple]:
    """B-scans with drusen: one 2D layer for a single seed, else an (n, 496, 512) stack; plus the
    drusen ground truth as Labels."""
    from ..core.synth.oct import make_bscan

    scans = [make_bscan(int(s), True, patient=patient) for s in seeds]
    img = np.stack([s[0] for s in scans]) if len(scans) > 1 else scans[0][0]
    mask = np.stack([s[1] for s in scans]) if len(scans) > 1 else scans[0][1]
    labels = ("b-scan", "y", "x") if img.ndim == 3 else ("y", "x")
    name = name or ("synthetic OCT" if img.ndim == 2 else "synthetic OCT stack")
    meta = {"source": f"synthetic:make_bscan(seeds={list(seeds)}, drusen=True, patient={patient})",
            "modality": "oct",
            "drusen": [len(s[2].get("drusen", [])) for s in scans]}
    return [
        (img, {"name": name, "colormap": "gray", "contrast_limits": (0.0, 1.0),
               "axis_labels": labels, "metadata": meta}, "image"),
        (mask.astype(np.uint8), {"name": f"{name} drusen", "opacity": 0.5, "visible": False,
                                 "axis_labels": labels, "metadata": dict(meta, modality="seg")},
         "labels"),
    ]


def make_oct_sample() -> list[tuple]:
    """One OCT B-scan (496 x 512) with drusen."""
    return oct_layers()


def make_oct_stack_sample() -> list[tuple]:
    """Five B-scans of one eye with drusen, as a stack."""
    return oct_layers(seeds=range(SAMPLE_SEED, SAMPLE_SEED + 5), patient=SAMPLE_SEED)
