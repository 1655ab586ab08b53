"""napari writers: image layers (anomaly map, reconstruction, mask evolution) and Labels
(segmentation) to NIfTI, in the source volume's voxel order and with its affine.

A layer that carries an ``orientation`` and ``affine`` in its metadata (layers from our reader, the
sample data and the widget's outputs) is written back in the source's voxel order with exactly the
source affine; any other layer gets the affine of its own napari transform (``scale``,
``translate``, ``rotate``, ``shear``, ``affine``; world = LPS (z, y, x) as in
:mod:`napari_berdiff.plugin.layers`). Axes in front of the last three (e.g. the mask evolution's step
axis) become the NIfTI 4th dimension. Provenance from the widget goes into a JSON file beside the
image and a short summary into the header's ``descrip``.

:func:`write_layers` saves several image / Labels layers at once (File > Save Selected Layers with,
e.g., an anomaly map and its segmentation): one NIfTI per layer, named after the layer, in a folder,
each written exactly as the single-layer writers write it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .layers import Orientation, nifti_affine_from_layer
from ..core.io.atomic import atomic_dir


def write_image(path: str, data: Any, meta: dict) -> list[str]:
    return _write(path, np.asarray(data), meta, labels=False)


def write_labels(path: str, data: Any, meta: dict) -> list[str]:
    return _write(path, np.asarray(data), meta, labels=True)


def write_layers(path: str, layer_data: list[tuple[Any, dict, str]]) -> list[str]:
    """Write image and Labels layers as one NIfTI each (plus the provenance JSON of those that
    have one) into the folder ``path``; return the written paths.

    ``path`` names the folder; a ``.nii.gz`` / ``.nii`` ending is taken off the folder's name and
    sets the files' format instead (``saved/both.nii.gz`` -> ``saved/both/<layer>.nii.gz``). Files
    are named after their layers (characters other than letters, digits, ``.``, ``-`` and ``_``
    become ``_``; clashes get ``_2``, ``_3``, ...). A new folder is created; an existing one gets
    the new files, but no existing file is ever replaced (FileExistsError, nothing written). All
    files are written into a temporary folder first and moved in at the end, so a failure leaves
    nothing behind."""
    folder, ext = _folder_and_ext(path)
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{folder} exists and is not a folder")
    jobs = []
    stems = _file_stems([meta.get("name") for _, meta, _ in layer_data])
    for (data, meta, layer_type), stem in zip(layer_data, stems):
        if layer_type not in ("image", "labels"):
            raise ValueError(f"layer {meta.get('name')!r}: cannot write a {layer_type} layer as NIfTI")
        jobs.append((stem + ext, data, meta, layer_type == "labels"))
    names = []
    for name, _, meta, _ in jobs:
        names.append(name)
        if (meta.get("metadata") or {}).get("provenance"):
            names.append(_sidecar_path(Path(name)).name)
    _refuse_existing(folder, names)

    def write_all(into: Path) -> list[str]:
        return [w for name, data, meta, labels in jobs
                for w in _write(str(into / name), np.asarray(data), meta, labels)]

    if not folder.exists():
        with atomic_dir(folder) as tmp:
            written = write_all(tmp)
        return [str(folder / Path(w).name) for w in written]
    # An existing folder: stage inside it (same file system), then move the files in one by one.
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder))
    moved: list[Path] = []
    try:
        staged = [Path(w) for w in write_all(tmp)]
        _refuse_existing(folder, [w.name for w in staged])
        for w in staged:
            os.replace(w, folder / w.name)
            moved.append(folder / w.name)
    except BaseException:
        for m in moved:
            m.unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return [str(m) for m in moved]


def _folder_and_ext(path: str) -> tuple[Path, str]:
    p = Path(path)
    for ext in (".nii.gz", ".nii"):
        if p.name.lower().endswith(ext) and len(p.name) > len(ext):
            return p.with_name(p.name[: -len(ext)]), ext
    return p, ".nii.gz"


def _file_stems(names: list[Any]) -> list[str]:
    """File names (without extension) for layers named ``names``: safe characters only, unique
    even on a case-insensitive file system."""
    out, seen = [], set()
    for name in names:
        s = str(name or "")
        s = re.sub(r"\.nii(\.gz)?$", "", s, flags=re.IGNORECASE)
        s = re.sub(r"[^\w.-]+", "_", s).strip("._-")[:120] or "layer"
        stem, k = s, 2
        while stem.lower() in seen:
            stem, k = f"{s}_{k}", k + 1
        seen.add(stem.lower())
        out.append(stem)
    return out


def _refuse_existing(folder: Path, names: list[str]) -> None:
    clash = [n for n in names if (folder / n).exists()]
    if clash:
        raise FileExistsError(f"{folder} already holds {', '.join(clash)}; not replacing them "
                              "(choose another folder)")


def _sidecar_path(out: Path) -> Path:
    """The provenance JSON beside the NIfTI ``out``."""
    return out.with_name(re.sub(r"\.nii(\.gz)?$", "", out.name, flags=re.IGNORECASE) + ".json")


def _nifti_path(path: str) -> Path:
    p = Path(path)
    low = p.name.lower()
    if not (low.endswith(".nii") or low.endswith(".nii.gz")):
        p = p.with_name(p.name + ".nii.gz")
    return p


def layer_to_voxels(arr: np.ndarray, meta: dict) -> tuple[np.ndarray, np.ndarray]:
    """(volume in NIfTI voxel order (i, j, k[, extra]), 4x4 affine) for a layer's data."""
    md = meta.get("metadata") or {}
    if arr.ndim == 2:
        arr = arr[None]
        layer_nd = 2
    else:
        layer_nd = arr.ndim
    if arr.ndim < 3:
        raise ValueError(f"cannot write a {arr.ndim}D layer as NIfTI")
    lead = arr.ndim - 3
    orient, affine, vshape = md.get("orientation"), md.get("affine"), md.get("voxel_shape")
    if orient and affine is not None and vshape:
        o = Orientation.from_dict(orient)
        vol = o.from_layer(arr)
        if list(vol.shape[lead:]) == [int(s) for s in vshape]:
            return _lead_last(vol, lead), np.asarray(affine, float)
    vol = np.transpose(arr, tuple(range(lead)) + (lead + 2, lead + 1, lead))
    return _lead_last(vol, lead), _affine_from_meta(meta, layer_nd)


