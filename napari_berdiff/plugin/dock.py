"""The widget's place in napari: its layout and the Qt/napari lifecycle workarounds, in one place.

- The settings scroll; Run, Cancel and the status line stay pinned below them.
- The dock widens to the settings once the model's input rows exist (they are made after the
  first layout), so that no control sits behind the horizontal scroll bar.
- napari's close button on the dock takes the widget out of it (``setParent(None)``) without a
  ``closeEvent``: leaving the dock after having been in one counts as removal.
- Qt deletes the controls when the viewer closes during a run: :meth:`Dock.alive` tells.
"""

from __future__ import annotations

from typing import Callable

from qtpy.QtCore import QEvent, QObject, Qt, QTimer
from qtpy.QtWidgets import QFrame, QScrollArea, QVBoxLayout

__all__ = ["Dock"]


class Dock(QObject):
    """Lays ``controls`` out in ``widget`` and watches its lifecycle (an event filter on it):
    ``on_removed()`` when the widget leaves the viewer, ``on_close()`` on a close event."""

    def __init__(self, widget, controls, *, on_removed: Callable[[], None],
                 on_close: Callable[[], None]):
        super().__init__(widget)
        self.controls = controls
        self._on_removed, self._on_close = on_removed, on_close
        self._docked = False
        scroll = QScrollArea()  # the controls stay usable when the dock is short
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        # combo boxes are elided and info texts wrap, so the settings fit the dock's width; a
        # horizontal scroll bar appears only if something still does not (never a cut-off control)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        scroll.setWidget(controls.container.native)
        self.scroll = scroll
        self.widget = widget
        hint = controls.container.native.sizeHint()
        footer = controls.footer.native
        widget.setMinimumSize(hint.width() + scroll.verticalScrollBar().sizeHint().width() + 4,
                              min(hint.height() + footer.sizeHint().height() + 8, 560))
        lay = QVBoxLayout(widget)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(scroll)
        lay.addWidget(footer)  # Run, Cancel and the status line: always in sight
        widget.installEventFilter(self)

    def fit_width(self) -> None:
        """Widen the dock to the settings (see the module text)."""
        try:
            need = (self.controls.container.native.minimumSizeHint().width()
                    + self.scroll.verticalScrollBar().sizeHint().width() + 4)
            if need > self.widget.minimumWidth():
                self.widget.setMinimumWidth(need)
        except RuntimeError:  # deleted with the viewer before a queued call arrived
            pass

    def fit_width_later(self) -> None:
        """:meth:`fit_width` once new rows are laid out."""
        QTimer.singleShot(0, self.fit_width)

    def alive(self) -> bool:
        """Whether Qt still has the controls (False once the viewer closed)."""
        try:
            self.controls.status.native.objectName()
        except RuntimeError:
            return False
        return True

    def eventFilter(self, obj, ev) -> bool:  # noqa: N802 (Qt)
        kind = ev.type()
        if kind == QEvent.Type.ParentChange:
            if self.widget.parent() is not None:
                self._docked = True
            elif self._docked:
                self._docked = False
                self._on_removed()
        elif kind == QEvent.Type.Show:
            self.fit_width()
        elif kind == QEvent.Type.Close:
            self._on_close()
        return False
