"""Choosing the widget's input layers and the model (main thread; no torch at import).

- :func:`auto_pick` matches image layers to the model's channels: by the ``modality`` in their
  metadata (reader, sample data), else by name (``... FLAIR``, ``..._t1ce``), all from one case;
  a one-channel model takes the selected image layer (OCT first).
- Or one layer holds all the channels (a 4D ``(C, Z, Y, X)`` / ``(Z, Y, X, C)`` volume, a 2D
  ``(C, Y, X)`` stack, or an RGB(A) layer whose colours are the channels):
  :func:`find_channel_axis` finds the axis of the model's length (or says which channels the
  model expects), :class:`SpatialView` is that layer without its channel axis (what outputs,
  slice choice and the score plot need).
- :func:`build_volume` stacks the chosen layers into a ``(C, Z, H, W)`` array in the layer's
  orientation, or explains in one sentence why it cannot.
- :func:`fit_note` says how the model's input geometry treats slices of a given size when it is
  worth knowing (cropped borders, strong rescaling).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from ..core.diffusion.thresholds import unique_ps
from .spatial_view import SpatialView, view_of  # noqa: F401 (the input layers' geometry)

BUNDLED_CHOICES = {"bundled BraTS model": "brats", "bundled OCT model": "oct"}
# the channels of the bundled models (to offer the inputs before their files exist)
BUNDLED_CHANNELS = {"brats": ["flair", "t1", "t1ce", "t2"], "oct": ["oct"]}
FILE_CHOICE = "checkpoint file…"
CHANNEL_AXIS_LABELS = {"c", "ch", "chan", "channel", "channels", "modality", "modalities"}
_TITLES = {"flair": "FLAIR", "t1": "T1", "t1ce": "T1ce", "t2": "T2", "oct": "OCT"}


class InputError(ValueError):
    """A problem with the widget's inputs, shown to the user as one sentence."""


def is_output(layer) -> bool:
    """Whether the layer is an output of a run (they carry its provenance)."""
    return "provenance" in (layer.metadata or {})


def image_layers(viewer) -> list:
    from napari.layers import Image

    return [ly for ly in viewer.layers if isinstance(ly, Image) and not ly.rgb and ly.ndim in (2, 3)]


def multichannel_layers(viewer, n_channels: int) -> list:
    """Image layers that may hold all ``n_channels`` channels: 4D ones, RGB(A) ones, and (for a
    multi-channel model) 3D ones read as ``(C, Y, X)``."""
    from napari.layers import Image

    out = []
    for ly in viewer.layers:
        if not isinstance(ly, Image) or getattr(ly, "multiscale", False):
            continue
        nd = len(ly.data.shape)
        if ly.rgb or nd == 4 or (nd == 3 and n_channels > 1):
            out.append(ly)
    return out


def title_of(modality: str) -> str:
    """``"t1ce"`` -> ``"T1ce"``, ``"oct"`` -> ``"OCT"``; other names as they are."""
    return _TITLES.get(str(modality).lower(), str(modality))


def channel_titles(channel_names: list[str] | None, n: int) -> str:
    """``"4 channels (FLAIR, T1, T1ce, T2)"`` for messages."""
    names = [title_of(c) for c in (channel_names or [])]
    what = f"{n} channel{'s' if n != 1 else ''}"
    return f"{what} ({', '.join(names)})" if len(names) == n else what


def find_channel_axis(layer, n_channels: int, channel_names: list[str] | None = None) -> int:
    """The data axis of ``layer`` that holds the model's ``n_channels`` channels: the colour
    axis of an RGB(A) layer, an axis labelled ``c``/``channel``, else the first or last axis of
    that length (first preferred) of a 3D or 4D layer. Raises :class:`InputError` naming the
    channels the model expects when none fits."""
    shape = tuple(int(s) for s in layer.data.shape)
    nd = len(shape)
    want = channel_titles(channel_names, n_channels)
    head = f"the model expects {want}, but {layer.name} has shape {shape}"
    if layer.rgb:
        if shape[-1] == n_channels:
            return nd - 1
        raise InputError(f"{head}: an {'RGBA' if shape[-1] == 4 else 'RGB'} image with "
                         f"{shape[-1]} colour channels")
    if nd not in (3, 4):
        raise InputError(f"{head}: a multi-channel layer is (C, Z, Y, X), (Z, Y, X, C) or (C, Y, X)")
    labels = [str(x).lower() for x in (getattr(layer, "axis_labels", None) or ())]
    tagged = [i for i, lab in enumerate(labels) if lab in CHANNEL_AXIS_LABELS]
    if tagged:
        if shape[tagged[0]] == n_channels:
            return tagged[0]
        raise InputError(f"{head}: its channel axis {labels[tagged[0]]!r} has {shape[tagged[0]]}")
    for ax in (0, nd - 1):
        if shape[ax] == n_channels:
            return ax
    raise InputError(f"{head}: neither its first nor its last axis has length {n_channels}")


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
    for alias, mod in _ALIASES.items():  # BraTS2023 (t2f, t1n, t1c, t2w) and t1Gd names
        if alias in toks:
            return mod
    return None


