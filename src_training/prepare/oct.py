"""OCT2017 (Kermany) preparation: NORMAL scans train the model, the other classes test it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from napari_berdiff.core.io.files import DataError, is_image, is_mask_folder
from src_training.prepare import defaults as D
from src_training.prepare.common import (IMAGE_SCALING_DOC, check_params, finish, image_job,
                                         parallel_map, progress, skip_or_raise, split_by_group,
                                         split_writers)
from src_training.prepare.prepared_format import atomic_output_dir, check_can_write

__all__ = ["prepare_oct", "find_oct_images", "OCT_CLASSES", "HEALTHY_CLASS"]

OCT_CLASSES = ("NORMAL", "CNV", "DME", "DRUSEN")
HEALTHY_CLASS = "NORMAL"
_PARENTS = ("train", "val", "test")
_KERMANY_NAME = re.compile(r"^(?P<cls>[A-Za-z]+)-(?P<pid>\d+)-(?P<n>\d+)$")

Item = tuple[Path, "Path | None"]


def _class_dirs(d: Path) -> dict[str, Path]:
    out = {}
    for c in sorted(d.iterdir()) if d.is_dir() else []:
        if c.is_dir() and not is_mask_folder(c) and any(
                is_image(f) for f in c.iterdir()):
            out[c.name.upper()] = c
    return out


def _items(class_dir: Path) -> list[Item]:
    masks = None
    for cand in (class_dir.parent / f"{class_dir.name}_masks",
                 class_dir.parent / f"{class_dir.name.upper()}_masks"):
        if cand.is_dir():
            masks = cand
            break
    out = []
    for f in sorted(class_dir.iterdir()):
        if f.is_file() and is_image(f):
            m = masks / f"{f.stem}.png" if masks is not None else None
            out.append((f, m if m is not None and m.is_file() else None))
    return out


def find_oct_images(src_root: str | Path) -> dict[str, dict[str, list[Item]]]:
    """``{parent: {CLASS: [(image, mask | None), ...]}}``.

    ``parent`` is ``""`` for the flat layout (``NORMAL/ CNV/ DME/ DRUSEN/``) or ``train`` /
    ``val`` / ``test`` for the Kermany layout; a single wrapping folder is looked through.
    Masks are same-stem PNGs in a sibling ``<CLASS>_masks/`` folder.
    """
    root = Path(src_root)
    if not root.is_dir():
        raise DataError(root, f"OCT source folder not found: {root}")
    for _ in range(2):
        parents = {c.name.lower(): c for c in sorted(root.iterdir())
                   if c.is_dir() and c.name.lower() in _PARENTS and _class_dirs(c)}
        if parents:
            layout = {k: _class_dirs(v) for k, v in parents.items()}
            break
        flat = _class_dirs(root)
        if flat:
            layout = {"": flat}
            break
        subdirs = [c for c in root.iterdir() if c.is_dir()]
        if len(subdirs) != 1:
            raise DataError(root, f"no OCT class folders (NORMAL/, CNV/, ...) under {root}")
        root = subdirs[0]
    else:
        raise DataError(Path(src_root), f"no OCT class folders (NORMAL/, ...) under {src_root}")
    return {p: {c: _items(d) for c, d in classes.items()} for p, classes in layout.items()}


def _ids(path: Path) -> tuple[str, int]:
    m = _KERMANY_NAME.match(path.stem)
    return (m["pid"], int(m["n"])) if m else (path.stem, 0)


def prepare_oct(src_root: str | Path, out_dir: str | Path, *, image_size: int = D.IMAGE_SIZE,
                keep_aspect: bool = False, val_fraction: float = D.OCT.val_fraction,
                seed: int = D.SEED, overwrite: bool = False,
                max_per_class: int | None = D.OCT.max_per_class,
                normal_test_fraction: float = D.OCT.normal_test_fraction, skip_bad: bool = False,
                workers: int = D.WORKERS, show_progress: bool = True) -> dict[str, Any]:
    """Prepare OCT2017 scans into ``out_dir`` (1 channel); returns the meta dict.

    Images are read in [0, 1] (gray) and resized to ``image_size`` x ``image_size``
    (anti-aliased; aspect ignored, as in the released code) or, with ``keep_aspect``, fitted and
    zero-padded (496x512 -> 248x256 -> 256x256). Masks (``<CLASS>_masks/<stem>.png``) follow
    with nearest-neighbour resizing; images without one get an all-zero label and
    ``has_mask=False``.

    Splits (random by patient where the Kermany names ``CLASS-PATIENT-N`` allow it, else by image;
    ``max_per_class`` caps each class of each source folder first):

    * flat layout: NORMAL -> ``val_fraction`` to val, a further ``normal_test_fraction`` of the
      rest to test, the rest to train; every other class -> ``val_fraction`` to val, rest to test.
    * Kermany layout: ``train/NORMAL`` as above (without the test share); ``val_fraction`` of each
      other ``train/`` class to val (the rest unused); ``val/`` -> val; ``test/`` -> test.

    An unreadable image or mask raises :class:`DataError` naming it, and nothing is written,
    unless ``skip_bad=True``: the image is then left out (with a warning) and listed under
    ``skipped`` in meta.json and split.json (``case`` = its path relative to ``src_root``).
    """
    check_params(image_size)
    _check_fractions(val_fraction=val_fraction, normal_test_fraction=normal_test_fraction)
    out = Path(out_dir)
    check_can_write(out, overwrite)
    layout = _training_layout(src_root)
    rng = np.random.default_rng(seed)
    assign, unused = _assign(layout, rng, max_per_class, val_fraction, normal_test_fraction)
    base = Path(src_root)
    params = {"image_size": int(image_size), "keep_aspect": bool(keep_aspect),
              "val_fraction": float(val_fraction),
              "normal_test_fraction": float(normal_test_fraction),
              "max_per_class": max_per_class, "seed": int(seed)}
    with atomic_output_dir(out, overwrite) as tmp, \
         split_writers(tmp, 1, image_size, raw_labels=False) as writers:
        per_class, skipped, transforms = _write_images(
            writers, assign, base, image_size, keep_aspect, workers, show_progress, skip_bad)
        extra = {s: {"classes": per_class[s]} for s in per_class}
        extra["train"]["diseased_unused"] = unused
        meta = finish(tmp, writers, _oct_meta(layout, base, params, transforms, skipped),
                      _split_info(layout, assign, base, params, skipped), extra)
    meta["out_dir"] = str(out)
    return meta



def _check_fractions(**fractions: float) -> None:
    for name, f in fractions.items():
        if not 0.0 <= f < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {f}")


def _training_layout(src_root) -> dict[str, dict[str, list[Item]]]:
    """:func:`find_oct_images` of ``src_root``; a DataError when no healthy class trains."""
    layout = find_oct_images(src_root)
    if not any(HEALTHY_CLASS in classes for p, classes in layout.items() if p in ("", "train")):
        raise DataError(Path(src_root), f"no {HEALTHY_CLASS}/ folder of training images under "
                                        f"{src_root}")
    return layout


def _split_info(layout, assign: "Assignment", base: Path, params: dict,
                skipped: list[dict]) -> dict[str, Any]:
    """split.json: the images of each split (relative to ``base``) but the skipped ones."""
    bad = {d["case"] for d in skipped}
    return {"dataset": "oct", "seed": params["seed"], "params": params,
            "source": str(base.resolve()),
            "layout": "flat" if "" in layout else "kermany",
            **{s: [r for r in (str(t[1].relative_to(base)) for t in assign[s])
                   if r not in bad] for s in assign},
            "skipped": skipped}


def _oct_meta(layout, base: Path, params: dict, transforms: dict,
              skipped: list[dict]) -> dict[str, Any]:
    """meta.json of an OCT preparation (before :func:`finish` adds the counts)."""
    return {"dataset": "oct", "channels": ["oct"], "image_size": params["image_size"],
            "source": str(base.resolve()),
            "normalisation": {"method": "bit depth", "doc": IMAGE_SCALING_DOC},
            "geometry": {"keep_aspect": params["keep_aspect"],
                         "transforms": list(transforms.values())[:20]},
            "labels": {"binary": "mask > 0 (from <CLASS>_masks/<stem>.png)",
                       "healthy": f"class {HEALTHY_CLASS}"},
            "classes": sorted({c for cl in layout.values() for c in cl}),
            "split": {"seed": params["seed"], "by": "patient", **params},
            "skipped": skipped}

Assignment = dict[str, list[tuple[str, Path, "Path | None"]]]


def _assign(layout, rng, max_per_class, val_fraction: float,
            normal_test_fraction: float) -> tuple[Assignment, int]:
    """The split of every image (see :func:`prepare_oct`): ``{split: [(class, image, mask)]}``
    and how many diseased training images go unused (Kermany layout)."""
    assign: Assignment = {"train": [], "val": [], "test": []}
    unused = 0
    for parent in sorted(layout):
        for cls in sorted(layout[parent]):
            items = layout[parent][cls]
            if max_per_class is not None and len(items) > max_per_class:
                pick = np.sort(rng.permutation(len(items))[:max_per_class])
                items = [items[i] for i in pick]
            tagged = [(cls, img, mask) for img, mask in items]
            if parent in ("val", "test"):
                assign[parent] += tagged
                continue
            val, rest = split_by_group(tagged, [_ids(t[1])[0] for t in tagged], val_fraction, rng)
            assign["val"] += val
            if cls == HEALTHY_CLASS:
                if parent == "" and normal_test_fraction > 0:
                    test, rest = split_by_group(rest, [_ids(t[1])[0] for t in rest],
                                                normal_test_fraction, rng)
                    assign["test"] += test
                assign["train"] += rest
            elif parent == "":
                assign["test"] += rest
            else:
                unused += len(rest)
    return assign, unused


def _write_images(writers, assign: Assignment, base: Path, image_size: int, keep_aspect: bool,
                  workers: int, show_progress: bool, skip_bad: bool):
    """Read, resize and write every assigned image (in parallel); returns the images per split
    and class, the skipped ones and the distinct resize transforms."""
    per_class: dict[str, dict[str, int]] = {s: {} for s in assign}
    skipped: list[dict] = []
    transforms: dict[str, Any] = {}
    order = [(s, t) for s in ("train", "val", "test") for t in assign[s]]
    jobs = [(str(img), None if mask is None else str(mask), int(image_size), keep_aspect, 1)
            for _, (_, img, mask) in order]
    results = progress(parallel_map(image_job, jobs, workers), len(jobs), "OCT images",
                       show_progress)
    for (s, (cls, img, _mask)), res in zip(order, results):
        if isinstance(res, DataError):
            skip_or_raise(skipped, str(img.relative_to(base)), res, skip_bad)
            continue
        images, m, tf = res
        transforms.setdefault(str(tf["in_shape"]), tf)
        pid, n = _ids(img)
        if s == "train":
            writers[s].add(images, case_id=pid, slice_index=n, healthy=True,
                           class_name=cls, source=str(img.relative_to(base)))
        else:
            writers[s].add(images, labels=m, case_id=pid, slice_index=n,
                           healthy=cls == HEALTHY_CLASS, class_name=cls,
                           has_mask=m is not None, source=str(img.relative_to(base)))
        per_class[s][cls] = per_class[s].get(cls, 0) + 1
    return per_class, skipped, transforms
