"""Detection on one input of :mod:`..io.discovery` and writing its outputs (used by ``berdiff detect``).

Volumes (BraTS case folders, NIfTI) are put in RAS voxel order (:mod:`..io.orientation`, as the
models were trained) and run axial slice by axial slice with :func:`.volume.iter_detect_volume`
(intensities normalised as the checkpoint records; the voxel size sets the field of view of
BraTS-style models); the outputs go back to the file's own voxel order and affine. 2D images run
as one slice. The anomaly map written is the paper's: per-channel
squared error, 5x5 median filter, summed over channels. The segmentation follows the rule of
:func:`.calibration.resolve_rule`: by default ``map > `` the model's calibrated threshold (a
model without calibration falls back to the paper protocol, ``segment(normalize_map(map),
threshold, min_size)`` per slice), or ``map > abs_threshold``. Slices not selected are 0.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..io.atomic import AtomicFiles
from ..io.jsonable import to_jsonable
from ..io.discovery import parse_slices
from ..io.outputs import OUTPUT_TAG, output_paths
from ..io.files import DataError
from ..io.images import load_image_2d
from ..io.readers import find_brats_case, load_brats_case, load_nifti
from ..io.input_kinds import CLINICAL_KINDS, InputItem, load_clinical, model_order
from ..io.orientation import canonical_zooms, from_canonical, to_canonical
from .calibration import Calibration, foreground, rule_for
from .triage import TRIAGE_RULES, triage_input
from .uncertainty import Sampled
from .postprocess import paper_anomaly_map
from .settings import DetectSettings
from .volume import full_volume

__all__ = ["DetectSettings", "load_item", "run_item", "detect_item", "summary_path",
           "summary_rows", "item_outputs"]


def item_outputs(item: InputItem, out_dir, samples: int = 1) -> dict[str, Path]:
    """The files :func:`run_item` writes for ``item``: :func:`..io.outputs.output_paths`, plus
    ``spread`` (beside the anomaly map) when ``samples`` > 1 and, for OCT volumes, ``reference``
    (the figures against the file's annotations: written only when it has some)."""
    paths = output_paths(item, out_dir)
    a = paths["anomaly"]
    if samples > 1:
        paths["spread"] = a.with_name(a.name.replace(f"{OUTPUT_TAG}anomaly", f"{OUTPUT_TAG}spread"))
    if item.kind == "oct_volume":
        paths["reference"] = a.with_name(a.name.replace(f"{OUTPUT_TAG}anomaly.nii.gz",
                                                        f"{OUTPUT_TAG}reference.json"))
    return paths


def summary_path(out_dir, rank: int = 0, world: int = 1) -> Path:
    """The summary of ``berdiff detect`` in ``out_dir`` (inputs ranked by their triage scores):
    one file per process when several share the inputs."""
    name = "berdiff_summary.csv" if world <= 1 else f"berdiff_summary_rank{rank}.csv"
    return Path(out_dir) / name


def summary_rows(out_dir) -> list[dict]:
    """One row per input whose results lie in ``out_dir`` (any run): the triage scores of each
    ``*_berdiff_provenance.json`` below it (those of older versions, without scores, are left
    out), for :func:`.triage.rank_inputs`."""
    rows = []
    for p in sorted(Path(out_dir).rglob(f"*{OUTPUT_TAG}provenance.json")):
        try:
            prov = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        tri = prov.get("triage") if isinstance(prov, dict) else None
        if isinstance(tri, dict) and "peak" in tri:
            rows.append({**{k: v for k, v in tri.items() if k != "rules"},
                         "input": prov.get("input"), "outputs": f"{prov.get('name')}{OUTPUT_TAG}*"})
    return rows


def load_item(item: InputItem, channels: int, nan_policy: str = "raise",
              names=None) -> tuple[np.ndarray, np.ndarray | None, Any]:
    """``(data, affine, nibabel header)``: volumes as (C, X, Y, Z) raw intensities, 2D images as
    (1, H, W) in [0, 1] (affine and header None); ``nan_policy`` for NaN/Inf voxels of volumes
    (see :func:`..io.readers.load_nifti`). DICOM and OCT volumes come from
    :func:`..io.input_kinds.load_clinical` (header None; ``names``: the model's channel names,
    which DICOM series are matched to). Raises DataError naming the file."""
    if item.kind in CLINICAL_KINDS:
        data, affine, item.info, item.annotations = load_clinical(item.kind, item.path,
                                                                  channels, names)
        return data, affine, None
    if item.kind == "brats_case":
        if channels != 4:
            raise DataError(item.path, f"{item.path.name} is a BraTS case (4 channels) but the "
                                       f"model expects {channels} channel(s)")
        vol, _, affine = load_brats_case(item.path, nan_policy=nan_policy)
        import nibabel as nib

        header = nib.load(str(find_brats_case(item.path)["flair"])).header
        return vol, affine, header
    if item.kind == "nifti":
        data, affine, hdr = load_nifti(item.path, nan_policy=nan_policy)
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


@dataclass
class Detected:
    """One input run through the model the way ``berdiff detect`` runs it (:func:`detect_item`)."""

    res: Any  # the detector's result (one P)
    amap: np.ndarray  # (n, h, w) filtered map of the slices run
    slices: list[int]  # their axial numbers in RAS order ([0] for a 2D image)
    data: np.ndarray  # the input as read: (C, X, Y, Z) or (1, H, W)
    affine: Any = None
    header: Any = None
    vol: np.ndarray | None = None  # volumes: the input in RAS voxel order
    ornt: Any = None
    orient: dict | None = None
    slices_rule: str = "all"


def detect_item(detector, item: InputItem, s: DetectSettings, *, slices=None,
                spec: str | None = None, batch_size: int | str = "auto",
                nan_policy: str = "raise", all_slices: bool = False,
                progress: Callable[[Any], None] | None = None) -> Detected:
    """Read ``item`` and run it through ``detector`` with the settings ``s`` (P, not the sweep;
    K samples when ``s.samples`` > 1): volumes in RAS order at their voxel size, axial slice by
    slice (the list ``slices``, else the ``--slices`` text ``spec``, else, unless ``all_slices``,
    the calibrated range for volumes of the calibrated depth, else all); 2D images whole.
    ``nan_policy`` for NaN/Inf voxels (:func:`load_item`). Returns the result and the filtered
    map."""
    C = detector.in_channels
    data, affine, header = load_item(item, C, nan_policy, (detector.meta or {}).get("channel_names"))
    _check_modality(detector, item)
    model = Sampled(detector, s.samples) if s.samples > 1 else detector
    kw = dict(L=s.L, P=[float(s.P)], steps=s.S, seed=s.seed, batch_size=batch_size,
              progress=progress)
    if item.is_2d:
        res = model.detect(data[None], indices=[0], **kw)
        out = Detected(res, np.empty(0), [0], data, affine, header)
    else:
        # the model sees axial slices in RAS order whatever the file's voxel order (BraTS: LPS)
        ornt, orient = model_order(item.kind, affine)  # OCT volumes: B-scans as displayed
        vol = to_canonical(data, ornt)
        idx, rule = _slices(detector, vol.shape[-1], slices, spec, all_slices)
        res = model.detect_volume(vol, slice_axis=-1, slices=idx,
                                  spacing=canonical_zooms(affine, ornt), **kw)
        out = Detected(res, np.empty(0), idx, data, affine, header, vol, ornt, orient, rule)
    out.amap = paper_anomaly_map(res.input, res.reconstruction[0], s.post.median_size)
    return out


def _slices(detector, n_z: int, slices, spec: str | None,
            all_slices: bool) -> tuple[list[int], str]:
    """The axial slices a volume runs and why (see :func:`detect_item`)."""
    if slices is not None:
        return [int(i) for i in slices], "given"
    idx = parse_slices(spec, n_z)
    if idx:
        return idx, f"--slices {spec}"
    cal = None if all_slices else Calibration.from_meta(detector.meta)
    rng = None if cal is None else cal.slice_range_for(n_z)
    if rng is not None:
        return list(range(rng[0], rng[1] + 1)), (
            f"{rng[0]}..{rng[1]}: the axial range the model was calibrated on (volumes of {n_z} "
            "slices); the others are not run")
    return list(range(n_z)), "all"


def run_item(detector, item: InputItem, out_dir, s: DetectSettings, *,
             batch_size: int | str = "auto", slices: str | None = None,
             nan_policy: str = "raise", all_slices: bool = False,
             progress: Callable[[Any], None] | None = None, extra: dict | None = None,
             reference: Callable[..., dict] | None = None) -> dict:
    """Detect on one input with the settings ``s`` (see :func:`detect_item` for the options) and
    write its outputs atomically; returns a short summary with the input's triage scores.
    ``reference(annotations, amap, seg, slices)`` (``evaluation.reference.reference_report``,
    passed in by the caller: this layer does not import evaluation) gives the figures against
    the annotations the input came with; they are written as the ``reference`` output and
    returned as the summary's ``reference`` (None without annotations)."""
    d = detect_item(detector, item, s, spec=slices, batch_size=batch_size, nan_policy=nan_policy,
                    all_slices=all_slices, progress=progress)
    pp = s.post
    res, amap, idx, affine, header = d.res, d.amap, d.slices, d.affine, d.header
    rec = res.reconstruction[0]  # (n, C, h, w)
    rule = rule_for(detector.meta, pp)
    fg = foreground(res.input)
    seg = rule.apply(amap, pp.min_size, pp.connectivity, within=fg)
    per, scores = triage_input(amap, res.input, res.masked_fraction[0], idx,
                               res.provenance.get("skipped_slices", ()),
                               Calibration.from_meta(detector.meta), pp.min_size, pp.connectivity)
    paths = item_outputs(item, out_dir, s.samples)
    ref = (reference(item.annotations, amap, seg, idx)
           if reference is not None and item.annotations else None)
    if ref is None:
        paths.pop("reference", None)
    rows = _slice_rows(res.masked_fraction[0], amap, seg, per, idx)
    prov = _provenance(item, d, paths, nan_policy, rule, pp, scores, seg, extra)
    spread = getattr(res, "spread", None)
    spread = None if spread is None else spread[0]
    with AtomicFiles() as files:
        if item.is_2d:
            _write_2d(files, paths, amap[0], seg[0], rec[0, 0],
                      None if spread is None else spread[0])
        else:
            outputs = [("anomaly", amap, np.float32), ("seg", seg, np.uint8),
                       ("recon", rec, np.float32)]
            if spread is not None:
                outputs.append(("spread", spread, np.float32))
            _write_volume(files, paths, outputs, idx, d.vol.shape[-1], d.ornt, affine, header)
        _write_tables(files, paths, rows, prov)
        if ref is not None:
            files.temp(paths["reference"]).write_text(json.dumps(_reference_record(
                item, ref, idx, prov["segmentation"]), indent=2, allow_nan=False) + "\n")
    return {"name": item.name, "slices": len(idx), "seg_pixels": int(seg.sum()),
            "outputs": [str(p) for p in paths.values()], "scores": scores, "reference": ref}


def _slice_rows(fractions, amap, seg, per, idx) -> list[dict]:
    """``scores.csv``'s rows: one per detected slice, all from the written (median-filtered) map."""
    return [{"slice": int(z), "masked_fraction": float(fractions[i]),
             "anomaly_sum": float(amap[i].sum()), "anomaly_max": float(amap[i].max()),
             "seg_pixels": int(seg[i].sum()), "peak": float(per["peak"][i]),
             "area_calibrated": float(per["area"][i]),
             "foreground_pixels": int(per["foreground"][i])}
            for i, z in enumerate(idx)]


def _provenance(item, d, paths, nan_policy, rule, pp, scores, seg, extra) -> dict:
    """The ``provenance.json`` record of one input's detection ``d`` (a :func:`detect_item`
    result) and the files ``paths`` it is written to."""
    idx = d.slices
    return {"input": str(item.path.resolve()), "input_kind": item.kind, "name": item.name,
            **({"input_info": item.info} if item.info else {}),
            "outputs": {k: p.name for k, p in paths.items()},
            "shape": list(d.data.shape), "nan_policy": nan_policy,
            "slices": idx if len(idx) <= 4096 else [idx[0], idx[-1]],
            "slices_rule": d.slices_rule,
            "segmentation": {"map": f"sum_c median_filter((x - x_rec)^2, {pp.median_size})",
                             **rule.to_dict(), "min_size": pp.min_size,
                             "connectivity": pp.connectivity},
            "triage": {**scores, "slices": len(idx), "seg_pixels": int(seg.sum()),
                       "rules": TRIAGE_RULES},
            "affine": None if d.affine is None else np.asarray(d.affine).tolist(),
            "orientation": d.orient,
            "detector": d.res.provenance, "command": " ".join(sys.argv), **(extra or {})}


def _reference_record(item: InputItem, ref: dict, idx: list[int], segmentation: dict) -> dict:
    return {"input": str(item.path.resolve()), "name": item.name,
            "figures": to_jsonable(ref),
            "about": "per annotation: Dice and AUPRC of the written segmentation and anomaly map "
                     "against the file's annotation, over the B-scans run that hold annotated "
                     "pixels (mean, std, n: the paper protocol) and over all their pixels "
                     "(pooled); null where undefined",
            "b_scans_run": len(idx), "segmentation": segmentation}


def _write_2d(files: AtomicFiles, paths: dict, amap, seg, rec, spread=None) -> None:
    """A 2D image's map (TIFF), segmentation and reconstruction (PNG); the spread (TIFF)."""
    import tifffile

    tifffile.imwrite(files.temp(paths["anomaly"]), amap.astype(np.float32))
    _png(files.temp(paths["seg"]), seg.astype(np.uint8) * 255)
    _png(files.temp(paths["recon"]), np.rint(np.clip(rec, 0, 1) * 255))
    if spread is not None:
        tifffile.imwrite(files.temp(paths["spread"]), spread.astype(np.float32))


def _write_volume(files: AtomicFiles, paths: dict, outputs, idx, n_z: int, ornt, affine,
                  header) -> None:
    """``outputs``: (kind, values of the axial slices ``idx`` in RAS order (n, [C,] R, A), dtype),
    written as NIfTI volumes in the file's own voxel order and affine (0 on the slices not run;
    channels last, a single channel dropped; a 2D NIfTI stays 2D)."""
    two_d = header is not None and len(header.get_data_shape()) == 2
    for kind, values, dtype in outputs:
        full = from_canonical(np.moveaxis(full_volume(values, idx, n_z, dtype), 0, -1), ornt)
        if full.ndim == 4:  # (C, X, Y, Z) -> channels last
            full = np.moveaxis(full, 0, -1)
            if full.shape[-1] == 1:
                full = full[..., 0]
        _nifti(files.temp(paths[kind]), full[:, :, 0] if two_d else full, affine, header, dtype)


def _write_tables(files: AtomicFiles, paths: dict, rows: list[dict], prov: dict) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    files.temp(paths["scores"]).write_text(buf.getvalue())
    files.temp(paths["provenance"]).write_text(json.dumps(prov, indent=2, default=str) + "\n")
