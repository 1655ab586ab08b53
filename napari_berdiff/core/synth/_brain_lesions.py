"""Lesions for the synthetic BraTS-like generator: tumours, resection cavities, enlarged ventricles.

Each lesion is planned before the anatomy is interpolated (mass effect), then drawn in a sub-box.
Labels follow BraTS (1 core, 2 oedema, 4 enhancing); cavities and ventricles are marked 2
(docs/design-notes.md, "Generated data").
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from ._brain_anatomy import CHANNELS, Geometry, interpolate_tissue, load_templates, sample_nearest
from ._fields import radial_push, smooth_noise, soft_step

# Relative target intensities (same WM-scale units as TISSUE_MEANS), channel order as CHANNELS.
OEDEMA = np.array([1.00, 0.72, 0.66, 0.78])
ENHANCING = np.array([0.82, 0.66, 1.45, 0.62])
NECROSIS = np.array([0.45, 0.38, 0.32, 0.92])
NONENHANCING = np.array([1.02, 0.55, 0.55, 0.86])

# Lesions are centred between these world z (mm), i.e. BraTS slices 92..116: the pipeline keeps
# slices 80..128 (world z 8..56).
Z_RANGE_MM = (20.0, 44.0)


def _rand_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    return q * np.sign(np.diag(r))


def plan_lesion(kind: str, rng: np.random.Generator, geom: Geometry, coords: np.ndarray,
                bbox: tuple[slice, slice, slice]) -> dict:
    """Choose the lesion's centre and size from a coarse look at the warped anatomy."""
    tpl = load_templates()
    step = max(1, int(round(3.0 / geom.spacing.min())))
    sub = coords[:, ::step, ::step, ::step]
    depth = sample_nearest(tpl["depth"], sub)
    wm = sample_nearest(tpl["stack"][2], sub)
    csf = sample_nearest(tpl["csf"], sub)
    idx = np.indices(sub.shape[1:]) * step
    world = np.stack([geom.origin[a] + geom.spacing[a] * (idx[a] + bbox[a].start) for a in range(3)])
    zok = (world[2] >= Z_RANGE_MM[0]) & (world[2] <= Z_RANGE_MM[1])
    plan: dict = {"kind": kind}
    if kind == "tumour":
        r_core = float(rng.uniform(7.0, 18.0))
        cand = zok & (depth >= r_core + 4) & (wm > 0.4)
        plan.update(
            grade=str(rng.choice(["HGG", "LGG"], p=[0.75, 0.25])),
            radius_mm=r_core,
            oedema_radius_mm=float(min(30.0, r_core * rng.uniform(1.3, 2.0) + rng.uniform(2, 6))),
            push=float(rng.uniform(0.25, 0.55)), push_sigma_mm=1.2 * r_core,
            rim_mm=float(rng.uniform(2.0, 5.0)),
        )
        plan["necrosis"] = bool(plan["grade"] == "HGG" and (r_core > 10 or rng.random() < 0.5))
    elif kind == "cavity":
        r = float(rng.uniform(8.0, 18.0))
        cand = zok & (depth >= 0.6 * r) & (depth <= r + 8) & (csf < 0.5)
        plan.update(radius_mm=r, push=float(rng.uniform(-0.2, 0.0)), push_sigma_mm=1.3 * r,
                    rim=bool(rng.random() < 0.5))
    elif kind == "ventricle":
        cand = zok & (depth >= 22) & (csf > 0.8)
        if not cand.any():
            cand = (depth >= 22) & (csf > 0.8)
        plan.update(radius_mm=float(rng.uniform(10.0, 15.0)), push=float(rng.uniform(0.6, 0.8)))
        plan["push_sigma_mm"] = plan["radius_mm"]
    else:
        raise ValueError(f"unknown lesion kind {kind!r}")
    if not cand.any():
        raise RuntimeError(f"no place for a {kind} in this subject")
    pick = rng.choice(np.flatnonzero(cand))
    centre = world.reshape(3, -1)[:, pick] + rng.uniform(-1.0, 1.0, 3) * step * geom.spacing
    plan["centre_mm"] = centre.tolist()
    plan["centre_voxel"] = geom.world_to_voxel(centre).round(1).tolist()
    return plan


