"""Turn raw datasets into prepared directories for training and evaluation.

:func:`prepare_brats` (BraTS case folders), :func:`prepare_oct` (OCT2017) and
:func:`prepare_folder` (any folder of healthy volumes or images) write a complete directory or
nothing (format: :mod:`src_training.prepare.prepared_format`, docs/design-notes.md).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from napari_berdiff.core.io.files import DataError, is_image, is_nifti
from napari_berdiff.core.io.intensity import HIGH_PERCENTILE, LOW_PERCENTILE
from napari_berdiff.core.io.readers import (BRATS_CASE_SUFFIXES, BRATS_MODALITIES, find_brats_case,
                                              load_brats_case, load_nifti)
from napari_berdiff.core.io.orientation import orientation_of, to_canonical
from src_training.prepare.common import (IMAGE_SCALING_DOC, NORMALISATION_DOC, assign_split,
                                         check_params, finish, image_job, split_writers,
                                         parallel_map, progress, skip_or_raise, split_by_group,
                                         volume_to_slices)
from src_training.prepare import defaults as D
from src_training.prepare.oct import prepare_oct
from src_training.prepare.prepared_format import atomic_output_dir, check_can_write

__all__ = ["prepare_brats", "prepare_oct", "prepare_folder", "find_brats_cases"]

def find_brats_cases(src_root: str | Path) -> list[tuple[str, Path]]:
    """All BraTS case folders under ``src_root`` (itself included), as sorted
    ``(case_id, folder)`` pairs; the case id is the folder name. A case folder holds a modality
    file in one of the namings of :func:`~napari_berdiff.core.io.readers.find_brats_case`
    (BraTS2020/2021 ``*_flair.nii.gz``, BraTS2023 ``*-t2f.nii.gz``, ...)."""
    root = Path(src_root)
    if not root.is_dir():
        raise DataError(root, f"BraTS source folder not found: {root}")
    cases: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        if any(f.lower().endswith(BRATS_CASE_SUFFIXES) for f in filenames):
            d = Path(dirpath)
            if d.name in cases:
                raise DataError(d, f"two BraTS case folders named {d.name}: "
                                   f"{cases[d.name]} and {d}")
            cases[d.name] = d
    if not cases:
        raise DataError(root, f"no BraTS case folders (with *_flair.nii.gz etc., or BraTS2023 "
                              f"*-t2f.nii.gz etc.) under {root}")
    return sorted(cases.items())


_RAW_LABELS_DOC = ("the BraTS labels as in the files: 1 necrotic core, 2 oedema, 4 enhancing "
                   "tumour (BraTS2020/2021) or 3 enhancing tumour (BraTS2023)")


def _brats_job(args: tuple) -> Any:
    folder, p = args
    try:
        ref = find_brats_case(folder, require_seg=True)["flair"]
        vol, seg, affine = load_brats_case(folder, nan_policy=p["nan_policy"], require_seg=True)
        ornt = orientation_of(affine)  # slices as detection sees them: RAS voxel order
        vol, seg = to_canonical(vol, ornt), to_canonical(seg, ornt)
        return volume_to_slices(vol, seg, drop_bottom=p["drop_bottom"], drop_top=p["drop_top"],
                                image_size=p["image_size"], low=p["low"], high=p["high"], ref=ref)
    except DataError as e:
        return e


def prepare_brats(src_root: str | Path, out_dir: str | Path, *,
                  split: Sequence[float] = D.BRATS.split, seed: int = D.SEED,
                  image_size: int = D.IMAGE_SIZE, drop_bottom: int = D.BRATS.drop_bottom,
                  drop_top: int = D.BRATS.drop_top, low: float = LOW_PERCENTILE,
                  high: float = HIGH_PERCENTILE, nan_policy: str = D.NAN_POLICY,
                  skip_bad: bool = False, overwrite: bool = False, workers: int = D.WORKERS,
                  show_progress: bool = True) -> dict[str, Any]:
    """Prepare BraTS case folders under ``src_root`` into ``out_dir``; returns the meta dict.

    Per case: the four modalities (channel order ``flair, t1, t1ce, t2``; BraTS2023's
    ``t2f, t1n, t1c, t2w``) must share one voxel grid; they are normalised per
    volume and channel (clip to the ``low``/``high`` percentiles of the nonzero voxels, scale to
    [0, 1], background 0); axial slices ``drop_bottom : Z - drop_top`` are kept; each slice is
    zero-padded (centred) to ``image_size`` when it fits (240 -> 256), else zero-padded to a
    square and resized (anti-aliased; labels nearest) down to ``image_size`` (e.g. 128).
    A slice is healthy when its label is all zero (at the original resolution); the binary
    labels are ``seg > 0`` (whole tumour: 1, 2 and 4, or BraTS2023's 3). Cases are split
    by patient with :func:`assign_split` (``split`` = train/val/test fractions, ``seed``); the
    training split keeps only healthy slices, val/test keep every slice with its labels.
    A missing or corrupt file raises :class:`DataError` naming it, unless ``skip_bad=True``
    (the case is then skipped and listed under ``skipped`` in meta.json and split.json).
    """
    check_params(image_size, low, high)
    out = Path(out_dir)
    check_can_write(out, overwrite)
    cases = find_brats_cases(src_root)
    ids = [c for c, _ in cases]
    splits = assign_split(ids, split, seed)
    which = {cid: s for s, lst in splits.items() for cid in lst}
    params = {"image_size": int(image_size), "drop_bottom": int(drop_bottom),
              "drop_top": int(drop_top), "low": float(low), "high": float(high),
              "nan_policy": nan_policy}
    skipped: list[dict] = []
    shapes: set[tuple] = set()
    transform = None
    extra = {s: {"cases": 0} for s in ("train", "val", "test")}
    extra["train"]["diseased_left_out"] = 0
    with atomic_output_dir(out, overwrite) as tmp, \
         split_writers(tmp, len(BRATS_MODALITIES), image_size, raw_labels=True) as writers:
        jobs = [(str(folder), params) for _, folder in cases]
        results = progress(parallel_map(_brats_job, jobs, workers), len(jobs), "BraTS cases",
                           show_progress)
        for cid, res in zip(ids, results):
            if isinstance(res, DataError):
                skip_or_raise(skipped, cid, res, skip_bad)
                continue
            shapes.add(tuple(res["in_plane_shape"]))
            transform = transform or res["transform"]
            _add_brats_case(writers, which[cid], cid, res, extra)
        bad = {d["case"] for d in skipped}
        split_info = {"dataset": "brats", "seed": int(seed), "fractions": list(split),
                      **{s: [c for c in lst if c not in bad] for s, lst in splits.items()},
                      "skipped": skipped, "params": params,
                      "source": str(Path(src_root).resolve())}
        meta = _brats_meta(src_root, params, shapes, transform, seed, split, skipped)
        meta = finish(tmp, writers, meta, split_info, extra)
    meta["out_dir"] = str(out)
    return meta


def _add_brats_case(writers, s: str, cid: str, res: dict, extra: dict) -> None:
    """Write one prepared case to its split: training keeps its healthy slices only."""
    extra[s]["cases"] += 1
    if s == "train":
        keep = res["healthy"]
        extra[s]["diseased_left_out"] += int((~keep).sum())
        writers[s].add(res["images"][keep], case_id=cid, healthy=True,
                       slice_index=res["slice_index"][keep], source=cid)
    else:
        raw = res["raw_labels"]
        writers[s].add(res["images"], labels=raw > 0, raw_labels=raw, case_id=cid,
                       slice_index=res["slice_index"], healthy=res["healthy"],
                       source=cid)


def _brats_meta(src_root, params: dict, shapes: set, transform, seed: int,
                split: Sequence[float], skipped: list[dict]) -> dict[str, Any]:
    """meta.json of a prepared BraTS directory (before :func:`finish` adds the counts)."""
    return {"dataset": "brats", "channels": list(BRATS_MODALITIES),
            "image_size": params["image_size"], "source": str(Path(src_root).resolve()),
            "normalisation": {"method": "percentile_clip_nonzero", "low": params["low"],
                              "high": params["high"], "doc": NORMALISATION_DOC},
            "geometry": {"slice_axis": 2, "voxel_order": "RAS (core.io.orientation.to_canonical)",
                         "slice_range": "drop_bottom : Z - drop_top",
                         "drop_bottom": params["drop_bottom"], "drop_top": params["drop_top"],
                         "in_plane_shapes": sorted(list(s) for s in shapes),
                         "transform": transform,
                         "rule": "zero-pad centred when it fits, else pad to square "
                                 "then resize (labels nearest)"},
            "labels": {"binary": "seg > 0 (whole tumour)", "raw": _RAW_LABELS_DOC,
                       "healthy": "slice label all zero"},
            "split": {"seed": int(seed), "fractions": list(split), "by": "patient"},
            "skipped": skipped}


def _folder_job(args: tuple) -> Any:
    path, p = args
    if is_image(path):
        return image_job((path, None, p["image_size"], p["keep_aspect"], p["channels"]))
    try:
        data, affine, _ = load_nifti(path, nan_policy=p["nan_policy"])
        ch = p["channels"]
        while data.ndim > 3 and data.shape[-1] == 1 and ch == 1:
            data = data[..., 0]
        if data.ndim == 3 and ch == 1:
            vol = data[None]
        elif data.ndim == 4 and data.shape[-1] == ch:
            vol = np.moveaxis(data, -1, 0)
        elif data.ndim == 2 and ch == 1:
            vol = data[None, ..., None]
        else:
            raise DataError(path, f"{Path(path).name} has shape {data.shape}: expected a 3D "
                                  f"volume{'' if ch == 1 else f' with {ch} channels last'}")
        vol = to_canonical(vol, orientation_of(affine))  # RAS voxel order, as detection
        res = volume_to_slices(vol, None, drop_bottom=p["drop_bottom"], drop_top=p["drop_top"],
                               image_size=p["image_size"], low=p["low"], high=p["high"],
                               ref=Path(path))
        return res["images"], None, res["transform"]
    except DataError as e:
        return e


def prepare_folder(src_root: str | Path, out_dir: str | Path, *, image_size: int,
                   channels: int = D.FOLDER.channels, keep_aspect: bool = False,
                   drop_bottom: int = D.FOLDER.drop_bottom, drop_top: int = D.FOLDER.drop_top,
                   low: float = LOW_PERCENTILE, high: float = HIGH_PERCENTILE,
                   val_fraction: float = D.FOLDER.val_fraction, seed: int = D.SEED,
                   nan_policy: str = D.NAN_POLICY, skip_bad: bool = False,
                   overwrite: bool = False, workers: int = D.WORKERS,
                   show_progress: bool = True) -> dict[str, Any]:
    """Prepare every NIfTI volume and 2D image under ``src_root`` (recursively) as healthy
    training data.

    NIfTI: 3D volumes (``channels=1``) or 4D with ``channels`` last; normalised per volume and
    channel like BraTS; axial slices ``drop_bottom : Z - drop_top``; zero-padded to
    ``image_size`` when they fit, else padded to square and resized. Images (PNG/JPEG/TIFF/BMP):
    read in [0, 1] (gray for ``channels=1``, RGB for ``channels=3``), resized to ``image_size``
    (``keep_aspect``: fit then zero-pad). ``val_fraction`` of the files (not slices) go to a
    healthy validation split; the test split is empty.
    """
    check_params(image_size, low, high)
    if channels < 1:
        raise ValueError(f"channels must be >= 1, got {channels}")
    out = Path(out_dir)
    check_can_write(out, overwrite)
    root = Path(src_root)
    files = _source_files(root)
    rel = [str(p.relative_to(root)) for p in files]
    val, _ = split_by_group(rel, rel, val_fraction, np.random.default_rng(seed))
    val = set(val)
    params = {"image_size": int(image_size), "channels": int(channels),
              "keep_aspect": bool(keep_aspect), "drop_bottom": int(drop_bottom),
              "drop_top": int(drop_top), "low": float(low), "high": float(high),
              "nan_policy": nan_policy}
    skipped: list[dict] = []
    transforms: dict[str, Any] = {}
    with atomic_output_dir(out, overwrite) as tmp, \
         split_writers(tmp, channels, image_size, raw_labels=False) as writers:
        jobs = [(str(p), params) for p in files]
        results = progress(parallel_map(_folder_job, jobs, workers), len(jobs), "files",
                           show_progress)
        for name, res in zip(rel, results):
            if isinstance(res, DataError):
                skip_or_raise(skipped, name, res, skip_bad)
                continue
            images, _, tf = res
            transforms.setdefault(str(tf["in_shape"]), tf)
            nslices = images.shape[0]
            s = "val" if name in val else "train"
            idx = np.arange(nslices) + (drop_bottom if is_nifti(name) else 0)
            writers[s].add(images, case_id=name, slice_index=idx, healthy=True, source=name)
        bad = {d["case"] for d in skipped}
        split_info = {"dataset": "folder", "seed": int(seed), "val_fraction": val_fraction,
                      "train": [r for r in rel if r not in val and r not in bad],
                      "val": [r for r in rel if r in val and r not in bad], "test": [],
                      "skipped": skipped, "params": params, "source": str(root.resolve())}
        meta = _folder_meta(root, params, transforms, skipped)
        meta = finish(tmp, writers, meta, split_info)
    meta["out_dir"] = str(out)
    return meta


def _source_files(root: Path) -> list[Path]:
    """The NIfTI and image files under ``root``, sorted; DataError when there are none."""
    if not root.is_dir():
        raise DataError(root, f"source folder not found: {root}")
    files = sorted(p for p in root.rglob("*") if p.is_file() and (is_nifti(p) or is_image(p)))
    if not files:
        raise DataError(root, f"no NIfTI or image files under {root}")
    return files


def _folder_meta(root: Path, params: dict, transforms: dict, skipped: list[dict]
                 ) -> dict[str, Any]:
    """meta.json of a prepared folder (before :func:`finish` adds the counts)."""
    channels = params["channels"]
    return {"dataset": "folder", "channels": [f"c{i}" for i in range(channels)]
            if channels > 1 else ["image"], "image_size": params["image_size"],
            "source": str(root.resolve()),
            "normalisation": {"method": "percentile_clip_nonzero (NIfTI); bit depth "
                                        "(images)", "low": params["low"], "high": params["high"],
                              "doc": NORMALISATION_DOC, "images": IMAGE_SCALING_DOC},
            "geometry": {"slice_axis": 2,
                         "voxel_order": "RAS (NIfTI; core.io.orientation.to_canonical)",
                         "drop_bottom": params["drop_bottom"],
                         "drop_top": params["drop_top"], "keep_aspect": params["keep_aspect"],
                         "transforms": list(transforms.values())[:20]},
            "skipped": skipped}
