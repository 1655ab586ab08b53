"""Small numerical helpers shared by the synthetic data generators.

Smooth random fields are built as separable cubic B-splines over a coarse grid of random control
coefficients: evaluating them costs a few matrix products, far less than zooming or Gaussian
filtering a full volume. Also: soft steps, a radial "push" deformation, and atomic file output.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def _bspline3(u: np.ndarray) -> np.ndarray:
    """Cardinal cubic B-spline."""
    a = np.abs(u)
    out = np.zeros_like(a)
    m1 = a < 1
    m2 = (a >= 1) & (a < 2)
    out[m1] = 2.0 / 3.0 - a[m1] ** 2 + 0.5 * a[m1] ** 3
    out[m2] = (2.0 - a[m2]) ** 3 / 6.0
    return out


def bspline_matrix(n_out: int, spacing: float) -> np.ndarray:
    """(n_out, n_ctrl) weights of a uniform cubic B-spline with knots every ``spacing`` samples."""
    spacing = max(float(spacing), 1e-3)
    n_ctrl = int(np.ceil((n_out - 1) / spacing)) + 4
    t = np.arange(n_out, dtype=np.float64) / spacing + 1.0
    return _bspline3(t[:, None] - np.arange(n_ctrl)[None, :])


def smooth_noise(
    rng: np.random.Generator, shape: Sequence[int], spacing: float | Sequence[float]
) -> np.ndarray:
    """Zero-mean, unit-variance smooth random field (float32) with feature size ~``spacing``.

    Works for 1-3 dimensions; the per-sample variance is normalised exactly.
    """
    shape = tuple(int(s) for s in shape)
    if np.isscalar(spacing):
        spacing = [float(spacing)] * len(shape)
    mats = []
    for n, s in zip(shape, spacing):
        m = bspline_matrix(n, s)
        # unit-norm rows: the field's variance is the product of the rows' squared norms
        mats.append((m / np.sqrt((m**2).sum(axis=1, keepdims=True))).astype(np.float32))
    out = rng.standard_normal(tuple(m.shape[1] for m in mats), dtype=np.float32)
    # contract one axis at a time; each step moves the new axis to the end
    for m in mats:
        out = np.tensordot(out, m, axes=(0, 1))
    return np.ascontiguousarray(out, dtype=np.float32)


def soft_step(x: np.ndarray, width: float = 0.5) -> np.ndarray:
    """Logistic step from 0 (x << 0) to 1 (x >> 0), ``width`` in the units of x."""
    return (1.0 / (1.0 + np.exp(-np.clip(x / max(width, 1e-6), -40, 40)))).astype(np.float32)


def radial_push(
    offsets: np.ndarray, amplitude: float, sigma: float
) -> np.ndarray:
    """Inverse map of an outward push around a centre.

    ``offsets`` (3, ...) are output positions minus the centre (mm). Returns the displacement to add
    to them to reach the source position: r_src = r * (1 - A exp(-r^2 / 2 sigma^2)). For A < 1 the
    map is monotone in r, so tissue is pushed outward without folding: the centre is stretched and
    the surroundings compressed.
    """
    r2 = (offsets**2).sum(axis=0)
    factor = amplitude * np.exp(-r2 / (2.0 * sigma**2))
    return (-offsets * factor).astype(np.float32)


