"""napari writers: image layers (anomaly map, reconstruction, mask evolution) and Labels
(segmentation) to NIfTI, in the source volume's voxel order and with its affine.

A layer that carries an ``orientation`` and ``affine`` in its metadata (layers from our reader, the
sample data and the widget's outputs) is written back in the source's voxel order with exactly the
source affine; any other layer gets the affine of its own napari transform (``scale``,
``translate``, ``rotate``, ``shear``, ``affine``; world = LPS (z, y, x) as in
:mod:`napari_berdiff._layers`). Axes in front of the last three (e.g. the mask evolution's step
axis) become the NIfTI 4th dimension. Provenance from the widget goes into a JSON file beside the
image and a short summary into the header's ``descrip``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ._layers import Orientation, nifti_affine_from_layer


def write_image(path: str, data: Any, meta: dict) -> list[str]:
    return _write(path, np.asarray(data), meta, labels=False)


def write_labels(path: str, data: Any, meta: dict) -> list[str]:
    return _write(path, np.asarray(data), meta, labels=True)


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
        side = out.with_name(out.name.replace(".nii.gz", "").replace(".nii", "") + ".json")
        side.write_text(json.dumps({"layer": meta.get("name"), "output": md.get("output"),
                                    "provenance": prov, "postprocess": md.get("postprocess")},
                                   indent=2, default=str))
        written.append(str(side))
    return written
