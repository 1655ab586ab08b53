"""On-disk format of a prepared dataset directory (written by :mod:`src_training.prepare`).

Plain ``.npy`` files (memory-mappable, images as uint8 ``round(255 * x)``) and JSON; the file
list is in docs/design-notes.md ("Prepared dataset format").
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from napari_berdiff.core.io.atomic import atomic_dir, check_can_write  # noqa: F401 (re-exported)

FORMAT_NAME = "napari-berdiff-prepared"
FORMAT_VERSION = 1
STORAGE = {"dtype": "uint8", "scale": 255, "decode": "x = stored / 255"}
SPLITS = ("train", "val", "test")
INDEX_FIELDS = {"case_id": str, "slice_index": np.int32, "healthy": bool,
                "class_name": str, "has_mask": bool, "source": str}


def split_files(split: str) -> dict[str, str]:
    """File names of a split: ``images``, ``labels``, ``raw_labels`` (not train), ``index``."""
    if split == "train":
        return {"images": "train_healthy.npy", "index": "train_healthy_index.npz"}
    if split in ("val", "test"):
        return {k: f"{split}_{k}.npy" for k in ("images", "labels", "raw_labels")} | {
            "index": f"{split}_index.npz"}
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def quantise(x: np.ndarray) -> np.ndarray:
    """float in [0, 1] -> uint8 (``round(255 x)``, clipped)."""
    x = np.asarray(x, dtype=np.float32)
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def dequantise(a: np.ndarray) -> np.ndarray:
    """Stored images -> float32 in [0, 1]."""
    a = np.asarray(a)
    if a.dtype == np.uint8:
        return a.astype(np.float32) * np.float32(1.0 / 255.0)
    return a.astype(np.float32)


# ----------------------------------------------------------------------------- writing


class _NpyAppender:
    """Append ``(n, *item_shape)`` blocks to a raw file; :meth:`finish` turns it into a ``.npy``."""

    def __init__(self, path: Path, item_shape: tuple[int, ...], dtype=np.uint8):
        self.path = Path(path)
        self.item_shape = tuple(int(s) for s in item_shape)
        self.dtype = np.dtype(dtype)
        self.count = 0
        self._raw_path = self.path.with_name(self.path.name + ".part")
        self._raw = open(self._raw_path, "wb")

    def append(self, block: np.ndarray) -> None:
        block = np.ascontiguousarray(block, dtype=self.dtype)
        if tuple(block.shape[1:]) != self.item_shape:
            raise ValueError(f"{self.path.name}: expected items of shape {self.item_shape}, "
                             f"got a block of shape {block.shape}")
        self._raw.write(block.tobytes())
        self.count += block.shape[0]

    def finish(self) -> None:
        self._raw.close()
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                  "shape": (self.count,) + self.item_shape}
        with open(self.path, "wb") as out, open(self._raw_path, "rb") as raw:
            np.lib.format.write_array_header_1_0(out, header)
            shutil.copyfileobj(raw, out, length=16 << 20)
        self._raw_path.unlink()

    def close(self) -> None:
        if not self._raw.closed:
            self._raw.close()


class SplitWriter:
    """Streams the samples of one split into a prepared directory (see the module docstring)."""

    def __init__(self, root: Path, split: str, channels: int, size: int, *,
                 raw_labels: bool = False):
        self.root, self.split = Path(root), split
        self.files = split_files(split)
        self.with_labels = split != "train"
        self.with_raw = self.with_labels and raw_labels
        self._images = _NpyAppender(self.root / self.files["images"], (channels, size, size))
        self._labels = (_NpyAppender(self.root / self.files["labels"], (size, size))
                        if self.with_labels else None)
        self._raw = (_NpyAppender(self.root / self.files["raw_labels"], (size, size))
                     if self.with_raw else None)
        self._index: dict[str, list] = {k: [] for k in INDEX_FIELDS}
        self.healthy = 0
        self.diseased = 0

    def add(self, images_u8: np.ndarray, *, case_id, slice_index, healthy,
            labels: np.ndarray | None = None, raw_labels: np.ndarray | None = None,
            class_name=None, has_mask=None, source=None) -> None:
        """Add ``n`` samples: ``images_u8`` (n, C, S, S) uint8; per-sample fields broadcast."""
        n = images_u8.shape[0]
        if n == 0:
            return
        self._images.append(images_u8)
        if self._labels is not None:
            lab = np.zeros((n,) + self._labels.item_shape, np.uint8) if labels is None else labels
            self._labels.append((np.asarray(lab) > 0).astype(np.uint8))
        if self._raw is not None:
            raw = (np.zeros((n,) + self._raw.item_shape, np.uint8) if raw_labels is None
                   else raw_labels)
            self._raw.append(raw)
        fields = {"case_id": case_id, "slice_index": slice_index, "healthy": healthy,
                  "class_name": "" if class_name is None else class_name,
                  "has_mask": False if has_mask is None else has_mask,
                  "source": "" if source is None else source}
        for k, v in fields.items():
            vals = np.broadcast_to(np.asarray(v, dtype=INDEX_FIELDS[k]), (n,))
            self._index[k].extend(vals.tolist())
        h = int(np.count_nonzero(np.broadcast_to(np.asarray(healthy, bool), (n,))))
        self.healthy += h
        self.diseased += n - h

    @property
    def count(self) -> int:
        return self._images.count

    def finish(self) -> dict[str, Any]:
        for app in (self._images, self._labels, self._raw):
            if app is not None:
                app.finish()
        arrays = {k: np.asarray(v, dtype=INDEX_FIELDS[k]) if v else
                  np.zeros(0, dtype=INDEX_FIELDS[k]) for k, v in self._index.items()}
        np.savez(self.root / self.files["index"], **arrays)
        files = {k: v for k, v in self.files.items()
                 if k in ("images", "index") or (k == "labels" and self.with_labels)
                 or (k == "raw_labels" and self.with_raw)}
        return {"count": self.count, "healthy": self.healthy, "diseased": self.diseased,
                "files": files}

    def abort(self) -> None:
        for app in (self._images, self._labels, self._raw):
            if app is not None:
                app.close()


def write_json(path: Path, obj: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=False, default=_json_default)
        f.write("\n")


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, (np.ndarray,)):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def atomic_output_dir(out_dir: str | Path, overwrite: bool = False):
    """Write a prepared directory atomically (see :func:`napari_berdiff.core.io.atomic.atomic_dir`)."""
    return atomic_dir(out_dir, overwrite)


# ----------------------------------------------------------------------------- reading


def read_meta(root: str | Path) -> dict[str, Any]:
    root = Path(root)
    p = root / "meta.json"
    if not p.is_file():
        what = ("not found" if not root.exists() else
                "is not a prepared dataset directory (no meta.json)" if root.is_dir() else
                "is a file, not a prepared dataset directory")
        raise FileNotFoundError(f"{root} {what}; make one first with `berdiff prepare-brats`, "
                                "`berdiff prepare-oct` or `berdiff prepare-folder`")
    with open(p, encoding="utf-8") as f:
        meta = json.load(f)
    if meta.get("format") != FORMAT_NAME:
        raise ValueError(f"{p} is not a {FORMAT_NAME} meta.json")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise ValueError(f"{p} has format version {meta['format_version']}; this code reads "
                         f"up to {FORMAT_VERSION}")
    return meta


def open_split(root: str | Path, split: str, mmap: bool = True) -> dict[str, Any]:
    """The stored arrays of a split (images still uint8; ``None`` for absent label files)."""
    root = Path(root)
    mode = "r" if mmap else None
    out: dict[str, Any] = {}
    for key, name in split_files(split).items():
        p = root / name
        if key == "index":
            with np.load(p, allow_pickle=False) as z:
                out.update({k: z[k] for k in z.files})
        else:
            out[key] = np.load(p, mmap_mode=mode, allow_pickle=False) if p.is_file() else None
    return out