def lesion_box(plan: dict, geom: Geometry, bbox) -> tuple[tuple[slice, ...], np.ndarray]:
    """Sub-box (slices into the bbox arrays) around the lesion and its world offsets (3, ...) mm."""
    half = max(plan.get("oedema_radius_mm", plan["radius_mm"]) * 1.4,
               3.0 * plan["push_sigma_mm"]) + 4.0
    cv = geom.world_to_voxel(plan["centre_mm"]) - np.array([s.start for s in bbox])
    hv = half / geom.spacing
    box = []
    for a in range(3):
        n = bbox[a].stop - bbox[a].start
        box.append(slice(int(max(0, np.floor(cv[a] - hv[a]))), int(min(n, np.ceil(cv[a] + hv[a]) + 1))))
    g = np.ogrid[tuple(box)]
    offs = [((g[a] - cv[a]) * geom.spacing[a]).astype(np.float32) for a in range(3)]
    offsets = np.stack(np.broadcast_arrays(*offs))
    return tuple(box), offsets


def apply_push(plan: dict, coords: np.ndarray, box, offsets: np.ndarray, m: np.ndarray) -> None:
    """Add the lesion's radial mass effect (output-space push, mapped by ``m``) to ``coords``."""
    if abs(plan["push"]) < 1e-6:
        return
    d = radial_push(offsets, plan["push"], plan["push_sigma_mm"])
    for i in range(3):
        coords[(i,) + box] += m[i, 0] * d[0] + m[i, 1] * d[1] + m[i, 2] * d[2]


def _shape_level(rng, offsets, radius, geom, rough=0.3, fine=0.1, aniso=0.25):
    """Normalised level (about 1 on the boundary) of an irregular blob of mean radius ``radius``."""
    axes = np.exp(rng.uniform(-aniso, aniso, 3))
    axes /= np.prod(axes) ** (1 / 3)
    rot = _rand_rotation(rng)
    loc = np.tensordot(rot.T, offsets, axes=1)
    rho = np.sqrt(sum((loc[a] / (axes[a] * radius)) ** 2 for a in range(3)))
    shape = offsets.shape[1:]
    lev = rho + rough * smooth_noise(rng, shape, 0.7 * radius / geom.spacing)
    lev += fine * smooth_noise(rng, shape, 3.0 / geom.spacing)
    return lev.astype(np.float32)


def _component_at(mask: np.ndarray, seed_mask: np.ndarray) -> np.ndarray:
    """Connected components of ``mask`` that touch ``seed_mask`` (or the largest one)."""
    lab, n = ndi.label(mask)
    if n <= 1:
        return mask
    keep = np.unique(lab[seed_mask & mask])
    keep = keep[keep > 0]
    if keep.size == 0:
        keep = [np.argmax(np.bincount(lab.ravel())[1:]) + 1]
    return np.isin(lab, keep)


