"""Generated anomalies and their pseudo-healthy twins, for the paired diagnosis.

BraTS-like subjects of one seed with and without the lesion, or OCT B-scans with ``twin=True``;
optionally kept in an ``.npz`` cache (keys ``x``, ``h``, ``lab``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...inference.volume import normalize_stack
from ...io.atomic import atomic_file
from ...synth.brain import make_case
from ...synth.oct import make_bscan

CHANNELS = ("flair", "t1", "t1ce", "t2")


def _seeds(base: int, n: int) -> list[int]:
    return [int(np.random.SeedSequence([base, k]).generate_state(1)[0]) for k in range(n)]


def brats_pairs(n_subjects: int, per_subject: int, seed: int, kind: str = "tumour",
                size=(240, 240, 155)):
    """(diseased, twin, label) slice stacks (N, 4, H, W) / (N, H, W): axial slices through the
    lesion (evenly spaced over those with >= 0.5% of the slice labelled), per-volume normalised."""
    xs, hs, ls = [], [], []
    for s in _seeds(seed, n_subjects):
        sick, well = make_case(s, kind, size=size), make_case(s, "healthy", size=size)
        seg = sick["seg"] > 0
        area = seg.sum(axis=(0, 1))
        cand = np.flatnonzero(area >= 0.005 * seg.shape[0] * seg.shape[1])
        if len(cand) == 0:
            continue
        pick = cand[np.linspace(0, len(cand) - 1, min(per_subject, len(cand))).round().astype(int)]
        vols = []
        for case in (sick, well):
            v = np.stack([case[c] for c in CHANNELS]).astype(np.float32)
            vols.append(normalize_stack(v, "percentile", channel_axis=0))
        xs.append(np.moveaxis(vols[0][..., pick], -1, 0))
        hs.append(np.moveaxis(vols[1][..., pick], -1, 0))
        ls.append(np.moveaxis(seg[..., pick], -1, 0))
    return np.concatenate(xs), np.concatenate(hs), np.concatenate(ls)


def oct_pairs(n: int, seed: int):
    """(diseased, twin, label) B-scans (N, 1, 496, 512) / (N, 496, 512)."""
    xs, hs, ls = [], [], []
    for s in _seeds(seed, n):
        img, mask, _ = make_bscan(s, True)
        twin, _, _ = make_bscan(s, True, twin=True)
        xs.append(img[None])
        hs.append(twin[None])
        ls.append(mask > 0)
    return np.stack(xs), np.stack(hs), np.stack(ls)


def make_pairs(kind: str, n: int, per_subject: int, seed: int, cache: str | None = None):
    """The pairs of :func:`oct_pairs` / :func:`brats_pairs`, read from or written (atomically) to
    the ``.npz`` file ``cache`` when given (generating BraTS-like subjects takes seconds each)."""
    if cache and Path(cache).is_file():
        try:
            d = np.load(cache)
            return d["x"], d["h"], d["lab"]
        except (OSError, ValueError, KeyError) as e:
            raise ValueError(f"cannot read the pairs cache {cache} (keys x, h, lab): {e}") from None
    x, h, lab = oct_pairs(n, seed) if kind == "oct" else brats_pairs(n, per_subject, seed, kind)
    if cache:
        with atomic_file(cache) as f:
            np.savez_compressed(f, x=x, h=h, lab=lab)
    return x, h, lab
