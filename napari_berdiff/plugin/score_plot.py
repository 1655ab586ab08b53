"""Dock widget: a score per slice as a matplotlib plot. The score is a choice: the masked fraction
(the paper's image-level score; the other swept P values drawn faintly), the segmented area (pixels
above the threshold in force) or the robust peak of the filtered map (the triage scores of
:mod:`napari_berdiff.core.inference.triage`).

A vertical cursor follows the viewer's current slice (``viewer.dims.events.current_step``); a click
on the plot moves the viewer to the nearest slice that was run, and "most anomalous slice" to the
slice with the highest score.
"""

from __future__ import annotations

import numpy as np
from qtpy.QtWidgets import QComboBox, QHBoxLayout, QPushButton, QVBoxLayout, QWidget

# (key, menu text, y-axis label): the keys of triage.SCORE_NAMES
SCORES = (("masked_fraction", "masked fraction", "masked fraction"),
          ("area", "segmented area", "segmented area (px)"),
          ("peak", "robust peak", "robust peak (99.9th pct of the map)"))
DEFAULT_SCORE = "masked_fraction"


class ScorePlot(QWidget):
    """The plot of one widget's last run; ``set_data`` after each run, P swap or new threshold."""

    def __init__(self, viewer, parent=None):
        super().__init__(parent)
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.viewer = viewer
        self.source = None
        self.slices = np.zeros(0, int)
        self.series: dict[str, np.ndarray] = {}  # score key -> (N,) values of the shown P
        self.ylabels = {key: label for key, _, label in SCORES}
        self.figure = Figure(figsize=(4, 2.4), tight_layout=True)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.ax = self.figure.add_subplot(111)
        self.cursor = None
        self._line = None
        self._sweep = None
        self._thresholds, self._P = None, None
        self.choice = QComboBox()
        for key, text, _ in SCORES:
            self.choice.addItem(text, key)
        self.jump_button = QPushButton("most anomalous slice")
        self.jump_button.setToolTip("move the viewer to the slice with the highest score")
        self.jump_button.setEnabled(False)
        row = QHBoxLayout()
        row.addWidget(self.choice)
        row.addWidget(self.jump_button)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(2, 2, 2, 2)
        lay.addLayout(row)
        lay.addWidget(self.canvas)
        self.setMinimumHeight(200)
        self.setMaximumHeight(330)
        self.canvas.mpl_connect("button_press_event", self._on_click)
        self.choice.currentIndexChanged.connect(self._on_choice)
        self.jump_button.clicked.connect(self.jump_to_most_anomalous)
        viewer.dims.events.current_step.connect(self._on_step)
        self._draw_empty()

    @property
    def score(self) -> str:
        """The chosen score's key (``masked_fraction``, ``area`` or ``peak``)."""
        return self.choice.currentData()

    def set_score(self, key: str) -> None:
        self.choice.setCurrentIndex(self.choice.findData(key))

    def _draw_empty(self):
        self.ax.clear()
        self.ax.set_xlabel("slice")
        self.ax.set_ylabel(self.ylabels[self.score])
        self.ax.text(0.5, 0.5, "run the detector to see scores", ha="center", va="center",
                     transform=self.ax.transAxes, color="0.5")
        self.canvas.draw_idle()

    def set_data(self, source, slices, fractions, sweep=None, thresholds=None, P=None,
                 scores: dict | None = None, ylabels: dict | None = None):
        """``fractions`` (N,) the masked fraction of the shown P, ``sweep`` (K, N) drawn faintly
        for the others; ``scores`` the other scores' (N,) values by key, ``ylabels`` their axis
        labels where they differ from the default (e.g. the threshold of the area)."""
        same_run = sweep is not None and sweep is self._sweep and source is self.source
        self.series = {"masked_fraction": np.asarray(fractions, float),
                       **{k: np.asarray(v, float) for k, v in (scores or {}).items()}}
        self.ylabels = {key: label for key, _, label in SCORES} | dict(ylabels or {})
        self._thresholds, self._P = thresholds, P
        self.jump_button.setEnabled(source is not None and source.ndim >= 3 and len(slices) > 1)
        if same_run and self._line is not None and self.score == "masked_fraction":
            self._line.set_ydata(fractions)  # a P swap within the same run: move the highlight only
            self._line.set_label(f"P = {P:g}" if P is not None else None)
            self.ax.legend(loc="upper right", fontsize="small", frameon=False)
            self.canvas.draw_idle()
            return
        self._sweep = sweep
        self.source = source
        self.slices = np.asarray(slices, int)
        self._draw()

    def _on_choice(self, *_):
        if self.source is None:
            self._draw_empty()
        else:
            self._draw()

    def _draw(self):
        ax, key = self.ax, self.score
        values = self.series.get(key, np.full(len(self.slices), np.nan))
        few = len(self.slices) < 3
        ax.clear()
        sweep, thresholds, P = self._sweep, self._thresholds, self._P
        faint = key == "masked_fraction" and sweep is not None and thresholds is not None \
            and len(thresholds) > 1
        if faint:
            for row in sweep:
                ax.plot(self.slices, row, color="0.75", lw=0.8, marker="." if few else None)
        label = f"P = {P:g}" if P is not None else None
        (self._line,) = ax.plot(self.slices, values, color="tab:orange", lw=1.6,
                                marker="o" if few else None, label=label)
        ax.set_xlabel("image" if self.source is not None and self.source.ndim < 3 else "slice")
        ax.set_ylabel(self.ylabels.get(key, key))
        top = np.nanmax(sweep) if faint and np.size(sweep) else (
            np.nanmax(values) if np.isfinite(values).any() else 0.0)
        ax.set_ylim(0, max(float(top) * 1.1, 1e-3))
        if len(self.slices) <= 12:
            ax.set_xticks(self.slices)
        if label is not None:
            ax.legend(loc="upper right", fontsize="small", frameon=False)
        self.cursor = ax.axvline(self._current(), color="tab:blue", lw=1)
        # the x range is the slices that ran: a cursor on another slice must not stretch the axis
        # (the slice ticks would pile up); it is simply out of view then
        pad = 1.0 if len(self.slices) == 1 else 0.5
        ax.set_xlim(float(self.slices.min()) - pad, float(self.slices.max()) + pad)
        self.canvas.draw_idle()

    def most_anomalous(self) -> int | None:
        """The slice (layer index) with the highest chosen score (None without one)."""
        values = self.series.get(self.score)
        if values is None or not len(self.slices) or not np.isfinite(values).any():
            return None
        return int(self.slices[int(np.nanargmax(values))])

    def jump_to_most_anomalous(self, *_) -> int | None:
        """Move the viewer to :meth:`most_anomalous`; returns that slice."""
        idx = self.most_anomalous()
        if idx is not None and self.source is not None and self.source.ndim >= 3:
            self.jump_to(idx)
        return idx

    def _current(self) -> float:
        if self.source is None or self.source.ndim < 3:
            return float(self.slices[0]) if len(self.slices) else 0.0
        return float(np.round(self.source.world_to_data(self.viewer.dims.point)[0]))

    def _on_step(self, event=None):
        if self.cursor is None or self.source is None:
            return
        x = self._current()
        self.cursor.set_xdata([x, x])
        self.canvas.draw_idle()

    def _on_click(self, event):
        if event.xdata is None or self.source is None or self.source.ndim < 3 or not len(self.slices):
            return
        idx = int(self.slices[np.argmin(np.abs(self.slices - event.xdata))])
        self.jump_to(idx)

    def jump_to(self, idx: int) -> None:
        """Move the viewer to slice ``idx`` of the source layer (its first axis)."""
        src = self.source
        pos = np.asarray(src.world_to_data(self.viewer.dims.point), float)
        pos[0] = idx
        world = np.asarray(src.data_to_world(pos), float)
        axis = self.viewer.dims.ndim - getattr(src, "world_ndim", src.ndim)  # its first axis
        self.viewer.dims.set_point(axis, float(world[0]))

    def closeEvent(self, event):  # noqa: N802 (Qt)
        try:
            self.viewer.dims.events.current_step.disconnect(self._on_step)
        except Exception:
            pass
        super().closeEvent(event)