_ALIASES = {"t1gd": "t1ce", "t1c": "t1ce", "t2f": "flair", "t1n": "t1", "t2w": "t2"}
_SUFFIX = re.compile(r"^(.*?)[\s_\-\.]*(t1ce|t1gd|t1c|t1n|flair|t2f|t2w|t2|t1)\s*$", re.IGNORECASE)


def _group(layer) -> str:
    """The case a modality layer belongs to: metadata ``case``, else its name minus the modality."""
    md = layer.metadata or {}
    if md.get("case"):
        return str(md["case"])
    m = _SUFFIX.match(layer.name)
    return m.group(1) if m else layer.name


def auto_pick(layers: list, channel_names: list[str] | None, n_channels: int, active=None,
              partial: bool = False) -> list | None:
    """Layers for the model's channels in order, or None when no full match exists.

    ``active`` (the layer the user just opened or selected) decides between several cases: the
    case it belongs to wins, else the last complete one. With ``partial``, a case with only some
    of the model's modalities (a lone FLAIR file) fills those slots and leaves None in the others.
    """
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
    mine = [g for g in groups.values() if active is not None and active in g.values()]
    if mine and (len(mine[0]) == n_channels or partial):
        return [mine[0].get(n) for n in names]
    if full:
        return [full[-1][n] for n in names]
    if by_source is None and partial and groups:
        best = max(groups.values(), key=len)  # the first of the fullest cases
        return [best.get(n) for n in names]
    return by_source


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


def build_volume(layers: list, channel_axis: int | None = None) -> np.ndarray:
    """(C, Z, H, W) float32 in layer orientation (Z = 1 for 2D layers): one layer per channel,
    or the channels of one layer along ``channel_axis``."""
    if not layers:
        raise InputError("choose an input image layer")
    for ly in layers:
        if getattr(ly, "multiscale", False):
            raise InputError(f"{ly.name} is a multiscale image; open it at one resolution")
    if channel_axis is not None:
        ly = layers[0]
        a = np.asarray(ly.data)
        if not _numeric(a):
            raise InputError(f"{ly.name} is not a numeric image")
        a = np.moveaxis(a, channel_axis, 0)
        if a.ndim not in (3, 4):
            raise InputError(f"{ly.name} without its channel axis is {a.ndim - 1}D; the widget "
                             f"takes 2D images or 3D stacks")
        return (a[:, None] if a.ndim == 3 else a).astype(np.float32)
    shapes = {tuple(ly.data.shape) for ly in layers}
    if len(shapes) > 1:
        raise InputError("the input layers differ in shape: " + ", ".join(
            f"{ly.name} {tuple(ly.data.shape)}" for ly in layers))
    _check_same_grid(layers)
    arrs = []
    for ly in layers:
        a = np.asarray(ly.data)
        if a.ndim not in (2, 3):
            raise InputError(f"{ly.name} is {a.ndim}D; the widget takes 2D images or 3D stacks")
        if not _numeric(a):
            raise InputError(f"{ly.name} is not a numeric image")
        arrs.append(a[None] if a.ndim == 2 else a)
    return np.stack(arrs).astype(np.float32, copy=False)


def _check_same_grid(layers: list) -> None:
    """Layers read from NIfTI files (affine in their metadata) must share one voxel grid to be
    stacked as channels: same shape is not enough (another voxel size or origin)."""
    from ..core.io.readers import grid_difference

    affs = [(ly, (getattr(ly, "metadata", None) or {}).get("affine")) for ly in layers]
    affs = [(ly, np.asarray(a, float)) for ly, a in affs if a is not None]
    for ly, a in affs[1:]:
        ref_ly, ref = affs[0]
        what = grid_difference(a, ref)  # the readers' rule for one BraTS case's files
        if what:
            raise InputError(f"{ly.name} and {ref_ly.name} are not on the same voxel grid ({what}): "
                             "resample one onto the other first")


def _numeric(a: np.ndarray) -> bool:
    """Numbers or booleans (a mask used as an image counts as 0/1)."""
    return np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_


