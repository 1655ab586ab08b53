"""Helpers shared by the dataset-preparation entry points (:mod:`src_training.prepare`)."""

from __future__ import annotations

import contextlib
import datetime as _dt
import sys
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from napari_berdiff.core.io.files import DataError
from napari_berdiff.core.io.geometry import plan_fit_square, plan_resize
from napari_berdiff.core.io.images import load_image_2d
from napari_berdiff.core.io.intensity import normalize_volume
from src_training.prepare.prepared_format import (FORMAT_NAME, FORMAT_VERSION, STORAGE, SplitWriter,
                                          quantise, write_json)

NORMALISATION_DOC = ("per volume and channel: clip to the [low, high] percentiles of the nonzero "
                     "(foreground) voxels, scale linearly to [0, 1]; background (0) stays 0")
IMAGE_SCALING_DOC = ("integers / (2**b - 1) for the smallest b of 8, 10, 12, 14, 16 bits that "
                     "holds the image's maximum (8-bit: / 255); floats in [0, 1] kept, others "
                     "min-max; RGB -> gray (ITU-R 709)")


def assign_split(ids: Sequence[str], fractions: Sequence[float], seed: int) -> dict[str, list[str]]:
    """Deterministic split of ids into train/val/test by ``fractions`` (summing to 1).

    Counts use the largest remainder; every split with a positive fraction gets at least one id
    when there are enough ids. The ids are sorted first, so the result depends only on the set of
    ids and the seed; each list is returned sorted.
    """
    fr = np.asarray(fractions, dtype=np.float64)
    if fr.shape != (3,) or np.any(fr < 0) or abs(fr.sum() - 1.0) > 1e-6:
        raise ValueError("split must be three non-negative fractions summing to 1, "
                         f"got {fractions}")
    ids = sorted(ids)
    n = len(ids)
    raw = fr * n
    counts = np.floor(raw).astype(int)
    for k in np.argsort(-(raw - counts), kind="stable")[: n - counts.sum()]:
        counts[k] += 1
    for k in range(3):
        if fr[k] > 0 and counts[k] == 0 and counts.max() > 1:
            counts[int(np.argmax(counts))] -= 1
            counts[k] += 1
    perm = np.random.default_rng(seed).permutation(n)
    shuffled = [ids[i] for i in perm]
    a, b = int(counts[0]), int(counts[0] + counts[1])
    return {"train": sorted(shuffled[:a]), "val": sorted(shuffled[a:b]),
            "test": sorted(shuffled[b:])}


