"""Detection on one input of :mod:`..io.batch_io` and writing its outputs (used by ``berdiff detect``).

Volumes (BraTS case folders, NIfTI) are put in RAS voxel order (:mod:`..io.orientation`, as the
models were trained) and run axial slice by axial slice with :meth:`Detector.detect_volume`
(intensities normalised as the checkpoint records; the voxel size sets the field of view of
BraTS-style models); the outputs go back to the file's own voxel order and affine. 2D images run
as one slice. The anomaly map written is the paper's: per-channel
squared error, 5x5 median filter, summed over channels. The segmentation is
:func:`.postprocess.segment_map` of the settings' post-processing per slice (paper protocol, or,
with ``abs_threshold``, ``map > abs_threshold``: e.g. a threshold chosen by ``berdiff evaluate``
on a validation split; then slices without anomalies stay empty). Slices not selected are 0.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from typing import Any, Callable

import numpy as np

from ..io.batch_io import AtomicFiles, InputItem, output_paths, parse_slices
from ..io.readers import DataError, find_brats_case, load_brats_case, load_image_2d, load_nifti
from ..io.input_kinds import CLINICAL_KINDS, load_clinical, model_order
from ..io.orientation import canonical_zooms, from_canonical, to_canonical
from .postprocess import paper_anomaly_map, segment_map
from .settings import DetectSettings

__all__ = ["DetectSettings", "load_item", "run_item"]


def load_item(item: InputItem, channels: int, names=None) -> tuple[np.ndarray, np.ndarray | None, Any]:
    """``(data, affine, nibabel header)``: volumes as (C, X, Y, Z) raw intensities, 2D images as
    (1, H, W) in [0, 1] (affine and header None). DICOM and OCT volumes come from
    :func:`..io.input_kinds.load_clinical` (header None; ``names``: the model's channel names,
    which DICOM series are matched to). Raises DataError naming the file."""
    if item.kind in CLINICAL_KINDS:
        data, affine, item.info = load_clinical(item.kind, item.path, channels, names)
        return data, affine, None
    if item.kind == "brats_case":
        if channels != 4:
            raise DataError(item.path, f"{item.path.name} is a BraTS case (4 channels) but the "
                                       f"model expects {channels} channel(s)")
        vol, _, affine = load_brats_case(item.path)
        import nibabel as nib

        header = nib.load(str(find_brats_case(item.path)["flair"])).header
        return vol, affine, header
    if item.kind == "nifti":
        data, affine, hdr = load_nifti(item.path)
        while data.ndim > 3 and data.shape[-1] == 1:
            data = data[..., 0]
        if data.ndim == 2:
            data = data[..., None]
        if data.ndim == 3 and channels == 1:
            vol = data[None]
        elif data.ndim == 4 and data.shape[-1] == channels:
            vol = np.moveaxis(data, -1, 0)
        else:
            raise DataError(item.path, f"{item.path.name} has shape {tuple(data.shape)}; the "
                                       f"model expects {channels} channel(s): a 3D volume for 1, "
                                       "a 4D volume with channels last or a BraTS case folder")
        return np.ascontiguousarray(vol), affine, hdr["nibabel"]
    if item.kind == "image":
        if channels != 1:
            raise DataError(item.path, f"{item.path.name} is a 2D gray image but the model "
                                       f"expects {channels} channels")
        return load_image_2d(item.path)[None], None, None
    raise DataError(item.path, item.error or f"unsupported input {item.path}")


def _check_modality(detector, item: InputItem) -> None:
    """Warn (stderr) when the input is plainly not what the model was trained on: the OCT model
    on a NIfTI volume or a BraTS case (a 4-channel model on a 2D image fails on its channels)."""
    modality = str((detector.meta or {}).get("modality") or "").lower()
    if modality == "oct" and item.kind in ("nifti", "brats_case", "dicom"):
        print(f"berdiff detect: warning: {item.path.name}: the model was trained on OCT B-scans, "
              "this is an MR volume; its maps mean little", file=sys.stderr)


def _nifti(path, data: np.ndarray, affine, header, dtype) -> None:
    import nibabel as nib

    hdr = header.copy() if header is not None else None
    img = nib.Nifti1Image(np.asarray(data, dtype=dtype), affine, header=hdr)
    img.set_data_dtype(dtype)
    h = img.header
    h["scl_slope"], h["scl_inter"] = 1.0, 0.0
    # the source's display window, description and intent describe the source, not our maps
    h["cal_min"], h["cal_max"], h["intent_code"] = 0.0, 0.0, 0
    h["descrip"] = b"napari-berdiff output"
    nib.save(img, str(path))


def _png(path, arr: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(np.asarray(arr, np.uint8)).save(str(path))


def run_item(detector, item: InputItem, out_dir, s: DetectSettings, *,
             batch_size: int | str = "auto", slices: str | None = None,
             progress: Callable[[Any], None] | None = None, extra: dict | None = None) -> dict:
    """Detect on one input with the settings ``s`` (P, not the sweep) and write its outputs
    atomically; ``slices``: a ``--slices`` spec of the volume's axial slices. Returns a short
    summary."""
    C = detector.in_channels
    data, affine, header = load_item(item, C, (detector.meta or {}).get("channel_names"))
    _check_modality(detector, item)
    kw = dict(L=s.L, P=[float(s.P)], steps=s.S, seed=s.seed, batch_size=batch_size,
              progress=progress)
    orient = None
    if item.is_2d:
        idx = [0]
        res = detector.detect(data[None], indices=idx, **kw)
    else:
        # the model sees axial slices in RAS order whatever the file's voxel order (BraTS: LPS)
        ornt, orient = model_order(item.kind, affine)  # OCT volumes: B-scans as displayed
        vol = to_canonical(data, ornt)
        n_z = vol.shape[-1]
        idx = parse_slices(slices, n_z) or list(range(n_z))
        res = detector.detect_volume(vol, slice_axis=-1, slices=idx,
                                     spacing=canonical_zooms(affine, ornt), **kw)
    rec = res.reconstruction[0]  # (n, C, h, w)
    pp = s.post
    amap = paper_anomaly_map(res.input, rec, pp.median_size)  # (n, h, w)
    seg = segment_map(amap, pp)
    paths = output_paths(item, out_dir)
    rows = [{"slice": int(z), "masked_fraction": float(res.masked_fraction[0, i]),
             "anomaly_sum": float(amap[i].sum()),  # both from the written (median-filtered) map
             "anomaly_max": float(amap[i].max()), "seg_pixels": int(seg[i].sum())}
            for i, z in enumerate(idx)]
    prov = {"input": str(item.path.resolve()), "input_kind": item.kind, "name": item.name,
            **({"input_info": item.info} if item.info else {}),
            "outputs": {k: p.name for k, p in paths.items()},
            "shape": list(data.shape), "slices": idx if len(idx) <= 4096 else [idx[0], idx[-1]],
            "segmentation": {"map": f"sum_c median_filter((x - x_rec)^2, {pp.median_size})",
                             "rule": pp.rule(), "threshold": pp.threshold,
                             "abs_threshold": pp.abs_threshold, "min_size": pp.min_size,
                             "connectivity": pp.connectivity},
            "affine": None if affine is None else np.asarray(affine).tolist(),
            "orientation": orient,
            "detector": res.provenance, "command": " ".join(sys.argv), **(extra or {})}
    with AtomicFiles() as files:
        if item.is_2d:
            import tifffile

            tifffile.imwrite(files.temp(paths["anomaly"]), amap[0].astype(np.float32))
            _png(files.temp(paths["seg"]), seg[0].astype(np.uint8) * 255)
            _png(files.temp(paths["recon"]), np.rint(np.clip(rec[0, 0], 0, 1) * 255))
        else:
            shape = vol.shape[1:]  # canonical (R, A, S); written back in the file's voxel order
            a_vol, s_vol = np.zeros(shape, np.float32), np.zeros(shape, np.uint8)
            r_vol = np.zeros((C,) + shape, np.float32)
            a_vol[..., idx] = np.moveaxis(amap, 0, -1)
            s_vol[..., idx] = np.moveaxis(seg, 0, -1)
            r_vol[..., idx] = np.moveaxis(rec, 0, -1)
            a_vol, s_vol = from_canonical(a_vol, ornt), from_canonical(s_vol, ornt)
            r_vol = np.moveaxis(from_canonical(r_vol, ornt), 0, -1)
            if C == 1:
                r_vol = r_vol[..., 0]
            if header is not None and len(header.get_data_shape()) == 2:  # a 2D NIfTI stays 2D
                a_vol, s_vol, r_vol = a_vol[..., 0], s_vol[..., 0], r_vol[:, :, 0]
            _nifti(files.temp(paths["anomaly"]), a_vol, affine, header, np.float32)
            _nifti(files.temp(paths["seg"]), s_vol, affine, header, np.uint8)
            _nifti(files.temp(paths["recon"]), r_vol, affine, header, np.float32)
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        files.temp(paths["scores"]).write_text(buf.getvalue())
        files.temp(paths["provenance"]).write_text(json.dumps(prov, indent=2, default=str) + "\n")
    return {"name": item.name, "slices": len(idx), "seg_pixels": int(seg.sum()),
            "outputs": [str(p) for p in paths.values()]}
