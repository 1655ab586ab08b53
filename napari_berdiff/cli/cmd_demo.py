"""``berdiff demo [--oct]``: napari with a synthetic case, the bundled model and the widget docked.

Opens the sample BraTS-like case (``--oct``: an OCT B-scan with drusen), docks the anomaly
detection widget with the bundled model for the modality selected (or a clear message in the
widget when that model is not installed; ``--checkpoint`` picks a file instead) and moves to a
slice through the tumour, ready to press Run. ``--run`` presses Run; ``--screenshot PNG`` saves the
window once the run is done and quits (e.g. under ``xvfb-run -a`` on a machine without display).
"""

from __future__ import annotations

import os
import sys


def register(sub) -> None:
    p = sub.add_parser("demo", help="open napari with a sample case and the anomaly detection widget")
    p.add_argument("--oct", action="store_true", help="the OCT sample (B-scan with drusen) instead of the brain")
    p.add_argument("--quick", action="store_true",
                   help="the 40-slice BraTS-like case (faster to generate) instead of the full 240x240x155 one")
    p.add_argument("--checkpoint", default=None, help="a checkpoint file instead of the bundled model")
    p.add_argument("--run", action="store_true", help="press Run once everything is open")
    p.add_argument("--screenshot", default=None, metavar="PNG",
                   help="save a screenshot of the window after the run and quit (implies --run)")
    p.set_defaults(func=run)


def _check_gui() -> None:
    from . import CLIError

    try:
        import napari  # noqa: F401
        import qtpy  # noqa: F401
    except Exception as err:  # ImportError, or qtpy finding no Qt binding
        raise CLIError(f"the demo needs napari with a Qt binding ({err}); install "
                       "'napari-berdiff[gui]' (napari[pyqt6])") from None
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise CLIError("no display: run it on a desktop, or headless as `xvfb-run -a berdiff demo ...`")


def open_demo(oct: bool = False, quick: bool = False, checkpoint: str | None = None, show: bool = True):
    """Build the demo viewer; returns (viewer, widget)."""
    import napari

    viewer = napari.Viewer(title="napari-berdiff demo", show=show)
    sample = "oct" if oct else ("brats_quick" if quick else "brats")
    layers = viewer.open_sample("napari-berdiff", sample)
    _, widget = viewer.window.add_plugin_dock_widget("napari-berdiff", "Anomaly detection")
    if checkpoint:
        widget.set_checkpoint(checkpoint)
    src = layers[0]
    synth = (src.metadata or {}).get("synthetic") or {}
    if src.ndim == 3 and synth.get("label_slices"):
        k0, k1 = synth["label_slices"]
        z = (k0 + k1) // 2  # a slice through the tumour
        viewer.dims.set_point(viewer.dims.ndim - 3, src.data_to_world((z, 0, 0))[0])
    viewer.layers.selection.active = src
    return viewer, widget


def run(args) -> int:
    _check_gui()
    import napari

    viewer, widget = open_demo(args.oct, args.quick, args.checkpoint)
    print(f"berdiff demo: {widget.c.model_info.value}", file=sys.stderr)
    if args.run or args.screenshot:
        if widget.run() is None:
            print(f"berdiff demo: {widget.c.status.value}", file=sys.stderr)
    if args.screenshot:
        from qtpy.QtCore import QTimer

        def poll():
            if widget.is_busy():
                QTimer.singleShot(200, poll)
                return
            viewer.screenshot(args.screenshot, canvas_only=False, flash=False)
            print(f"berdiff demo: {widget.c.status.value}; saved {args.screenshot}", file=sys.stderr)
            viewer.close()

        QTimer.singleShot(200, poll)
    napari.run()
    return 0
