"""Choosing the widget's input layers and the model (main thread; no torch at import).

- :func:`auto_pick` matches image layers to the model's channels: by the ``modality`` in their
  metadata (reader, sample data), else by name (``... FLAIR``, ``..._t1ce``), all from one case;
  a one-channel model takes the selected image layer (OCT first).
- :func:`build_volume` stacks the chosen layers into a ``(C, Z, H, W)`` array in the layer's
  orientation, or explains in one sentence why it cannot.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

BUNDLED_CHOICES = {"bundled BraTS model": "brats", "bundled OCT model": "oct"}
# the channels of the bundled models (to offer the inputs before their files exist)
BUNDLED_CHANNELS = {"brats": ["flair", "t1", "t1ce", "t2"], "oct": ["oct"]}
FILE_CHOICE = "checkpoint file…"


class InputError(ValueError):
    """A problem with the widget's inputs, shown to the user as one sentence."""


def image_layers(viewer) -> list:
    from napari.layers import Image

    return [ly for ly in viewer.layers if isinstance(ly, Image) and not ly.rgb and ly.ndim in (2, 3)]


def _tokens(name: str) -> list[str]:
    return [t for t in re.split(r"[\s_\-\.\[\]\(\)]+", name.lower()) if t]


def modality_of(layer) -> str | None:
    mod = (layer.metadata or {}).get("modality")
    if mod:
        return str(mod).lower()
    toks = _tokens(layer.name)
    for cand in ("t1ce", "flair", "t2", "t1", "oct"):
        if cand in toks:
            return cand
    if "t1gd" in toks or "t1c" in toks:
        return "t1ce"
    return None


_SUFFIX = re.compile(r"^(.*?)[\s_\-\.]*(t1ce|t1gd|t1c|flair|t2|t1)\s*$", re.IGNORECASE)


def _group(layer) -> str:
    """The case a modality layer belongs to: metadata ``case``, else its name minus the modality."""
    md = layer.metadata or {}
    if md.get("case"):
        return str(md["case"])
    m = _SUFFIX.match(layer.name)
    return m.group(1) if m else layer.name


def auto_pick(layers: list, channel_names: list[str] | None, n_channels: int, active=None) -> list | None:
    """Layers for the model's channels in order, or None when no full match exists."""
    if n_channels == 1:
        if active is not None and active in layers:
            return [active]
        octs = [ly for ly in layers if modality_of(ly) == "oct"]
        return [(octs or layers)[0]] if layers else None
    by_source = _channel_groups(layers, n_channels)
    names = [str(n).lower() for n in (channel_names or [])]
    if len(names) != n_channels:
        return by_source
    groups: dict[str, dict[str, object]] = {}
    for ly in layers:
        mod = modality_of(ly)
        if mod in names:
            groups.setdefault(_group(ly), {}).setdefault(mod, ly)
    full = [g for g in groups.values() if len(g) == n_channels]
    if not full:
        return by_source
    if active is not None:
        for g in full:
            if active in g.values():
                return [g[n] for n in names]
    return [full[-1][n] for n in names]


def _channel_groups(layers: list, n_channels: int) -> list | None:
    """Layers of one multi-channel file (the reader's 4D NIfTI channels), in channel order."""
    groups: dict[str, dict[int, object]] = {}
    for ly in layers:
        md = ly.metadata or {}
        if "channel" in md and md.get("n_channels") == n_channels:
            groups.setdefault(str(md.get("source")), {})[int(md["channel"])] = ly
    for g in groups.values():
        if sorted(g) == list(range(n_channels)):
            return [g[c] for c in range(n_channels)]
    return None


def base_name(layers: list) -> str:
    """Name for the outputs: the common prefix of the input names (a case), else the first."""
    if len(layers) == 1:
        return layers[0].name
    prefix = os.path.commonprefix([ly.name for ly in layers]).rstrip(" _-[(")
    return prefix or layers[0].name


def build_volume(layers: list) -> np.ndarray:
    """(C, Z, H, W) float32 in layer orientation (Z = 1 for 2D layers)."""
    if not layers:
        raise InputError("choose an input image layer")
    for ly in layers:
        if getattr(ly, "multiscale", False):
            raise InputError(f"{ly.name} is a multiscale image; open it at one resolution")
    shapes = {tuple(ly.data.shape) for ly in layers}
    if len(shapes) > 1:
        raise InputError("the input layers differ in shape: " + ", ".join(
            f"{ly.name} {tuple(ly.data.shape)}" for ly in layers))
    arrs = []
    for ly in layers:
        a = np.asarray(ly.data)
        if a.ndim not in (2, 3):
            raise InputError(f"{ly.name} is {a.ndim}D; the widget takes 2D images or 3D stacks")
        if not np.issubdtype(a.dtype, np.number):
            raise InputError(f"{ly.name} is not a numeric image")
        arrs.append(a[None] if a.ndim == 2 else a)
    return np.stack(arrs).astype(np.float32, copy=False)


def current_slice(layer, viewer) -> int:
    """The layer's index along its first axis at the viewer's current position."""
    if layer.ndim < 3:
        return 0
    pos = layer.world_to_data(viewer.dims.point)
    return int(np.clip(np.round(pos[0]), 0, layer.data.shape[0] - 1))


def parse_sweep(text: str) -> list[float]:
    """``"0.1, 0.2, 0.5"`` -> [0.1, 0.2, 0.5]; also ``"0.1:0.9:0.1"`` (start:stop:step, inclusive)."""
    text = text.strip()
    if not text:
        return []
    try:
        if ":" in text:
            a, b, s = (float(v) for v in text.split(":"))
            if s <= 0:
                raise ValueError
            vals = list(np.arange(a, b + s / 2, s))
        else:
            vals = [float(v) for v in re.split(r"[,\s;]+", text) if v]
    except ValueError:
        raise InputError(f"cannot read the P sweep {text!r}: use e.g. 0.1, 0.3, 0.5 or 0.1:0.9:0.1") from None
    bad = [v for v in vals if not 0.0 <= v <= 1.0]
    if bad:
        raise InputError(f"P values must lie in [0, 1], got {bad}")
    return sorted({round(v, 4) for v in vals})


def model_source(choice: str, file_value) -> tuple[Path | None, str]:
    """(checkpoint path or None, message) for the model chooser."""
    from .weights import BUNDLED, bundled_path

    if choice in BUNDLED_CHOICES:
        mod = BUNDLED_CHOICES[choice]
        path = bundled_path(mod)
        if path is None:
            fname = BUNDLED[mod][0]
            return None, (f"The bundled {mod.upper() if mod == 'oct' else 'BraTS'} model "
                          f"({fname}) is not in this installation yet: choose a checkpoint file "
                          f"(train one with `berdiff train-ae` / `berdiff train-diffusion`).")
        return path, f"{BUNDLED[mod][1]} ({path.name})"
    p = Path(str(file_value)) if file_value else None
    if p is None or str(file_value) in ("", "."):
        return None, "Choose a checkpoint file (.pt) with the file button."
    if not p.is_file():
        return None, f"Checkpoint file not found: {p}"
    return p, p.name