PLOT_DOCK = "berdiff: scores per slice"


def dock_plot(viewer) -> ScorePlot:
    """A new plot docked on the right of the viewer's window (where it has one)."""
    plot = ScorePlot(viewer)
    window = getattr(viewer, "window", None)
    if window is not None:
        window.add_dock_widget(plot, name=PLOT_DOCK, area="right")
    return plot


def undock_plot(viewer, plot) -> None:
    """Remove the plot's dock (nothing when it went with the viewer)."""
    window = getattr(viewer, "window", None)
    if plot is not None and window is not None:
        try:
            window.remove_dock_widget(plot)
        except (LookupError, RuntimeError, AttributeError):
            pass  # already gone with the viewer


class ScoreDock:
    """The widget's score plot: docked at the first run (importing matplotlib's Qt backend takes
    a second, better spent while the sampler starts than when results arrive), fed each display,
    removed with the widget."""

    def __init__(self, viewer):
        self.viewer = viewer
        self.plot: ScorePlot | None = None

    def ensure(self) -> ScorePlot:
        if self.plot is None:
            self.plot = dock_plot(self.viewer)
        return self.plot

    def show(self, outcome, k: int, ctx, segmenter) -> None:
        """The scores of swept P index ``k`` of the shown run (its segmentation by the rule in
        force, its peaks from the kept maps of the ``segmenter``)."""
        from .segmenter import slice_scores

        scores, ylabels = slice_scores(outcome, k, segmenter)
        self.ensure().set_data(ctx.src, outcome.slices, outcome.masked_fraction[k],
                               outcome.masked_fraction, outcome.thresholds, outcome.thresholds[k],
                               scores, ylabels)

    def close(self) -> None:
        plot, self.plot = self.plot, None
        undock_plot(self.viewer, plot)