def _lead_last(vol: np.ndarray, lead: int) -> np.ndarray:
    return np.moveaxis(vol, tuple(range(lead)), tuple(range(3, 3 + lead))) if lead else vol


def _affine_from_meta(meta: dict, nd: int) -> np.ndarray:
    from napari.utils.transforms import Affine

    def arr(key, default):
        v = meta.get(key)
        return default if v is None else np.asarray(v, float)

    scale = arr("scale", np.ones(nd))
    translate = arr("translate", np.zeros(nd))
    rotate = arr("rotate", np.eye(nd))
    shear = arr("shear", None)
    kw = {"scale": scale, "translate": translate, "rotate": rotate}
    if shear is not None:
        kw["shear"] = shear
    data2phys = Affine(**kw).affine_matrix
    phys2world = arr("affine", np.eye(nd + 1))
    M = phys2world @ data2phys
    if nd == 2:  # a 2D layer written as one slice: prepend a unit axis
        big = np.eye(4)
        big[1:, 1:] = M
        M = big
    M3 = np.eye(4)
    M3[:3, :3] = M[-4:-1, -4:-1]
    M3[:3, 3] = M[-4:-1, -1]
    return nifti_affine_from_layer((1, 1, 1), (0, 0, 0), M3)


def _write(path: str, arr: np.ndarray, meta: dict, labels: bool) -> list[str]:
    import nibabel as nib

    out = _nifti_path(path)
    vol, affine = layer_to_voxels(arr, meta)
    if labels:
        hi = int(vol.max()) if vol.size else 0
        vol = vol.astype(np.uint8 if 0 <= vol.min() and hi <= 255 else np.int32)
    else:
        vol = vol.astype(np.float32)
    img = nib.Nifti1Image(np.ascontiguousarray(vol), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    md = meta.get("metadata") or {}
    hdr_src = md.get("header") or {}
    units = hdr_src.get("units") or ["mm", "sec"]
    try:
        img.header.set_xyzt_units(*units[:2])
    except Exception:
        img.header.set_xyzt_units("mm")
    prov = md.get("provenance")
    if prov:
        desc = f"berdiff {md.get('output', meta.get('name', ''))} L={prov.get('L')} P={prov.get('P_shown', prov.get('P'))}"
        img.header["descrip"] = desc.encode("ascii", "replace")[:79]
    out.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(out))
    written = [str(out)]
    if prov:
        side = _sidecar_path(out)
        side.write_text(json.dumps({"layer": meta.get("name"), "output": md.get("output"),
                                    "provenance": prov, "postprocess": md.get("postprocess")},
                                   indent=2, default=str))
        written.append(str(side))
    return written
