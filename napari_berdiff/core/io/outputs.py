"""What ``berdiff detect`` writes: the ``<stem>_berdiff_<kind>`` names of an input's outputs,
telling earlier outputs from inputs, and the checks that nothing is overwritten (docs/cli.md)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Iterable, Sequence

from .input_kinds import InputItem

__all__ = ["OUTPUT_TAG", "output_paths", "check_outputs", "check_inputs_kept", "is_own_output",
           "OwnOutputs"]

OUTPUT_TAG = "_berdiff_"
# kind -> file ending, for volumes and for 2D images ("seg" is the segmentation; its file says
# "mask": BraTS readers take any "*_seg.nii*", and even any NIfTI containing "seg", for a label)
_VOLUME_OUTPUTS = {"anomaly": "anomaly.nii.gz", "seg": "mask.nii.gz", "recon": "recon.nii.gz"}
_IMAGE_OUTPUTS = {"anomaly": "anomaly.tif", "seg": "mask.png", "recon": "recon.png"}
_TABLE_OUTPUTS = {"scores": "scores.csv", "provenance": "provenance.json"}
_OWN_OUTPUT_RE = re.compile(r"(.+_berdiff_(anomaly|mask|recon|scores|provenance|spread|reference)"
                            r"\.(nii\.gz|nii|tiff?|png|csv|json)"
                            r"|berdiff_summary(_rank\d+)?\.csv)$", re.IGNORECASE)
_LEGACY_PROVENANCE = "_provenance.json"  # before the _berdiff_ names: <stem>_provenance.json


def _listed_outputs(folder: Path) -> set[str]:
    """Names listed as outputs by the provenance JSONs in ``folder`` (also those of older
    versions, which named outputs ``<stem>_seg.png`` etc.), the JSONs themselves included."""
    names: set[str] = set()
    try:
        entries = [e for e in os.scandir(folder) if e.name.lower().endswith(_LEGACY_PROVENANCE)]
    except OSError:
        return names
    for e in entries:
        try:
            if not e.is_file() or e.stat().st_size > 1 << 22:
                continue
            prov = json.loads(Path(e.path).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(prov, dict) and isinstance(prov.get("outputs"), dict) and "detector" in prov:
            names.add(e.name)
            names.update(str(v) for v in prov["outputs"].values())
    return names


class OwnOutputs:
    """``own(path)``: is ``path`` an output of ``berdiff detect`` (by name, or listed by a
    provenance JSON in its folder)? Caches each folder's listing."""

    def __init__(self) -> None:
        self._listed: dict[Path, set[str]] = {}

    def __call__(self, path: Path) -> bool:
        if is_own_output(path):
            return True
        folder = path.parent
        if folder not in self._listed:
            self._listed[folder] = _listed_outputs(folder)
        return path.name in self._listed[folder]


def is_own_output(path: str | Path) -> bool:
    """Whether the file name is one ``berdiff detect`` gives outputs (``*_berdiff_<kind>.*``,
    ``berdiff_summary.csv``)."""
    return _OWN_OUTPUT_RE.match(Path(path).name) is not None


def output_paths(item: InputItem, out_dir: str | Path) -> dict[str, Path]:
    """The files :func:`napari_berdiff.cli.cmd_detect` writes for ``item``: kind -> path
    (``anomaly``, ``seg``, ``recon``, ``scores``, ``provenance``)."""
    names = (_IMAGE_OUTPUTS if item.is_2d else _VOLUME_OUTPUTS) | _TABLE_OUTPUTS
    return {k: Path(out_dir) / f"{item.name}{OUTPUT_TAG}{v}" for k, v in names.items()}


def check_outputs(paths: Iterable[Path], overwrite: bool) -> None:
    """Raise FileExistsError naming existing outputs unless ``overwrite``."""
    if overwrite:
        return
    existing = [Path(p) for p in paths if Path(p).exists()]
    if existing:
        more = f" and {len(existing) - 3} more" if len(existing) > 3 else ""
        raise FileExistsError(f"output(s) already exist: {', '.join(map(str, existing[:3]))}{more}; "
                              "pass --overwrite to replace them")


def check_inputs_kept(items: Sequence[InputItem], out_dir: str | Path) -> None:
    """Raise ValueError when an output of ``items`` is (a link to) one of their input files: no
    input is ever replaced, not even with ``--overwrite``. The files of a BraTS case folder
    (other than detect outputs) all count as inputs."""
    ids: dict[tuple[int, int], Path] = {}
    for it in items:
        if it.kind == "invalid":
            continue
        try:
            files = ([f for f in it.path.iterdir() if not is_own_output(f)]
                     if it.path.is_dir() else [it.path])
        except OSError:
            continue
        for f in files:
            try:
                st = f.stat()
            except OSError:
                continue
            ids[(st.st_dev, st.st_ino)] = f
    for it in items:
        if it.kind == "invalid":
            continue
        for p in output_paths(it, out_dir).values():
            try:
                st = p.stat()
            except OSError:
                continue
            hit = ids.get((st.st_dev, st.st_ino))
            if hit is not None:
                raise ValueError(f"the output {p} would replace the input {hit}; "
                                 "choose another --out")
