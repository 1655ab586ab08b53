"""Geometry between NIfTI volumes, napari layers and the model's 2D slices (no Qt, no torch).

World coordinates in napari follow the DICOM/ITK convention: LPS millimetres (x to the patient's
left, y posterior, z superior), axes ordered (z, y, x) so that the first axis of a layer is the
slider and the canvas shows the radiological view (anterior up, the patient's left on the right).
A NIfTI volume's voxel axes (i, j, k) map onto a layer's axes by an :class:`Orientation`: a
permutation plus flips, chosen so that an axis-aligned affine becomes a positive ``scale`` and a
``translate``; an oblique affine is kept whole in the layer's ``affine`` (no flips then).

Metadata written onto image layers by the reader and the sample data (and copied onto outputs):
``affine`` (the NIfTI 4x4 voxel -> RAS matrix), ``header`` (JSON-safe NIfTI header fields),
``orientation`` (``Orientation.to_dict()``), ``source`` (a path) and ``modality``.

The model sees slices along the layer's first axis, oriented as in training: for a NIfTI source the
two in-plane voxel axes in nibabel order (rows = the lower voxel axis), exactly the slices that
:func:`napari_berdiff.core.inference.volume.volume_to_slices` gives; for any other layer, the slice as
displayed. :func:`slice_map_for_layer` gives the core's ``SliceMap`` between the two.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core.inference.volume import SliceMap

LPS = np.array([-1.0, -1.0, 1.0])  # RAS -> LPS sign flips
_TOL = 1e-6


@dataclass(frozen=True)
class Orientation:
    """Layer axis ``d`` shows voxel axis ``perm[d]``, reversed where ``flip[d]``."""

    perm: tuple[int, ...] = (2, 1, 0)
    flip: tuple[bool, ...] = (False, False, False)

    def to_layer(self, vol: np.ndarray) -> np.ndarray:
        """Voxel order ``(..., i, j, k)`` -> layer order (leading axes, e.g. channels, kept)."""
        lead = vol.ndim - 3
        arr = np.transpose(vol, tuple(range(lead)) + tuple(lead + p for p in self.perm))
        axes = tuple(lead + d for d, f in enumerate(self.flip) if f)
        return np.flip(arr, axes) if axes else arr

    def from_layer(self, arr: np.ndarray) -> np.ndarray:
        """Layer order -> voxel order ``(..., i, j, k)``; the inverse of :meth:`to_layer`."""
        lead = arr.ndim - 3
        axes = tuple(lead + d for d, f in enumerate(self.flip) if f)
        arr = np.flip(arr, axes) if axes else arr
        inv = np.argsort(self.perm)
        return np.transpose(arr, tuple(range(lead)) + tuple(lead + int(p) for p in inv))

    def to_dict(self) -> dict:
        return {"perm": [int(p) for p in self.perm], "flip": [bool(f) for f in self.flip]}

    @classmethod
    def from_dict(cls, d: dict) -> "Orientation":
        return cls(tuple(int(p) for p in d["perm"]), tuple(bool(f) for f in d["flip"]))


def layer_geometry(affine: np.ndarray, shape: tuple[int, int, int]) -> tuple[Orientation, dict]:
    """Orientation and napari geometry kwargs (``scale``/``translate`` or ``affine``) for a volume
    of voxel ``shape`` with the NIfTI ``affine`` (voxel -> RAS mm)."""
    A = np.asarray(affine, dtype=np.float64)
    lin = A[:3, :3]
    axis_aligned = all(np.count_nonzero(np.abs(lin[:, v]) > _TOL * max(1.0, np.abs(lin).max())) == 1
                       for v in range(3))
    world_of_voxel = [int(np.argmax(np.abs(lin[:, v]))) for v in range(3)]
    if axis_aligned and sorted(world_of_voxel) == [0, 1, 2]:
        perm, flip, scale, translate = [], [], [], []
        for d in range(3):  # napari world axis d = LPS axis 2 - d
            w = 2 - d
            v = world_of_voxel.index(w)
            step = LPS[w] * lin[w, v]
            i0 = 0 if step > 0 else shape[v] - 1
            perm.append(v)
            flip.append(bool(step < 0))
            scale.append(abs(step))
            translate.append(LPS[w] * (lin[w, v] * i0 + A[w, 3]))
        return Orientation(tuple(perm), tuple(flip)), {"scale": tuple(scale), "translate": tuple(translate)}
    # oblique: layer axes (k, j, i); napari world = reversed LPS of A applied to reversed indices
    R = np.eye(3)[::-1]
    F = np.diag(LPS)
    M = np.eye(4)
    M[:3, :3] = R @ F @ lin @ R.T
    M[:3, 3] = R @ F @ A[:3, 3]
    return Orientation((2, 1, 0), (False, False, False)), {"affine": M}


def nifti_affine_from_layer(scale, translate, affine_matrix=None) -> np.ndarray:
    """The NIfTI affine (voxel (i, j, k) = reversed layer axes -> RAS) of a 3D layer without an
    orientation record: the inverse of the convention above with no flips."""
    M = np.eye(4)
    M[:3, :3] = np.diag(np.asarray(scale, float)[-3:])
    M[:3, 3] = np.asarray(translate, float)[-3:]
    if affine_matrix is not None:
        M = np.asarray(affine_matrix, float)[-4:, -4:] @ M
    R = np.eye(3)[::-1]
    F = np.diag(LPS)
    A = np.eye(4)
    A[:3, :3] = F @ R @ M[:3, :3] @ R
    A[:3, 3] = F @ R @ M[:3, 3]
    return A


def slice_map_for_layer(metadata: dict | None, n_slices: int) -> SliceMap:
    """How a 3D layer's slices become the model's. For a layer read from a NIfTI file
    (orientation and affine in its metadata) the model sees its axial slices in RAS order, as
    ``berdiff detect`` and the training do (``core.io.orientation``), whatever the file's voxel
    order; a layer whose first axis is not the axial one keeps the file's voxel order; other
    layers are taken as displayed."""
    md = metadata or {}
    o = md.get("orientation")
    if not o:
        return SliceMap(n_slices=n_slices)
    o = Orientation.from_dict(o)
    if md.get("affine") is not None:
        from ..core.io.orientation import orientation_of

        ornt = orientation_of(np.asarray(md["affine"], float))
        axis = [int(ornt[p, 0]) for p in o.perm]  # canonical axis (0 R, 1 A, 2 S) of layer axis d
        sign = [int(ornt[p, 1]) * (-1 if f else 1) for p, f in zip(o.perm, o.flip)]
        if axis[0] == 2:
            return SliceMap.for_axes(axis, sign, n_slices)
    return SliceMap(transpose=o.perm[1] > o.perm[2], flip_rows=o.flip[1], flip_cols=o.flip[2],
                    flip_slices=o.flip[0], n_slices=n_slices)


def latent_map(in_hw: tuple[int, int], image_size: int, latent_size: int, mode: str,
               canvas: int | None) -> list[tuple[float, float]]:
    """(scale, offset) per model-orientation axis mapping a latent pixel index to image pixel
    coordinates (pixel centres), through the detector's pad/crop and resize geometry."""
    from ..core.inference import preprocess  # imports torch: only called while running

    geom = preprocess.plan(tuple(in_hw), image_size, mode, canvas)
    out = []
    for ax in range(2):
        r = geom.mid_hw[ax] / float(latent_size)
        pad_before = geom.pads[2 * ax]
        out.append((r, (r - 1.0) / 2.0 - pad_before))
    return out


