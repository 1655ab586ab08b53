"""Training records: the JSONL log, the loss-curve PNG and image grids (matplotlib, Agg backend).

``log.jsonl`` holds one JSON object per logged step: ``{"step", "epoch", "lr", "samples_per_s",
"wall_s", <loss name>: value, ...}``; the losses are means over the steps since the previous line
(and over the ranks under DDP). Plots are drawn without pyplot (a ``Figure`` on an Agg canvas),
so they work headless and never touch a GUI's event loop.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

__all__ = ["JsonlLog", "read_log", "plot_losses", "save_image_grid"]

_NOT_LOSSES = {"step", "time", "wall_s", "lr", "samples_per_s", "epoch"}


def read_log(path: str | os.PathLike) -> list[dict]:
    """The records of a ``log.jsonl`` (a torn last line from a killed run is skipped)."""
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


class JsonlLog:
    """Append-only JSONL log; :meth:`truncate` drops the records after a resumed step."""

    def __init__(self, path: str | os.PathLike, *, fresh: bool) -> None:
        self.path = Path(path)
        self.records: list[dict] = [] if fresh else read_log(self.path)
        if fresh and self.path.exists():
            self.path.unlink()

    def truncate(self, step: int) -> None:
        """Keep only the records up to ``step`` (those after it belong to a run that was lost)."""
        self.records = [r for r in self.records if int(r.get("step", 0)) <= step]
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            for r in self.records:
                fh.write(json.dumps(r) + "\n")
        os.replace(tmp, self.path)

    def write(self, record: dict) -> None:
        self.records.append(record)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")


def _figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp)
    os.replace(tmp, path)


_MAIN = ("loss", "rec", "lpips", "bce", "g", "d")


def plot_losses(records: Sequence[dict], path: str | os.PathLike, title: str = "") -> None:
    """Loss curves against the step: the losses on the left (log scale where all are > 0), other
    logged diagnostics (adaptive weight, logits, bit balance) on the right."""
    keys: list[str] = []
    for r in records:
        for k, v in r.items():
            if k not in _NOT_LOSSES and k not in keys and isinstance(v, (int, float)):
                keys.append(k)
    if not keys:
        return
    groups = [[k for k in keys if k in _MAIN], [k for k in keys if k not in _MAIN]]
    groups = [g for g in groups if g]
    fig = _figure(5.0 * len(groups), 3.2)
    fig.subplots_adjust(left=0.08 if len(groups) == 2 else 0.14, right=0.97, bottom=0.15,
                        top=0.86, wspace=0.25)
    for i, group in enumerate(groups):
        ax = fig.add_subplot(1, len(groups), i + 1)
        positive = True
        for k in group:
            pts = [(r["step"], r[k]) for r in records if isinstance(r.get(k), (int, float))
                   and math.isfinite(r[k])]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, lw=1, label=k)
                positive = positive and min(ys) > 0
        if i == 0 and positive:
            ax.set_yscale("log")
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7, loc="upper right")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=9)
    _save(fig, Path(path))


def save_image_grid(columns: Iterable[tuple[str, torch.Tensor]], path: str | os.PathLike,
                    title: str = "") -> None:
    """A grid with one row per (image, channel) and one column per named (N, C, H, W) batch.

    Values are shown in grey with the range [0, 1] (maps with larger values are rescaled by their
    own maximum, noted in the column title).
    """
    cols = [(name, t.detach().float().cpu()) for name, t in columns]
    if not cols:
        return
    n, c = cols[0][1].shape[:2]
    rows = n * c
    fig = _figure(1.3 * len(cols) + 0.4, 1.3 * rows + 0.5)
    for j, (name, t) in enumerate(cols):
        vmax = float(t.max()) if float(t.max()) > 1.0 else 1.0
        for i in range(rows):
            b, ch = divmod(i, c)
            ax = fig.add_subplot(rows, len(cols), i * len(cols) + j + 1)
            img = t[b, min(ch, t.shape[1] - 1)].numpy() if b < t.shape[0] else np.zeros((2, 2))
            ax.imshow(img, cmap="gray", vmin=0.0, vmax=vmax, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(name if vmax == 1.0 else f"{name} (/{vmax:.2g})", fontsize=7)
            if j == 0 and c > 1:
                ax.set_ylabel(f"#{b} c{ch}", fontsize=6)
    if title:
        fig.suptitle(title, fontsize=8)
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.02, top=1 - 0.55 / fig.get_figheight(),
                        wspace=0.08, hspace=0.12)
    _save(fig, Path(path))
