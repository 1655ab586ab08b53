"""Healthy brain anatomy for the synthetic BraTS-like generator.

A subject is the MNI152 template (shipped inside nilearn, loaded offline) seen through a random
smooth transform, with contrasts synthesised from its tissue fractions (docs/design-notes.md,
"Generated data").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from scipy import ndimage as ndi

from ._fields import smooth_noise

CHANNELS = ("flair", "t1", "t1ce", "t2")
BRATS_SHAPE = (240, 240, 155)
FOV_MM = np.array([240.0, 240.0, 155.0])
# world (MNI mm) of the centre of voxel 0 at 1 mm: the MNI brain's bounding-box centre (0, -17, 5)
# lands on voxel (120, 120, 77), so at 1 mm an identity transform copies template voxels exactly.
ORIGIN_1MM = np.array([-120.0, -137.0, -72.0])
BRAIN_CENTRE_MM = np.array([0.0, -17.0, 5.0])
# MNI world -> MNI template voxel: index = world - MNI_ORIGIN
MNI_ORIGIN = np.array([-98.0, -134.0, -72.0])

# Relative mean intensities (white matter, grey matter, CSF) per channel, before the scanner gain.
TISSUE_MEANS = {
    "flair": (0.60, 0.76, 0.12),
    "t1": (1.00, 0.68, 0.28),
    "t1ce": (0.90, 0.66, 0.25),
    "t2": (0.40, 0.55, 1.00),
}
# How strongly the T1 template's detail (template minus tissue model) enters each channel.
DETAIL_WEIGHT = {"flair": -0.35, "t1": 1.0, "t1ce": 0.9, "t2": -0.6}
# Typical scanner gains (arbitrary units, of the order of raw BraTS intensities).
GAINS = {"flair": 450.0, "t1": 550.0, "t1ce": 900.0, "t2": 1300.0}
# Template T1 means relative to WM, used to isolate the template's detail.
_TPL_REL = (1.0, 0.745, 0.326)


@lru_cache(maxsize=1)
def load_templates() -> dict:
    """MNI152 1 mm templates (float32, shape 197x233x189) plus derived source maps. Cached."""
    from nilearn import datasets  # bundled files, no download

    def arr(img):
        return np.asarray(img.dataobj, dtype=np.float32)

    t1 = arr(datasets.load_mni152_template(resolution=1))
    gm = arr(datasets.load_mni152_gm_template(resolution=1))
    wm = arr(datasets.load_mni152_wm_template(resolution=1))
    mask = arr(datasets.load_mni152_brain_mask(resolution=1))
    gm *= mask
    wm *= mask
    csf = np.clip(mask - gm - wm, 0.0, 1.0)
    # mm to the brain edge; computed at 2 mm (the exact 1 mm transform costs seconds), +-1 mm
    half = ndi.distance_transform_edt(mask[::2, ::2, ::2] > 0.5, sampling=2.0).astype(np.float32)
    depth = half.repeat(2, 0).repeat(2, 1).repeat(2, 2)[: mask.shape[0], : mask.shape[1], : mask.shape[2]]
    depth *= mask > 0.5
    # choroid plexus glomera in the atria of the lateral ventricles (fixed, MNI mm)
    grid = np.ogrid[tuple(map(slice, mask.shape))]
    world = [g.astype(np.float32) + MNI_ORIGIN[a] for a, g in enumerate(grid)]
    cp = np.zeros(mask.shape, np.float32)
    for sx in (-1, 1):
        d2 = ((world[0] - 27 * sx) / 7) ** 2 + ((world[1] + 38) / 12) ** 2 + ((world[2] - 14) / 7) ** 2
        cp = np.maximum(cp, (d2 < 1).astype(np.float32))
    cp *= (csf > 0.5) & (depth > 12)
    cp = ndi.gaussian_filter(cp, 1.0)
    tpl_wm = float(t1[wm > 0.9].mean())
    stack = np.stack([t1 / tpl_wm, gm, wm, mask])
    return {
        "stack": stack,  # interpolated together: t1 (WM = 1), gm, wm, mask
        "csf": csf,
        "depth": depth,
        "cp": cp,
        "mask_dilated": ndi.binary_dilation(mask > 0.5, iterations=2),
        "shape": mask.shape,
    }


@dataclass
class Geometry:
    """Output grid: shape, spacing (mm) and the voxel -> world (MNI-like mm, RAS) affine."""

    shape: tuple[int, int, int] = BRATS_SHAPE
    spacing: np.ndarray = field(init=False)
    origin: np.ndarray = field(init=False)

    def __post_init__(self):
        self.shape = tuple(int(s) for s in self.shape)
        if len(self.shape) != 3 or min(self.shape) < 16:
            raise ValueError(f"size must be three ints >= 16, got {self.shape}")
        self.spacing = FOV_MM / np.array(self.shape, dtype=np.float64)
        # voxel k covers [ORIGIN_1MM - 0.5 + k*sp, ... + sp]: the same field of view at any size
        self.origin = ORIGIN_1MM - 0.5 + 0.5 * self.spacing

    @property
    def affine(self) -> np.ndarray:
        aff = np.diag(np.r_[self.spacing, 1.0])
        aff[:3, 3] = self.origin
        return aff

    def world_to_voxel(self, world) -> np.ndarray:
        return (np.asarray(world, dtype=np.float64) - self.origin) / self.spacing

    def slice_of_brats(self, k: float) -> float:
        """Slice index at this size that lies where slice ``k`` of a 240x240x155 volume lies."""
        return float(self.world_to_voxel([0, 0, ORIGIN_1MM[2] + k])[2])

    def bbox(self) -> tuple[slice, slice, slice]:
        """Output region that can hold the brain (with margin for scaling and rotation)."""
        half = np.array([84.0, 102.0, 82.0])
        lo = np.floor(self.world_to_voxel(BRAIN_CENTRE_MM - half)).astype(int)
        hi = np.ceil(self.world_to_voxel(BRAIN_CENTRE_MM + half)).astype(int) + 1
        return tuple(slice(max(0, lo[a]), min(self.shape[a], hi[a])) for a in range(3))


def _rotation(angles_deg) -> np.ndarray:
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def subject_params(rng: np.random.Generator) -> dict:
    """Random healthy-subject parameters (JSON-friendly)."""
    params = {
        "scale": float(rng.uniform(0.88, 0.97)),  # MNI152 is larger than an average brain
        "aspect": rng.uniform(0.97, 1.03, size=3).tolist(),
        "angles_deg": (rng.normal(0, [3.0, 2.0, 4.0])).clip(-8, 8).tolist(),
        "shift_mm": rng.normal(0, [2.0, 3.0, 1.5]).tolist(),
        "warp_mm": float(rng.uniform(1.5, 3.0)),
        "ventricle_push": float(rng.uniform(-0.1, 0.35)),
        "gamma": rng.uniform(0.9, 1.1, size=4).tolist(),
        "gain": [GAINS[c] * float(rng.uniform(0.7, 1.4)) for c in CHANNELS],
        "means": {c: (np.array(TISSUE_MEANS[c]) * np.exp(rng.normal(0, 0.04, 3))).tolist()
                  for c in CHANNELS},
        "bias": float(rng.uniform(0.04, 0.12)),
        "noise": rng.uniform(0.012, 0.03, size=4).tolist(),
        "cp_enhance": float(rng.uniform(0.5, 1.0)),
    }
    return params


def source_coords(geom: Geometry, params: dict, rng: np.random.Generator):
    """Template-voxel coordinates (3, *bbox_shape) of every output voxel in the brain bbox.

    Returns (coords, bbox, M) with M the 3x3 linear part (output mm -> template mm), needed to map
    local output-space displacements (mass effect) into template space.
    """
    bbox = geom.bbox()
    bshape = tuple(s.stop - s.start for s in bbox)
    axes = [geom.origin[a] + geom.spacing[a] * np.arange(bbox[a].start, bbox[a].stop) for a in range(3)]
    scale = params["scale"] * np.array(params["aspect"])
    m = _rotation(params["angles_deg"]) / scale[None, :]
    shift = np.array(params["shift_mm"])
    rel = [ax - BRAIN_CENTRE_MM[a] - shift[a] for a, ax in enumerate(axes)]
    coords = np.empty((3,) + bshape, np.float32)
    spacing_vox = 45.0 / geom.spacing  # displacement knots every ~45 mm
    for i in range(3):
        c = (m[i, 0] * rel[0][:, None, None] + m[i, 1] * rel[1][None, :, None]
             + m[i, 2] * rel[2][None, None, :])
        disp = params["warp_mm"] * smooth_noise(rng, bshape, spacing_vox)
        coords[i] = c + disp + (BRAIN_CENTRE_MM[i] - MNI_ORIGIN[i])
    # mild per-subject ventricular enlargement / shrinkage around the lateral ventricles
    amp = params["ventricle_push"]
    if abs(amp) > 1e-3:
        centre = np.array([0.0, -10.0, 16.0])  # MNI mm, between the lateral ventricles' bodies
        cv = geom.world_to_voxel(centre + shift) - np.array([s.start for s in bbox])
        g = np.ogrid[tuple(slice(0, n) for n in bshape)]
        off = [(g[a] - cv[a]) * geom.spacing[a] for a in range(3)]
        fac = amp * np.exp(-((off[0] / 16) ** 2 + (off[1] / 30) ** 2 + (off[2] / 18) ** 2) / 2)
        for i in range(3):
            coords[i] -= (m[i, 0] * off[0] + m[i, 1] * off[1] + m[i, 2] * off[2]) * fac
    return coords, bbox, m


def sample_nearest(vol: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Nearest-neighbour lookup of ``vol`` at float voxel ``coords`` (3, ...); 0 outside."""
    idx = np.rint(coords).astype(np.int32)
    ok = np.ones(coords.shape[1:], bool)
    for a in range(3):
        ok &= (idx[a] >= 0) & (idx[a] < vol.shape[a])
        np.clip(idx[a], 0, vol.shape[a] - 1, out=idx[a])
    return np.where(ok, vol[idx[0], idx[1], idx[2]], 0)


