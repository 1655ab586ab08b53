"""Dock widget: the masked fraction per slice (the image-level anomaly score) as a matplotlib plot.

A vertical cursor follows the viewer's current slice (``viewer.dims.events.current_step``); a click
on the plot moves the viewer to the nearest slice that was run.
"""

from __future__ import annotations

import numpy as np
from qtpy.QtWidgets import QVBoxLayout, QWidget


class ScorePlot(QWidget):
    """The plot of one widget's last run; ``set_data`` after each run or P swap."""

    def __init__(self, viewer, parent=None):
        super().__init__(parent)
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.viewer = viewer
        self.source = None
        self.slices = np.zeros(0, int)
        self.figure = Figure(figsize=(4, 2.4), tight_layout=True)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.ax = self.figure.add_subplot(111)
        self.cursor = None
        self._line = None
        self._sweep = None
        lay = QVBoxLayout(self)
        lay.setContentsMargins(2, 2, 2, 2)
        lay.addWidget(self.canvas)
        self.setMinimumHeight(180)
        self.setMaximumHeight(300)
        self.canvas.mpl_connect("button_press_event", self._on_click)
        viewer.dims.events.current_step.connect(self._on_step)
        self._draw_empty()

    def _draw_empty(self):
        self.ax.clear()
        self.ax.set_xlabel("slice")
        self.ax.set_ylabel("masked fraction")
        self.ax.text(0.5, 0.5, "run the detector to see scores", ha="center", va="center",
                     transform=self.ax.transAxes, color="0.5")
        self.canvas.draw_idle()

    def set_data(self, source, slices, fractions, sweep=None, thresholds=None, P=None):
        """``fractions`` (N,) for the shown P; ``sweep`` (K, N) drawn faintly for the others."""
        if self._line is not None and sweep is not None and sweep is self._sweep and source is self.source:
            self._line.set_ydata(fractions)  # a P swap within the same run: move the highlight only
            self._line.set_label(f"P = {P:g}" if P is not None else None)
            self.ax.legend(loc="upper right", fontsize="small", frameon=False)
            self.canvas.draw_idle()
            return
        self._sweep = sweep
        self.source = source
        self.slices = np.asarray(slices, int)
        ax = self.ax
        ax.clear()
        if sweep is not None and thresholds is not None and len(thresholds) > 1:
            for _p, row in zip(thresholds, sweep):
                ax.plot(self.slices, row, color="0.75", lw=0.8, marker="." if len(slices) < 3 else None)
        (self._line,) = ax.plot(self.slices, fractions, color="tab:orange", lw=1.6,
                                marker="o" if len(slices) < 3 else None,
                                label=f"P = {P:g}" if P is not None else None)
        ax.set_xlabel("slice")
        ax.set_ylabel("masked fraction")
        hi = float(np.nanmax(sweep)) if sweep is not None and np.size(sweep) else float(np.nanmax(fractions))
        ax.set_ylim(0, max(hi * 1.1, 1e-3))
        if len(self.slices) <= 12:
            ax.set_xticks(self.slices)
        if source is not None and source.ndim < 3:
            ax.set_xlabel("image")
        if P is not None:
            ax.legend(loc="upper right", fontsize="small", frameon=False)
        self.cursor = ax.axvline(self._current(), color="tab:blue", lw=1)
        # the x range is the slices that ran: a cursor on another slice must not stretch the axis
        # (the slice ticks would pile up); it is simply out of view then
        pad = 1.0 if len(self.slices) == 1 else 0.5
        ax.set_xlim(float(self.slices.min()) - pad, float(self.slices.max()) + pad)
        self.canvas.draw_idle()

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


PLOT_DOCK = "berdiff: masked fraction per slice"


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
