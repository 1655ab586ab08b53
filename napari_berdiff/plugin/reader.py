"""napari readers: NIfTI volumes, BraTS case folders, OCT images and folders of them.

``napari_get_reader(path)`` returns a reader function for the paths handled here and None for
anything else. A file that cannot be read gives one clear notification (no traceback) and no layer
(napari's "empty file" sentinel ``[(None,)]``).

Layers carry their geometry (see :mod:`napari_berdiff.plugin.layers`): NIfTI volumes become
``(z, y, x)`` layers in LPS millimetres with ``scale``/``translate`` (``affine=`` when oblique), and
the NIfTI affine, header and orientation in ``metadata``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np

from .layers import volume_layer_kwargs  # noqa: F401 (sample_data imports it from here)
from ..core.io.input_kinds import file_input_kind, folder_input_kind, unsupported_reason
from ..core.io.files import IMAGE_EXTENSIONS, DataError, is_nifti, subfolders
from ..core.io.images import load_image_2d
from ..core.io.readers import (BRATS_CASE_SUFFIXES, BRATS_MODALITIES, brats_modality_of,
                                find_brats_case, load_nifti)

OCT_EXTENSIONS = IMAGE_EXTENSIONS  # the same 2D formats as berdiff detect
MODALITY_TITLES = {"flair": "FLAIR", "t1": "T1", "t1ce": "T1ce", "t2": "T2"}
# display defaults per modality (colormaps are napari names)
_BRATS_COLORMAPS = {"flair": "gray", "t1": "gray", "t1ce": "gray", "t2": "gray"}

LayerData = tuple  # (data, kwargs, layer_type)


def napari_get_reader(path: str | list[str]) -> Callable | None:
    """The npe2 reader contribution: a reader for ``path`` or None when it is not ours."""
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    if not paths:
        return None
    ps = [Path(p) for p in paths]
    if len(ps) == 1 and (folder_input_kind(ps[0]) if ps[0].is_dir() else
                         file_input_kind(ps[0]) or unsupported_reason(ps[0])):
        return read_clinical  # DICOM folders and files, OCT volume exports
    if len(ps) == 1 and ps[0].is_dir():
        return read_folder if _folder_kind(ps[0]) else None
    if all(is_nifti(p) for p in ps):
        return read_niftis
    if all(str(p).lower().endswith(OCT_EXTENSIONS) for p in ps):
        return read_oct_images
    return None


# -- entry points (catch user-facing errors: notification, no traceback) ----------------------
def read_clinical(path: str | list[str]) -> list[LayerData]:
    """A DICOM folder / file or an OCT volume export (:mod:`.reader_clinical`)."""
    from .reader_clinical import read_dicom_layers, read_oct_volume_layers

    p = Path(path if isinstance(path, (str, Path)) else path[0])
    kind = folder_input_kind(p) if p.is_dir() else file_input_kind(p)
    if kind is None:
        reason = unsupported_reason(p) or f"{p.name} is not an input napari-berdiff reads"
        return _guarded(p.name, _raise, DataError(p, reason))
    fn = read_dicom_layers if kind == "dicom" else read_oct_volume_layers
    return _guarded(p.name, fn, p)


def _raise(err: Exception):
    raise err


def read_niftis(path: str | list[str]) -> list[LayerData]:
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    out: list[LayerData] = []
    for p in paths:
        out.extend(_guarded(Path(p).name, read_nifti_layers, p))
    return [x for x in out if x[0] is not None] or [(None,)]


def read_oct_images(path: str | list[str]) -> list[LayerData]:
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    if len(paths) == 1:
        return _guarded(Path(paths[0]).name, read_oct_layers, paths[0])
    return _guarded(f"{len(paths)} images", read_oct_stack, [Path(p) for p in paths])


def read_folder(path: str | list[str]) -> list[LayerData]:
    p = Path(path if isinstance(path, (str, Path)) else path[0])
    kind = _folder_kind(p)
    if kind == "brats":
        return _guarded(p.name, read_brats_layers, p)
    if kind == "parent":
        return _guarded(p.name, read_parent_folder, p)
    return _guarded(p.name, read_oct_stack, sorted(f for f in p.iterdir() if _is_oct(f)), p)


MAX_PARENT_IMAGES = 400  # an OCT2017-style root opens as one stack per class up to this many


def read_parent_folder(folder: Path) -> list[LayerData]:
    """A folder of case folders or of image folders (an OCT2017 root with NORMAL/, DRUSEN/, ...):
    image folders open as one stack each while they are small; BraTS case folders one at a time."""
    subs = subfolders(folder)
    kinds = {d: _folder_kind_flat(d) for d in subs}
    cases = [d for d, k in kinds.items() if k == "brats"]
    if cases:
        raise DataError(folder, f"this folder holds {len(cases)} BraTS case folder(s) (e.g. "
                                f"{cases[0].name}): open one case folder, or run `berdiff detect "
                                f"{folder}` for all of them")
    image_dirs = [d for d, k in kinds.items() if k == "oct"]
    n = sum(sum(1 for f in d.iterdir() if _is_oct(f)) for d in image_dirs)
    if n > MAX_PARENT_IMAGES:
        raise DataError(folder, f"its subfolders hold {n} images (more than {MAX_PARENT_IMAGES} "
                                f"to open at once): open one subfolder or some of its images")
    out: list[LayerData] = []
    for d in image_dirs:
        out.extend(read_oct_stack(sorted(f for f in d.iterdir() if _is_oct(f)), d))
    return out


def _guarded(label: str, fn, *args) -> list[LayerData]:
    try:
        return fn(*args)
    except (DataError, ValueError, OSError, MemoryError) as err:
        _notify_error(f"napari-berdiff could not open {label}: {err}")
        return [(None,)]


def _notify_error(message: str) -> None:
    from napari.utils.notifications import show_error

    show_error(message)


def _notify_warning(message: str) -> None:
    from napari.utils.notifications import show_warning

    show_warning(message)


# -- NIfTI ------------------------------------------------------------------------------------
def _stem(p: Path) -> str:
    name = p.name
    for ext in (".nii.gz", ".nii"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return p.stem


def read_nifti_layers(path: str | Path) -> list[LayerData]:
    """A 3D NIfTI -> one image layer; 4D -> one layer per channel (4th axis), named ``[c]``;
    a file named like a BraTS segmentation (``*seg*``) with integer values -> a Labels layer."""
    p = Path(path)
    data, affine, header = load_nifti(p)
    if data.ndim == 2:
        data = data[..., None]
    if data.ndim not in (3, 4):
        raise DataError(p, f"{p.name} has shape {data.shape}: expected a 3D or 4D volume")
    stem = _stem(p)
    mod = _modality_of(stem)
    if data.ndim == 3:
        orient, kw = volume_layer_kwargs(data.shape, affine, header, str(p), modality=mod)
        arr = np.ascontiguousarray(orient.to_layer(data))
        if "seg" in stem.lower() and _is_integer_valued(data):
            return [(arr.astype(np.uint8), dict(kw, name=stem), "labels")]
        return [(arr, dict(kw, name=stem, colormap="gray"), "image")]
    n = data.shape[3]
    out = []
    for c in range(n):
        orient, kw = volume_layer_kwargs(data.shape[:3], affine, header, str(p), channel=c,
                                         n_channels=n, modality=mod)
        arr = np.ascontiguousarray(orient.to_layer(data[..., c]))
        out.append((arr, dict(kw, name=f"{stem} [{c}]", colormap="gray", visible=c == 0), "image"))
    return out


def _modality_of(stem: str) -> str | None:
    """The BraTS modality a file stem names (``*_flair``, BraTS2023 ``*-t2f``, ...; a bare
    ``flair``), or None; the segmentation is not a modality."""
    mod = brats_modality_of(stem + ".nii.gz")
    if mod is not None and mod != "seg":
        return mod
    low = stem.lower()
    return low if low in BRATS_MODALITIES else None


def _is_integer_valued(a: np.ndarray) -> bool:
    return bool(a.min() >= 0 and a.max() <= 255 and np.all(a == np.rint(a)))


# -- BraTS -------------------------------------------------------------------------------------
def _folder_kind(folder: Path) -> str | None:
    """"brats" (a case folder), "oct" (a folder of images), "parent" (a data set root whose
    subfolders are either) or None."""
    flat = _folder_kind_flat(folder)
    if flat:
        return flat
    try:
        subs = subfolders(folder)
    except OSError:
        return None
    return "parent" if any(_folder_kind_flat(d) for d in subs) else None


def _folder_kind_flat(folder: Path) -> str | None:
    try:
        files = [f for f in folder.iterdir() if f.is_file()]
    except OSError:
        return None
    if any(f.name.lower().endswith(BRATS_CASE_SUFFIXES) for f in files):
        return "brats"
    return "oct" if any(_is_oct(f) for f in files) else None


def read_brats_layers(folder: str | Path) -> list[LayerData]:
    """Four modality image layers (FLAIR, T1, T1ce, T2, this order) + the segmentation (Labels)."""
    folder = Path(folder)
    files = find_brats_case(folder)
    case = folder.name
    out = []
    ref_shape = None
    for mod in BRATS_MODALITIES:
        data, affine, header = load_nifti(files[mod], ndim=3)
        if ref_shape is None:
            ref_shape, ref_affine = data.shape, affine
        elif data.shape != ref_shape:
            raise DataError(files[mod], f"{files[mod].name} has shape {data.shape}, but the "
                                        f"FLAIR volume has {ref_shape}")
        orient, kw = volume_layer_kwargs(data.shape, affine, header, str(files[mod]), modality=mod,
                                         case=case)
        kw.update(name=f"{case} {MODALITY_TITLES[mod]}", colormap=_BRATS_COLORMAPS[mod],
                  visible=mod == "flair")
        out.append((np.ascontiguousarray(orient.to_layer(data)), kw, "image"))
    if "seg" in files:
        seg, affine, header = load_nifti(files["seg"], ndim=3)
        if seg.shape != ref_shape:
            raise DataError(files["seg"], f"{files['seg'].name} has shape {seg.shape}, but the "
                                          f"FLAIR volume has {ref_shape}")
        if not _is_integer_valued(seg):
            raise DataError(files["seg"], f"{files['seg'].name} is not a label image")
        orient, kw = volume_layer_kwargs(seg.shape, ref_affine, header, str(files["seg"]),
                                         modality="seg", case=case)
        kw.update(name=f"{case} ground truth", opacity=0.5)
        out.append((np.ascontiguousarray(orient.to_layer(seg)).astype(np.uint8), kw, "labels"))
    return out


# -- OCT ---------------------------------------------------------------------------------------
def _is_oct(f: Path) -> bool:
    return f.is_file() and f.name.lower().endswith(OCT_EXTENSIONS) and not f.name.startswith(".")


def _oct_kwargs(name: str, source: str, ndim: int, **extra) -> dict:
    labels = ("b-scan", "y", "x") if ndim == 3 else ("y", "x")
    return {"name": name, "colormap": "gray", "contrast_limits": (0.0, 1.0), "axis_labels": labels,
            "metadata": {"source": source, "modality": "oct", **extra}}


def read_oct_layers(path: str | Path) -> list[LayerData]:
    """One grayscale B-scan in [0, 1]."""
    p = Path(path)
    img = load_image_2d(p)
    return [(img, _oct_kwargs(p.stem, str(p), 2), "image")]


def read_oct_stack(files: list[Path], folder: Path | None = None) -> list[LayerData]:
    """Several B-scans as one (n, H, W) stack, sorted by name. Images of another size than the
    most common one are skipped with a warning."""
    if not files:
        raise DataError(folder, "no OCT images (.jpeg, .png, .tif, .bmp) in this folder")
    imgs = []
    bad: list[str] = []
    for f in files:
        try:
            imgs.append((f, load_image_2d(f)))
        except DataError as err:
            bad.append(f"{f.name} ({err.reason})")
    if not imgs:
        raise DataError(folder or files[0], "none of the images could be read: " + "; ".join(bad))
    shape, _ = Counter(im.shape for _, im in imgs).most_common(1)[0]
    keep = [(f, im) for f, im in imgs if im.shape == shape]
    skipped = [f.name for f, im in imgs if im.shape != shape]
    if skipped:
        bad.append(f"{len(skipped)} image(s) not {shape[0]}x{shape[1]} skipped: "
                   + ", ".join(skipped[:5]) + (" ..." if len(skipped) > 5 else ""))
    if bad:
        _notify_warning("napari-berdiff: " + "; ".join(bad))
    stack = np.stack([im for _, im in keep])
    name = folder.name if folder is not None else f"{keep[0][0].stem} stack"
    return [(stack, _oct_kwargs(name, str(folder or keep[0][0].parent), 3,
                                files=[f.name for f, _ in keep]), "image")]