def render_lesion(plan: dict, rng: np.random.Generator, rel: np.ndarray, tissue: dict,
                  brain: np.ndarray, box, offsets: np.ndarray, geom: Geometry, params: dict,
                  healthy_tissue: dict | None = None, src_x_mm: np.ndarray | None = None
                  ) -> np.ndarray:
    """Draw the lesion into ``rel`` (4, *bbox) in place; return the label sub-box (uint8).

    ``src_x_mm``: template x (mm, 0 = midline) of every sub-box voxel, to keep oedema on one side.
    """
    sub = (slice(None),) + box
    r = rel[sub]
    inside = brain[box]
    mk = np.maximum(tissue["mask"][box], 1e-3)
    g, w, c = tissue["gm"][box] / mk, tissue["wm"][box] / mk, tissue["csf"][box] / mk
    shape = inside.shape
    labels = np.zeros(shape, np.uint8)
    rr = np.sqrt((offsets**2).sum(0))
    centre_mask = rr <= max(2.0, geom.spacing.max())
    jit = lambda base: base * np.exp(rng.normal(0, 0.05, 4))  # noqa: E731

    def blend(weight, target, hetero):
        tex = 1.0 + hetero * smooth_noise(rng, shape, 3.0 / geom.spacing)
        for i in range(4):
            r[i] += weight * (target[i] * tex - r[i])

    if plan["kind"] == "tumour":
        R, Re = plan["radius_mm"], plan["oedema_radius_mm"]
        lev_c = _shape_level(rng, offsets, R, geom)
        core = _component_at((lev_c < 1) & inside, centre_mask)
        wc = soft_step((1 - lev_c) * R, 0.5) * core
        lev_e = _shape_level(rng, offsets, Re, geom, rough=0.35, aniso=0.35)
        # oedema spreads in white matter, spares cortex and CSF, stays in the tumour's hemisphere
        allowed = np.clip(1.4 * (w + 0.35 * g), 0, 1) * np.clip((0.55 - c) / 0.3, 0, 1)
        allowed = np.maximum(allowed, (lev_e < 0.6) * (c < 0.5))
        if src_x_mm is not None:
            side = float(src_x_mm[centre_mask].mean())
            if abs(side) > 6.0:
                allowed = allowed * soft_step(src_x_mm * np.sign(side) - 1.5, 0.7)
        allowed *= inside
        # intensity fades from the core outward; the label ends where it is about half strength
        strength = np.interp(lev_e.ravel(), [0.6, 1.0, 1.12], [1.0, 0.55, 0.0]).reshape(shape)
        strength = (strength * allowed).astype(np.float32)
        oed = _component_at(((lev_e < 1) & (allowed > 0.5)) | core, core) & ~core
        # no unlabelled islands: the fade may only spill a few mm beyond the labelled region
        near = ndi.binary_dilation(oed | core, iterations=int(np.ceil(3.0 / geom.spacing.min())))
        strength *= near
        tex = 1.0 + 0.06 * smooth_noise(rng, shape, 4.0 / geom.spacing)
        edema_t = jit(OEDEMA)
        for i in range(4):
            r[i] += strength * (edema_t[i] * tex - r[i])
        if plan["grade"] == "HGG":
            blend(wc, jit(ENHANCING), 0.10)
            labels[core] = 4
            if plan["necrosis"] and core.any():
                cb = ndi.find_objects(core.astype(np.uint8))[0]
                cb = tuple(slice(max(0, q.start - 1), q.stop + 1) for q in cb)
                depth_in = np.zeros(shape, np.float32)
                depth_in[cb] = ndi.distance_transform_edt(core[cb], sampling=geom.spacing)
                rim = plan["rim_mm"] * (1 + 0.35 * smooth_noise(rng, shape, 6.0 / geom.spacing))
                wn = soft_step(depth_in - np.maximum(rim, 1.5), 0.6) * core
                nec = jit(NECROSIS)
                nec[0] *= rng.uniform(1.0, 1.8)  # necrosis on FLAIR: dark to intermediate
                blend(wn, nec, 0.12)
                labels[core & (wn > 0.5)] = 1
        else:
            blend(wc, jit(NONENHANCING), 0.08)
            labels[core] = 1
        labels[oed] = 2
    elif plan["kind"] == "cavity":
        R = plan["radius_mm"]
        lev = _shape_level(rng, offsets, R, geom, rough=0.2, fine=0.06)
        cav = _component_at((lev < 1) & inside, centre_mask)
        wcav = soft_step((1 - lev) * R, 0.5) * inside * ndi.binary_dilation(cav)
        csf_means = np.array([params["means"][ch][2] for ch in CHANNELS])
        target = csf_means * np.array(
            [rng.uniform(1.0, 1.8), rng.uniform(1.0, 1.3), rng.uniform(1.0, 1.3), rng.uniform(0.9, 1.0)])
        if plan.get("rim"):
            wr = soft_step((1.25 - lev) * R, 0.6) * (1 - wcav) * inside * 0.5
            r[0] += wr * 0.08  # faint gliotic FLAIR rim, not labelled
        blend(wcav, target, 0.04)
        labels[cav] = 2
    elif plan["kind"] == "ventricle":
        hm = np.maximum(healthy_tissue["mask"], 1e-3)
        was_csf = healthy_tissue["csf"] / hm > 0.5
        now_csf = c > 0.5
        near = rr < 2.5 * plan["push_sigma_mm"]
        grown = now_csf & ~was_csf & near & inside
        if geom.spacing.max() < 1.5:  # remove one-voxel slivers (at coarse sizes there is no room)
            grown = ndi.binary_opening(grown)
        lab, n = ndi.label(grown)
        if n:
            sizes = np.bincount(lab.ravel())
            big = np.flatnonzero(sizes * np.prod(geom.spacing) >= 30.0)  # >= 0.03 ml
            grown = np.isin(lab, big[big > 0])
        labels[grown] = 2
    return labels


def healthy_subbox(coords: np.ndarray, box) -> dict:
    """Tissue maps of the sub-box before the lesion's push (for enlarged-ventricle labels)."""
    return interpolate_tissue(np.ascontiguousarray(coords[(slice(None),) + box]))