def fit_note(checkpoint, hw: tuple[int, int], spacing=None) -> str | None:
    """What the model's input geometry does to ``(H, W)`` slices, when it matters: borders cropped
    by a fixed canvas, or a rescaling by more than 2x (None when the fit is plain). ``spacing``:
    the slices' (row, col) pixel size in mm where known (the model's field of view applies)."""
    H, W = int(hw[0]), int(hw[1])
    size = int(checkpoint.ae_config.image_size)
    from ..core.inference.preprocess import canvas_for

    pre = (checkpoint.meta or {}).get("preprocess") or {}
    mode, canvas = pre.get("mode", "pad"), canvas_for(checkpoint.meta, size, spacing)
    if canvas is not None and not np.isscalar(canvas):
        canvas = max(canvas)  # an anisotropic field of view: judge by its longer side
    if mode == "resize":
        factor = min(size / H, size / W), max(size / H, size / W)
        side = f"{H}x{W}"
    else:
        side_px = max(H, W) if mode == "square" else (int(canvas) if canvas else max(H, W, size))
        if mode == "pad" and canvas and (H > side_px or W > side_px):
            return (f"the slices are {H}x{W} px but the model crops to a {side_px} px canvas: "
                    f"the borders beyond it get no reconstruction or anomaly map")
        factor = (size / side_px,) * 2
        side = f"{side_px} px" if mode != "pad" or canvas else f"{H}x{W} (padded to {side_px} px)"
    lo, hi = factor
    # shrinking is how the model was trained where it resizes (OCT B-scans of any width) or
    # sees a field of view in mm: only enlarging is worth a word there
    if mode == "resize" or (spacing is not None and canvas):
        lo = 1.0
    if hi > 2.0 or lo < 0.5:
        how = "enlarged" if hi > 2.0 else "shrunk"
        f = hi if hi > 2.0 else lo
        return (f"the slices ({side}) are {how} {f:.2g}x to the model's {size} px input: a model "
                f"trained on images of this size fits better")
    if mode == "pad" and not canvas and max(H, W) < size / 2:
        return (f"the slices are {H}x{W} px, padded to the model's {size} px: most of its input "
                f"is empty")
    return None


def current_slice(layer, viewer) -> int:
    """The layer's index along its first axis at the viewer's current position."""
    if layer.ndim < 3:
        return 0
    pos = layer.world_to_data(viewer.dims.point)
    return int(np.clip(np.round(pos[0]), 0, layer.data.shape[0] - 1))


def run_slices(src, scope: str, first: int, last: int, viewer) -> list[int]:
    """The slices of ``src`` a run takes: the current one (always for a 2D image), all, or the
    range ``first..last`` (clipped to the stack; InputError when it starts beyond it)."""
    Z = 1 if src.ndim == 2 else src.data.shape[0]
    if src.ndim == 2 or scope == "current slice":
        return [current_slice(src, viewer)]
    if scope == "all slices":
        return list(range(Z))
    a, b = sorted((first, last))
    if a >= Z:
        raise InputError(f"the slice range starts at {a} but {src.name} has {Z} slices (0..{Z - 1})")
    return list(range(a, min(b, Z - 1) + 1))


def pixel_spacing(src) -> tuple[float, float] | None:
    """(rows, cols) pixel size in mm of the model's slices of a volume read from a NIfTI file
    (its affine in the metadata; the rows run along R, the columns along A), else None."""
    affine = (src.metadata or {}).get("affine")
    if affine is None or src.ndim != 3:
        return None
    from ..core.io.orientation import canonical_zooms

    return tuple(canonical_zooms(affine)[:2])


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
            a, b = min(a, b), max(a, b)  # 0.9:0.1:0.1 is the same sweep as 0.1:0.9:0.1
            vals = list(np.arange(a, b + s / 2, s))
        else:
            vals = [float(v) for v in re.split(r"[,\s;]+", text) if v]
    except ValueError:
        raise InputError(f"cannot read the P sweep {text!r}: use e.g. 0.1, 0.3, 0.5 or 0.1:0.9:0.1") from None
    bad = [v for v in vals if not 0.0 <= v <= 1.0]
    if bad:
        raise InputError(f"P values must lie in [0, 1], got {bad}")
    return unique_ps(vals)


def model_source(choice: str, file_value) -> tuple[Path | None, str]:
    """(checkpoint path or None, message) for the model chooser."""
    from ..weights import BUNDLED, bundled_path

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
    if p.is_dir():
        return None, f"{p} is a folder: choose the checkpoint file (.pt) in it"
    if not p.is_file():
        return None, f"Checkpoint file not found: {p}"
    return p, p.name
