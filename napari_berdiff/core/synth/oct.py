"""Synthetic retinal OCT B-scans in the style of OCT2017 (Kermany et al., Spectralis, 496 x 512).

B-scans are rendered column by column from retinal layer boundaries, with drusen as RPE
elevations and a ground-truth drusen mask; ``patient=p`` shares the eye's anatomy across B-scans
(docs/design-notes.md, "Generated data").
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

from ..io.atomic import atomic_write_bytes
from ._fields import smooth_noise, soft_step

HEIGHT, WIDTH = 496, 512
# (name, parafoveal thickness in px, grey level); top (inner retina) to bottom (RPE)
LAYERS = (
    ("nfl", 9.0, 0.80), ("gcl", 11.0, 0.40), ("ipl", 9.0, 0.58), ("inl", 9.0, 0.28),
    ("opl", 7.0, 0.52), ("onl", 22.0, 0.16), ("elm", 1.6, 0.45), ("is", 6.0, 0.22),
    ("ez", 3.2, 0.82), ("os", 6.0, 0.34), ("iz", 2.6, 0.58), ("rpe", 5.5, 0.93),
)
_INNER = ("nfl", "gcl", "ipl", "inl", "opl")
# how much of a druse's height lifts each layer's top boundary (the ONL absorbs the rest)
_LIFT = {"nfl": 0.2, "gcl": 0.25, "ipl": 0.3, "inl": 0.3, "opl": 0.3, "onl": 0.35}

__all__ = ["HEIGHT", "WIDTH", "make_bscan", "write_oct_dataset"]


def _patient_params(rng: np.random.Generator) -> dict:
    return {
        "thickness": np.exp(rng.normal(0, 0.08, len(LAYERS))),
        "contrast": np.exp(rng.normal(0, 0.06, len(LAYERS))),
        "choroid_px": float(rng.uniform(45, 95)),
        "curvature_px": float(rng.uniform(-10, 55)),  # rise of the edges above the centre
        "eye": str(rng.choice(["OD", "OS"])),
        "gain": float(rng.uniform(0.85, 1.1)),
    }


def _druse_profile(rng: np.random.Generator, n: int, xs: np.ndarray, fovea_x: float):
    heights = np.zeros_like(xs)
    drusen = []
    for _ in range(n):
        for _try in range(20):
            xd = float(np.clip(fovea_x + rng.normal(0, 110), 40, WIDTH - 40))
            if all(abs(xd - d["x"]) > 0.6 * (d["half_width"]) for d in drusen):
                break
        wd = float(rng.uniform(12, 45))
        hd = float(rng.uniform(4, 20)) * min(1.0, wd / 20)
        p = float(rng.uniform(0.5, 1.0))
        u = np.clip((xs - xd) / wd, -1, 1)
        heights = np.maximum(heights, hd * (1 - u**2) ** p)
        drusen.append({"x": xd, "half_width": wd, "height": hd})
    return heights, drusen


def make_bscan(seed: int, drusen: bool | int = False, patient: int | None = None,
               twin: bool = False):
    """One B-scan: ``(image float32 (496, 512) in [0, 1], mask uint8 (496, 512), meta)``.

    ``twin``: the same B-scan with its drusen flattened (every random draw as with drusen, the
    RPE left on Bruch's membrane): the pseudo-healthy counterpart of a drusen scan.

    ``drusen``: False / 0 for a normal scan, True for 1-6 drusen, an int for that many. The mask is 1
    on the drusen material (between the elevated RPE and Bruch's membrane) and empty when healthy.
    ``meta`` holds the layer boundaries per column (``ilm``, ``rpe_top``, ``rpe_bottom``, ``bm``,
    ``choroid_bottom``, float arrays of length 512, row coordinates), the drusen and the parameters.
    """
    seed = int(seed)
    n_drusen = int(drusen) if not isinstance(drusen, (bool, np.bool_)) else (-1 if drusen else 0)
    rng_p = np.random.default_rng([seed if patient is None else int(patient), 11])
    rng = np.random.default_rng([seed, 12])
    pp = _patient_params(rng_p)
    xs = np.arange(WIDTH, dtype=np.float64)
    ys = np.arange(HEIGHT, dtype=np.float32)[:, None]

    # --- geometry of Bruch's membrane -----------------------------------------------------------
    fovea_x = float(WIDTH / 2 + rng.normal(0, 25))
    fovea_depth = float(np.clip(rng.uniform(0.55, 1.25), 0, 1))  # < 1: B-scan passes beside it
    if rng.random() < 0.1:
        fovea_depth = 0.0  # B-scan away from the fovea
    u = (xs - fovea_x) / (WIDTH / 2)
    bm_centre = rng.uniform(260, 360)
    bm = (bm_centre - pp["curvature_px"] * u**2 + rng.normal(0, 0.06) * (xs - WIDTH / 2)
          + 2.0 * smooth_noise(rng, (WIDTH,), 120.0))
    pit = fovea_depth * np.exp(-0.5 * ((xs - fovea_x) / rng.uniform(32, 48)) ** 2)
    nasal = 1.0 if pp["eye"] == "OD" else -1.0  # optic disc side: NFL thickens towards it
    if n_drusen < 0:
        n_drusen = int(rng.integers(1, 7))
    lift, drusen_list = _druse_profile(rng, n_drusen, xs, fovea_x)
    if twin:
        lift = np.zeros_like(lift)

    # --- layer boundaries, bottom-up ------------------------------------------------------------
    tops = {}
    bottom = bm - lift  # bottom of the (possibly elevated) RPE
    rpe_bottom = bottom.copy()
    for k in range(len(LAYERS) - 1, -1, -1):
        name, t, _ = LAYERS[k]
        t = t * pp["thickness"][k] * (1 + 0.06 * smooth_noise(rng, (WIDTH,), 80.0))
        if name in _INNER:
            t = t * (1 - 0.97 * pit)
            if name == "nfl":
                t = t * (0.6 + 1.2 * soft_step(nasal * (xs - fovea_x) - 40, 60)) * (1 - 0.5 * pit)
        elif name == "onl":
            t = t * (1 + 0.4 * pit)
        elif name in ("os", "is"):
            t = t * (1 + 0.25 * pit)
        extra = _LIFT.get(name, 1.0) - (_LIFT.get(LAYERS[k + 1][0], 1.0) if k + 1 < len(LAYERS) else 1.0)
        top = bottom - np.maximum(t + extra * lift, 0.2)
        tops[name] = top
        bottom = top
    ilm = tops["nfl"]

    # --- render ---------------------------------------------------------------------------------
    sharp = 0.55
    edges = [tops[name] for name, _, _ in LAYERS] + [rpe_bottom]
    steps = [soft_step(ys - e[None, :], sharp) for e in edges]
    img = rng.uniform(0.03, 0.07) * (1 - steps[0])  # vitreous
    for k, (_, _, grey) in enumerate(LAYERS):
        g = grey * pp["contrast"][k] * (1 + 0.07 * smooth_noise(rng, (HEIGHT, WIDTH), (30.0, 60.0)))
        img += (steps[k] - steps[k + 1]) * g
    # drusen material and Bruch's membrane
    s_bm = soft_step(ys - bm[None, :], sharp)
    material = rng.uniform(0.33, 0.5) * (1 + 0.1 * smooth_noise(rng, (HEIGHT, WIDTH), 6.0))
    img += (steps[-1] - s_bm) * material
    img += np.exp(-0.5 * ((ys - bm[None, :] - 0.5) / 0.8) ** 2) * 0.45
    # choroid with vessel lumens (larger deeper), fading into the sclera
    ch_bottom = bm + pp["choroid_px"] * (1 + 0.1 * smooth_noise(rng, (WIDTH,), 100.0))
    depth = ys - bm[None, :]
    lumen_noise = smooth_noise(rng, (HEIGHT, WIDTH), (4.0, 10.0))
    rel_depth = np.clip(depth / pp["choroid_px"], 0, 1)
    lumens = soft_step(lumen_noise - 0.6 + 0.7 * rel_depth, 0.45) * soft_step(depth - 5, 1.5)
    in_choroid = 1 - soft_step(ys - ch_bottom[None, :], 6)
    choroid = (0.5 - 0.1 * rel_depth) * (1 - 0.5 * lumens) * in_choroid
    sclera = 0.2 * (1 - in_choroid)
    below = (choroid + sclera) * np.exp(-np.clip(depth, 0, None) / rng.uniform(70, 120))
    img += below * s_bm

    # retinal vessels in the inner retina and their shadows
    for _ in range(int(rng.integers(1, 5))):
        xv = float(rng.uniform(20, WIDTH - 20))
        if abs(xv - fovea_x) < 60:
            continue
        rv = float(rng.uniform(2.5, 5))
        yv = tops["gcl"][int(xv)] + rng.uniform(-2, 4)
        blob = np.exp(-0.5 * (((ys - yv) / rv) ** 2 + ((xs[None, :] - xv) / (1.3 * rv)) ** 2))
        img = img * (1 - 0.6 * blob) + 0.85 * blob * 0.6
        shadow = 1 - rng.uniform(0.35, 0.6) * np.exp(-0.5 * ((xs - xv) / (1.1 * rv)) ** 2)
        img *= np.where(ys > yv + rv, shadow[None, :], 1.0).astype(np.float32)

    # speckle, gain, gamma, noise floor
    k = rng.uniform(4.0, 9.0)
    speck = rng.gamma(k, 1.0 / k, size=(HEIGHT, WIDTH)).astype(np.float32)
    speck = gaussian_filter(speck, (0.5, 0.9))
    speck /= speck.mean()
    img = img * speck * pp["gain"] * rng.uniform(0.9, 1.1)
    img = np.clip(img, 0, None) ** rng.uniform(0.85, 1.15)
    img += np.abs(rng.normal(0, 0.012, img.shape)).astype(np.float32)
    img = np.clip(img, 0.0, 1.0).astype(np.float32)

    mask = ((ys > (bm - lift)[None, :]) & (ys < bm[None, :]) & (lift[None, :] >= 1.5)).astype(np.uint8)
    meta = {
        "seed": seed, "patient": None if patient is None else int(patient),
        "drusen": drusen_list, "n_drusen": len(drusen_list), "eye": pp["eye"],
        "fovea_x": fovea_x, "fovea_depth": fovea_depth, "mask_area_px": int(mask.sum()),
        "ilm": ilm.astype(np.float32), "rpe_top": tops["rpe"].astype(np.float32),
        "rpe_bottom": rpe_bottom.astype(np.float32), "bm": bm.astype(np.float32),
        "choroid_bottom": ch_bottom.astype(np.float32),
        "layer_tops": {n: t.astype(np.float32) for n, t in tops.items()},
    }
    return img, mask, meta


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


def write_oct_dataset(root: str | Path, n_normal: int = 0, n_drusen: int = 0, seed: int = 0,
                      scans_per_patient: int = 2, overwrite: bool = False, quality: int = 95,
                      first_patient_id: int = 1000001, progress=None) -> list[dict]:
    """Write OCT2017-style folders; returns the manifest rows (``progress(done, total)`` is called
    after each B-scan).

    ``root/NORMAL/NORMAL-<patient>-<k>.jpeg`` and ``root/DRUSEN/DRUSEN-<patient>-<k>.jpeg`` (uint8
    grayscale JPEG, 496 x 512), plus ``root/DRUSEN_masks/DRUSEN-<patient>-<k>.png`` (0 / 255) and
    ``root/synth_oct_manifest.json``. ``n_normal`` / ``n_drusen`` count images; consecutive images
    share a patient (``scans_per_patient`` per patient, k = 1, 2, ...); patient ids are 7-digit
    numbers, distinct between the classes. Every target file is checked before anything is written
    (FileExistsError unless ``overwrite``); each file is written under a temporary name and renamed,
    the mask before its image, so an interrupted run never leaves an image without its mask.
    """
    import imageio.v3 as iio  # installed with scikit-image

    root = Path(root)
    spp = max(1, int(scans_per_patient))
    jobs = []
    pid = int(first_patient_id)
    for cls, n in (("NORMAL", n_normal), ("DRUSEN", n_drusen)):
        for i in range(int(n)):
            if i % spp == 0 and i:
                pid += 1
            k = i % spp + 1
            name = f"{cls}-{pid}-{k}"
            img_path = root / cls / f"{name}.jpeg"
            mask_path = root / f"{cls}_masks" / f"{name}.png" if cls == "DRUSEN" else None
            jobs.append((cls, i, pid, k, img_path, mask_path))
        pid += 1
    if not overwrite:
        clash = [p for j in jobs for p in j[4:] if p is not None and p.exists()]
        if clash:
            raise FileExistsError(f"{len(clash)} file(s) already exist under {root}, e.g. {clash[0]} "
                                  f"(pass overwrite=True to replace them)")
    rows = []
    for cls, i, pid, k, img_path, mask_path in jobs:
        code = 0 if cls == "NORMAL" else 1
        scan_seed = int(np.random.SeedSequence([int(seed), code, i]).generate_state(1)[0])
        patient_seed = int(np.random.SeedSequence([int(seed), code, 10**6 + pid]).generate_state(1)[0])
        img, mask, meta = make_bscan(scan_seed, drusen=(cls == "DRUSEN"), patient=patient_seed)
        img_path.parent.mkdir(parents=True, exist_ok=True)
        if mask_path is not None:
            mask_path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(mask_path, iio.imwrite("<bytes>", mask * np.uint8(255), extension=".png"))
        atomic_write_bytes(img_path, iio.imwrite("<bytes>", _to_uint8(img), extension=".jpeg",
                                                 quality=int(quality)))
        rows.append({"file": str(img_path.relative_to(root)),
                     "mask": None if mask_path is None else str(mask_path.relative_to(root)),
                     "class": cls, "patient": pid, "k": k, "seed": scan_seed,
                     "patient_seed": patient_seed, "n_drusen": meta["n_drusen"],
                     "mask_area_px": meta["mask_area_px"], "eye": meta["eye"]})
        if progress is not None:
            progress(len(rows), len(jobs))
    atomic_write_bytes(root / "synth_oct_manifest.json",
                       json.dumps({"seed": int(seed), "images": rows}, indent=1).encode())
    return rows