def interpolate_tissue(coords: np.ndarray) -> dict:
    """Trilinear tissue maps at ``coords`` (3, ...): t1, gm, wm, csf, mask (float32) + depth, cp."""
    tpl = load_templates()
    inside = sample_nearest(tpl["mask_dilated"], coords).astype(bool)
    pts = coords[:, inside]
    out = {}
    for name, vol in zip(("t1", "gm", "wm", "mask"), tpl["stack"]):
        full = np.zeros(coords.shape[1:], np.float32)
        full[inside] = ndi.map_coordinates(vol, pts, order=1, mode="constant", prefilter=False)
        out[name] = full
    out["csf"] = np.clip(out["mask"] - out["gm"] - out["wm"], 0.0, 1.0)
    out["cp"] = sample_nearest(tpl["cp"], coords)
    return out


def synthesise_contrasts(tissue: dict, params: dict) -> np.ndarray:
    """Healthy relative intensities (4, ...) (WM-scale units, no gain/bias/noise)."""
    m = np.maximum(tissue["mask"], 1e-3)
    g, w, c = tissue["gm"] / m, tissue["wm"] / m, tissue["csf"] / m
    detail = tissue["t1"] / m - (g * _TPL_REL[1] + w * _TPL_REL[0] + c * _TPL_REL[2])
    out = np.empty((4,) + g.shape, np.float32)
    for i, ch in enumerate(CHANNELS):
        mw, mg, mc = params["means"][ch]
        base = w * mw + g * mg + c * mc
        out[i] = base + DETAIL_WEIGHT[ch] * detail * abs(mw - mc) / (1 - _TPL_REL[2])
    out[2] += params["cp_enhance"] * tissue["cp"]  # choroid plexus enhances on T1ce
    np.maximum(out, 0.0, out=out)
    return out


def finish_channels(rel: np.ndarray, brain: np.ndarray, params: dict, rng: np.random.Generator,
                    spacing: np.ndarray) -> np.ndarray:
    """Contrast gamma, gain, smooth bias field and Rician noise; zero outside ``brain``."""
    shape = rel.shape[1:]
    shared = smooth_noise(rng, shape, 90.0 / spacing)
    out = np.zeros_like(rel)
    sel = brain
    for i in range(4):
        own = smooth_noise(rng, shape, 70.0 / spacing)
        bias = np.exp(params["bias"] * (shared[sel] + 0.4 * own[sel]))
        sig = rel[i][sel] ** params["gamma"][i] * bias
        sigma = params["noise"][i] * max(params["means"][CHANNELS[i]])
        # drawn over the whole box (not just the brain) so that every kind of the same seed gets
        # the same noise at the same voxel
        n1 = rng.standard_normal(shape, dtype=np.float32)[sel] * sigma
        n2 = rng.standard_normal(shape, dtype=np.float32)[sel] * sigma
        out[i][sel] = np.sqrt((sig + n1) ** 2 + n2**2) * params["gain"][i]
    return out