def json_header(header: dict) -> dict:
    """The JSON-safe part of :func:`napari_berdiff.core.io.readers.load_nifti`'s header dict."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in header.items() if k != "nibabel"}


def geometry_kwargs(src: Any) -> dict:
    """Geometry of a napari layer to copy onto an output of the same dimensionality."""
    kw = {
        "scale": tuple(src.scale),
        "translate": tuple(src.translate),
        "rotate": np.asarray(src.rotate),
        "shear": np.asarray(src.shear),
        "affine": np.asarray(src.affine.affine_matrix),
    }
    labels = getattr(src, "axis_labels", None)
    if labels is not None:
        kw["axis_labels"] = tuple(labels)
    units = getattr(src, "units", None)
    if units is not None:
        kw["units"] = tuple(units)
    return kw


def latent_geometry_kwargs(src: Any, axes: list[tuple[float, float]], lead: int = 1) -> dict:
    """Geometry for a latent-resolution stack ``(step, [slice,] h, w)`` over the source layer:
    in-plane latent (scale, offset) composed with the source's data -> world transform, and
    ``lead`` new leading axes (scale 1, at 0)."""
    nd = src.ndim
    lat_scale = np.ones(nd)
    lat_off = np.zeros(nd)
    for i, (r, o) in enumerate(axes):
        lat_scale[nd - 2 + i] = r
        lat_off[nd - 2 + i] = o
    rot, shear = np.asarray(src.rotate), np.asarray(src.shear)
    simple = np.allclose(rot, np.eye(nd)) and np.allclose(shear, np.zeros_like(shear) if shear.ndim == 1 else np.eye(nd))
    src_scale, src_tr = np.asarray(src.scale, float), np.asarray(src.translate, float)
    if simple:
        scale = src_scale * lat_scale
        translate = src_tr + src_scale * lat_off
        affine = np.asarray(src.affine.affine_matrix)
    else:  # compose the whole data -> physical transform into the affine
        from napari.utils.transforms import Affine

        D = Affine(scale=src_scale, translate=src_tr, rotate=rot, shear=shear).affine_matrix
        L = np.eye(nd + 1)
        L[:nd, :nd] = np.diag(lat_scale)
        L[:nd, nd] = lat_off
        affine = np.asarray(src.affine.affine_matrix) @ D @ L
        scale, translate = np.ones(nd), np.zeros(nd)
    big = np.eye(nd + 1 + lead)
    big[lead:, lead:] = affine
    kw = {"scale": (1.0,) * lead + tuple(scale), "translate": (0.0,) * lead + tuple(translate),
          "affine": big}
    labels = getattr(src, "axis_labels", None)
    if labels is not None:
        kw["axis_labels"] = tuple(f"step{i or ''}" for i in range(lead)) + tuple(labels)
    units = getattr(src, "units", None)
    if units is not None:
        kw["units"] = ("pixel",) * lead + tuple(str(u) for u in units)
    return kw


def volume_layer_kwargs(shape3: tuple[int, int, int], affine: np.ndarray, header: dict | None,
                        source: str | None, **metadata) -> tuple:
    """(orientation, layer kwargs) for a (X, Y, Z) volume with a NIfTI affine."""
    orient, geom = layer_geometry(affine, shape3)
    meta = {"affine": np.asarray(affine, float), "orientation": orient.to_dict(),
            "voxel_shape": [int(s) for s in shape3], "source": source}
    if header is not None:
        meta["header"] = json_header(header)
    meta.update(metadata)
    kwargs = dict(geom, metadata=meta, axis_labels=("z", "y", "x"))
    if "scale" in geom:
        kwargs["units"] = ("mm", "mm", "mm")
    return orient, kwargs