def split_by_group(items: Sequence[Any], groups: Sequence[str], fraction: float,
                   rng: np.random.Generator) -> tuple[list[Any], list[Any]]:
    """Pick whole groups (e.g. patients) at random until ``fraction`` of the items is reached
    (at least one item when ``fraction > 0`` and there are two or more). Returns (picked, rest)."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    target = int(round(fraction * len(items)))
    if fraction > 0 and target == 0 and len(items) >= 2:
        target = 1
    uniq = sorted(set(groups))
    sizes = {g: 0 for g in uniq}
    for g in groups:
        sizes[g] += 1
    chosen, count = set(), 0
    for i in rng.permutation(len(uniq)):
        if count >= target:
            break
        chosen.add(uniq[i])
        count += sizes[uniq[i]]
    picked = [it for it, g in zip(items, groups) if g in chosen]
    rest = [it for it, g in zip(items, groups) if g not in chosen]
    return picked, rest


def parallel_map(fn: Callable, items: Sequence, workers: int = 0) -> Iterator:
    """``map(fn, items)`` in order; in ``workers`` processes when ``workers > 0``."""
    if workers and workers > 0 and len(items) > 1:
        ex = ProcessPoolExecutor(max_workers=workers)
        try:
            yield from ex.map(fn, items, chunksize=max(1, min(16, len(items) // (4 * workers))))
        finally:  # on an early stop (an error), do not wait for the jobs not yet started
            ex.shutdown(wait=True, cancel_futures=True)
    else:
        yield from map(fn, items)


def progress(it: Iterable, total: int, desc: str, enabled: bool) -> Iterable:
    if not enabled:
        return it
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        return it
    return tqdm(it, total=total, desc=desc, file=sys.stderr, dynamic_ncols=True)


def volume_to_slices(vol: np.ndarray, seg: np.ndarray | None, *, drop_bottom: int, drop_top: int,
                     image_size: int, low: float, high: float, ref: Path) -> dict[str, Any]:
    """Normalise a ``(C, X, Y, Z)`` volume per channel, keep axial slices
    ``drop_bottom : Z - drop_top``, bring them to ``image_size`` with
    :func:`plan_fit_square` (zero-pad when they fit, else pad to square then resize).

    Returns ``images`` (n, C, S, S) uint8, ``raw_labels`` (n, S, S) uint8 or None (nearest
    neighbour), ``healthy`` (n,) bool (from the labels at the original resolution; all True
    without labels), ``slice_index`` (n,) and ``transform`` (dict).
    """
    if drop_bottom < 0 or drop_top < 0:
        raise ValueError("drop_bottom and drop_top must be >= 0")
    z = vol.shape[-1]
    z0, z1 = drop_bottom, z - drop_top
    if z1 <= z0:
        raise DataError(ref, f"{ref.name} has {z} axial slices; dropping {drop_bottom} at the "
                             f"bottom and {drop_top} at the top leaves none")
    norm = normalize_volume(vol, low, high)[..., z0:z1]
    tf = plan_fit_square(vol.shape[1:3], image_size)
    images = np.moveaxis(norm, -1, 0)  # (n, C, X, Y)
    out = {"slice_index": np.arange(z0, z1, dtype=np.int32), "transform": tf.to_dict(),
           "in_plane_shape": [int(s) for s in vol.shape[1:3]]}
    out["images"] = quantise(tf.apply(images, order=1))
    if seg is None:
        out["raw_labels"] = None
        out["healthy"] = np.ones(z1 - z0, dtype=bool)
    else:
        labs = np.moveaxis(seg[..., z0:z1], -1, 0)
        out["healthy"] = labs.reshape(labs.shape[0], -1).max(axis=1) == 0
        out["raw_labels"] = tf.apply(labs.astype(np.uint8), order=0)
    return out


def image_job(args: tuple) -> Any:
    """Worker: ``(path, mask_path | None, image_size, keep_aspect, channels)`` ->
    ``(images (1, C, S, S) uint8, mask (1, S, S) uint8 | None)``, or the :class:`DataError`."""
    path, mask_path, size, keep_aspect, channels = args
    try:
        img = load_image_2d(path, gray=channels == 1)
        if channels == 1:
            img = img[None]
        elif channels == 3:
            img = np.moveaxis(img, -1, 0) if img.ndim == 3 else np.repeat(img[None], 3, axis=0)
        else:
            raise DataError(path, f"cannot make {channels} channels from a 2D image")
        tf = plan_resize(img.shape[-2:], size, keep_aspect=keep_aspect)
        images = quantise(np.clip(tf.apply(img, order=1), 0.0, 1.0))[None]
        mask = None
        if mask_path is not None:
            m = load_image_2d(mask_path)
            if m.shape != img.shape[-2:]:
                raise DataError(mask_path, f"mask {Path(mask_path).name} has shape {m.shape}, "
                                           f"its image {Path(path).name} has {img.shape[-2:]}")
            mask = tf.apply((m > 0).astype(np.uint8), order=0)[None]
        return images, mask, tf.to_dict()
    except DataError as e:
        return e


def skip_or_raise(skipped: list, name: str, err: DataError, skip_bad: bool) -> None:
    """Raise ``err``, or with ``skip_bad`` record it in ``skipped`` (``case`` = ``name``,
    ``file``, ``error``) and warn (``skipping NAME: ...``)."""
    if not skip_bad:  # say how to go on without the file (a large data set has a few bad ones)
        raise DataError(err.path, f"{err.reason}; pass --skip-bad to leave such inputs out and "
                                  "list them at the end") from err
    skipped.append({"case": name, "file": str(err.path), "error": str(err)})
    warnings.warn(f"skipping {name}: {err}", stacklevel=3)


def check_params(image_size: int, low: float = 0.0, high: float = 100.0) -> None:
    if int(image_size) < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    if not 0.0 <= low < high <= 100.0:
        raise ValueError(f"need 0 <= low < high <= 100, got low={low}, high={high}")


@contextlib.contextmanager
def split_writers(root: Path, channels: int, size: int, raw_labels: bool
                  ) -> Iterator[dict[str, SplitWriter]]:
    """Writers for the train/val/test splits; on any failure inside the block they are aborted
    (their partial files removed) before the exception propagates."""
    writers = {s: SplitWriter(root, s, channels, size, raw_labels=raw_labels)
               for s in ("train", "val", "test")}
    try:
        yield writers
    except BaseException:
        for w in writers.values():
            w.abort()
        raise


def finish(root: Path, writers: dict[str, SplitWriter], meta: dict[str, Any],
           split_info: dict[str, Any],
           extra_counts: dict[str, dict] | None = None) -> dict[str, Any]:
    """Close the split files and write ``meta.json`` and ``split.json``; returns the meta dict.

    ``meta["counts"][split]`` gets ``count``/``healthy``/``diseased`` of what was written, plus
    any ``extra_counts[split]`` (e.g. cases, diseased training slices left out).
    """
    counts, files = {}, {}
    for name, w in writers.items():
        info = w.finish()
        counts[name] = {k: info[k] for k in ("count", "healthy", "diseased")}
        counts[name].update((extra_counts or {}).get(name, {}))
        files[name] = info["files"]
    meta = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **meta,
            "storage": STORAGE, "counts": counts, "files": files,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    write_json(root / "split.json", split_info)
    write_json(root / "meta.json", meta)
    return meta


