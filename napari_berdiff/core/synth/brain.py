"""Synthetic BraTS-like brain MR cases built from real anatomy (the MNI152 templates).

Each case has FLAIR, T1, T1ce, T2, a BraTS-convention label volume and a 1 mm RAS affine. Kinds:
``healthy``, ``tumour``, ``cavity``, ``ventricle``; the same seed gives the same subject for every
kind. Details and geometry: docs/design-notes.md ("Generated data").
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ._brain_anatomy import (
    BRATS_SHAPE,
    CHANNELS,
    MNI_ORIGIN,
    Geometry,
    finish_channels,
    interpolate_tissue,
    source_coords,
    subject_params,
    synthesise_contrasts,
)
from ._brain_lesions import apply_push, healthy_subbox, lesion_box, plan_lesion, render_lesion
from ..io.atomic import atomic_dir, atomic_write_bytes

KINDS = ("healthy", "tumour", "cavity", "ventricle")
_ALIASES = {"tumor": "tumour", "normal": "healthy", "resection": "cavity"}
LABELS = (0, 1, 2, 4)

__all__ = ["CHANNELS", "KINDS", "BRATS_SHAPE", "make_case", "write_brats_case",
           "write_brats_dataset", "case_folder_name"]


def _check_kind(kind: str) -> str:
    k = _ALIASES.get(str(kind).lower(), str(kind).lower())
    if k not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return k


def make_case(seed: int, kind: str = "tumour", size: Sequence[int] = BRATS_SHAPE) -> dict:
    """One synthetic subject.

    Returns a dict with ``flair``, ``t1``, ``t1ce``, ``t2`` (float32, ``size``, zero outside the brain),
    ``seg`` (uint8, labels in {0, 1, 2, 4}), ``affine`` (4x4 float64, RAS, world = MNI-like mm) and
    ``meta`` (JSON-friendly: kind, seed, size, spacing, lesion plan and label volumes in ml).
    """
    kind = _check_kind(kind)
    seed = int(seed)
    geom = Geometry(tuple(size))
    rng_subject = np.random.default_rng([seed, 0])
    rng_lesion = np.random.default_rng([seed, 1])
    rng_noise = np.random.default_rng([seed, 2])

    params = subject_params(rng_subject)
    coords, bbox, m = source_coords(geom, params, rng_subject)
    plan = box = offsets = healthy = src_x = None
    if kind != "healthy":
        plan = plan_lesion(kind, rng_lesion, geom, coords, bbox)
        box, offsets = lesion_box(plan, geom, bbox)
        if kind == "ventricle":
            healthy = healthy_subbox(coords, box)
        apply_push(plan, coords, box, offsets, m)
        src_x = coords[0][box] + np.float32(MNI_ORIGIN[0])
    tissue = interpolate_tissue(coords)
    del coords
    brain = tissue["mask"] >= 0.5
    rel = synthesise_contrasts(tissue, params)
    labels_bbox = np.zeros(brain.shape, np.uint8)
    if plan is not None:
        labels_bbox[box] = render_lesion(plan, rng_lesion, rel, tissue, brain, box, offsets, geom,
                                         params, healthy, src_x)
        labels_bbox[~brain] = 0
    vols = finish_channels(rel, brain, params, rng_noise, geom.spacing)

    case: dict = {}
    for i, ch in enumerate(CHANNELS):
        full = np.zeros(geom.shape, np.float32)
        full[bbox] = vols[i]
        case[ch] = full
    seg = np.zeros(geom.shape, np.uint8)
    seg[bbox] = labels_bbox
    case["seg"] = seg
    case["affine"] = geom.affine

    voxel_ml = float(np.prod(geom.spacing)) / 1000.0
    counts = np.bincount(seg.ravel(), minlength=5)
    zs = np.flatnonzero(seg.any(axis=(0, 1)))
    meta = {
        "kind": kind,
        "seed": seed,
        "size": list(geom.shape),
        "spacing_mm": geom.spacing.tolist(),
        "channels": list(CHANNELS),
        "labels": {"1": "necrotic / non-enhancing core", "2": "oedema (or cavity / enlarged ventricle)",
                   "4": "enhancing tumour"},
        "label_volume_ml": {str(k): float(counts[k] * voxel_ml) for k in (1, 2, 4)},
        "anomaly_volume_ml": float(counts[1:].sum() * voxel_ml),
        "brain_volume_ml": float(brain.sum() * voxel_ml),
        "label_slices": [int(zs[0]), int(zs[-1])] if zs.size else None,
        "lesion": plan,
        "subject": params,
        "generator": "napari_berdiff.core.synth.brain",
    }
    if plan is not None:
        meta["centre_mm"] = plan["centre_mm"]
        meta["centre_voxel"] = plan["centre_voxel"]
    case["meta"] = meta
    return case


def case_folder_name(case_id: int | str) -> str:
    """``7`` / ``"007"`` -> ``BraTS20_Training_007``; a full ``BraTS20_...`` name is kept."""
    s = str(case_id)
    if s.isdigit():
        return f"BraTS20_Training_{int(s):03d}"
    if re.fullmatch(r"BraTS20_\w+_\d+", s):
        return s
    raise ValueError(f"case_id must be a number or a BraTS20_<Split>_NNN name, got {case_id!r}")


def write_brats_case(case: dict, root: str | Path, case_id: int | str, overwrite: bool = False,
                     dtype: str = "int16") -> Path:
    """Write one case in the BraTS2020 layout; returns the case folder.

    ``root/BraTS20_Training_NNN/BraTS20_Training_NNN_{flair,t1,t1ce,t2,seg}.nii.gz`` (images as
    ``dtype``, int16 by default like BraTS; seg as uint8) plus ``..._synth.json`` with the metadata.
    The folder is written under a temporary name and renamed at the end, so an interrupted run
    leaves no half case; an existing folder raises FileExistsError unless ``overwrite``.
    """
    import nibabel as nib

    name = case_folder_name(case_id)
    final = Path(root) / name
    with atomic_dir(final, overwrite=overwrite) as tmp:
        for key in CHANNELS + ("seg",):
            arr = case[key]
            if key == "seg":
                data = arr.astype(np.uint8)
            elif np.dtype(dtype).kind in "iu":
                info = np.iinfo(dtype)
                data = np.clip(np.rint(arr), info.min, info.max).astype(dtype)
            else:
                data = arr.astype(dtype)
            img = nib.Nifti1Image(data, case["affine"])
            img.header.set_xyzt_units("mm", "sec")
            img.header.set_qform(case["affine"], code=1)
            img.header.set_sform(case["affine"], code=1)
            nib.save(img, str(tmp / f"{name}_{key}.nii.gz"))
        text = json.dumps(case["meta"], indent=1)
        (tmp / f"{name}_synth.json").write_text(text)
    return final


def write_brats_dataset(root: str | Path, n_healthy: int = 0, n_tumour: int = 0, n_cavity: int = 0,
                        seed: int = 0, n_ventricle: int = 0, size: Sequence[int] = BRATS_SHAPE,
                        overwrite: bool = False, start_id: int = 1,
                        progress: Callable[[int, int], None] | None = None) -> list[dict]:
    """Write a BraTS2020-style folder of synthetic cases; returns the manifest rows.

    Kinds are shuffled (seeded) over the ids ``start_id, start_id+1, ...``; each case gets its own seed
    derived from ``seed`` and its index. All target folders are checked before anything is written.
    ``root/synth_manifest.json`` lists id, folder, kind, case seed and label volumes.
    """
    root = Path(root)
    kinds = (["healthy"] * n_healthy + ["tumour"] * n_tumour + ["cavity"] * n_cavity
             + ["ventricle"] * n_ventricle)
    rng = np.random.default_rng([int(seed), 7])
    kinds = [kinds[i] for i in rng.permutation(len(kinds))]
    ids = [start_id + i for i in range(len(kinds))]
    if not overwrite:
        clash = [case_folder_name(i) for i in ids if (root / case_folder_name(i)).exists()]
        if clash:
            raise FileExistsError(f"{len(clash)} case folder(s) already exist in {root}, e.g. "
                                  f"{clash[0]} (pass overwrite=True to replace them)")
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for n, (cid, kind) in enumerate(zip(ids, kinds)):
        case_seed = int(np.random.SeedSequence([int(seed), n]).generate_state(1)[0])
        case = make_case(case_seed, kind, size=size)
        folder = write_brats_case(case, root, cid, overwrite=overwrite)
        meta = case["meta"]
        rows.append({"id": cid, "folder": folder.name, "kind": kind, "seed": case_seed,
                     "grade": (meta["lesion"] or {}).get("grade"),
                     "anomaly_volume_ml": meta["anomaly_volume_ml"],
                     "label_slices": meta["label_slices"]})
        if progress is not None:
            progress(n + 1, len(kinds))
    atomic_write_bytes(root / "synth_manifest.json",
                       json.dumps({"seed": int(seed), "size": list(size), "cases": rows},
                                  indent=1).encode())
    return rows
