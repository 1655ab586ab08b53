"""README screenshots from the real napari viewer (under Xvfb when there is no display).

    .venv/bin/python scripts/screenshots.py                 # bundled models, PNGs into docs/images/
    .venv/bin/python scripts/screenshots.py --random-models # no bundled model yet: random "small" ones

Each scene is what ``berdiff demo`` opens, run with the widget's defaults: ``brats_widget.png``,
``brats_mask_evolution.png``, ``oct_side_by_side.png``, and the P-slider pair
``brats_P0.3.png`` / ``brats_P0.9.png`` (the same run's segmentation at two thresholds P).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def ensure_display() -> None:
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") or os.environ.get("_BERDIFF_XVFB"):
        return
    if not shutil.which("xvfb-run"):
        sys.exit("no display and no xvfb-run: install xvfb (apt-get install xvfb xauth)")
    env = dict(os.environ, _BERDIFF_XVFB="1")
    cmd = ["xvfb-run", "-a", "-s", "-screen 0 1920x1200x24", sys.executable, *sys.argv]
    sys.exit(subprocess.call(cmd, env=env))


def random_models(folder: Path) -> dict[str, Path]:
    """Randomly initialised "small" models (for when the bundled ones are not trained yet)."""
    import torch

    from napari_berdiff.core.models.autoencoder import BinaryAutoencoder
    from napari_berdiff.core.models.checkpoint import save_checkpoint
    from napari_berdiff.core.models.configs import get_preset
    from napari_berdiff.core.models.unet import BernoulliUNet

    out = {}
    for name, c, names, mode in (("brats", 4, ["flair", "t1", "t1ce", "t2"], "pad"), ("oct", 1, ["oct"], "resize")):
        torch.manual_seed(0)
        ae_cfg, unet_cfg = get_preset("small", c)
        ae, unet = BinaryAutoencoder(ae_cfg), BernoulliUNet(unet_cfg)
        with torch.no_grad():
            for p in unet.parameters():
                p.add_(0.05 * torch.randn_like(p))
        out[name] = save_checkpoint(folder / f"random_{name}_small.pt", autoencoder=ae, unet=unet,
                                    meta={"name": f"random {name} (untrained)", "channel_names": names,
                                          "modality": name, "preprocess": {"mode": mode}})
    return out


def wait(widget, app, timeout=900.0) -> None:
    t0 = time.time()
    while widget.is_busy() and time.time() - t0 < timeout:
        app.processEvents()
        time.sleep(0.02)
    settle(app)


def settle(app, seconds=0.5) -> None:
    t0 = time.time()
    while time.time() - t0 < seconds:
        app.processEvents()
        time.sleep(0.02)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "docs" / "images"))
    ap.add_argument("--random-models", action="store_true",
                    help="use randomly initialised small models where no bundled model exists")
    ap.add_argument("--brats-checkpoint", default=None)
    ap.add_argument("--oct-checkpoint", default=None)
    ap.add_argument("--quick", action="store_true", help="the 40-slice BraTS-like case")
    ap.add_argument("--half-width", type=int, default=5, help="slices each side of the tumour centre")
    ap.add_argument("--p-pair", type=float, nargs=2, default=(0.3, 0.9), metavar=("P1", "P2"),
                    help="the P slider positions of the pair brats_P<P1>.png / brats_P<P2>.png "
                         "(both in the widget's sweep: the slider swaps results, no new run)")
    args = ap.parse_args(argv)
    ensure_display()

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_berdiff.cli.cmd_demo import open_demo
    from napari_berdiff.weights import bundled_path

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ck = {"brats": args.brats_checkpoint or bundled_path("brats"),
          "oct": args.oct_checkpoint or bundled_path("oct")}
    tmp = None
    if args.random_models and not all(ck.values()):
        tmp = tempfile.TemporaryDirectory()
        rnd = random_models(Path(tmp.name))
        for k in ck:
            if not ck[k]:
                ck[k] = rnd[k]
                print(f"screenshots: no bundled {k} model: using a random untrained one", file=sys.stderr)
    # -- BraTS: anomaly map over FLAIR, score plot over a slice range ----------------------
    # a bundled model stays "bundled" in the widget, as the demo shows it
    viewer, w = open_demo(quick=args.quick, checkpoint=None if ck["brats"] == bundled_path("brats") else ck["brats"])
    viewer.window.resize(1700, 1050)
    app = QApplication.instance()
    src = w.inputs.source()[0][0]
    z = int(round(src.world_to_data(viewer.dims.point)[0]))
    w.c.scope.value = "slice range"
    w.c.range_from.value, w.c.range_to.value = z - args.half_width, z + args.half_width
    if w.run() is None:
        print(f"screenshots: {w.c.status.value}", file=sys.stderr)
    wait(w, app)
    base = w.context.base if w.context else None
    if base:
        viewer.layers[f"{base} ground truth"].visible = False
        viewer.layers.selection.active = viewer.layers[f"{base} anomaly map"]
    settle(app)
    viewer.screenshot(str(out / "brats_widget.png"), canvas_only=False, flash=False)
    if base:  # the P slider pair: the same run, the segmentation at two thresholds P
        viewer.layers[f"{base} anomaly map"].visible = False
        seg = viewer.layers[f"{base} segmentation"]
        cam = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera  # napari >= 0.9
        seg.visible, contour, zoom = True, seg.contour, cam.zoom
        seg.contour, cam.zoom = 0, zoom * 2.5  # filled, and the brain fills the canvas
        for P in args.p_pair:
            w.c.P.value = P
            settle(app)
            viewer.screenshot(str(out / f"brats_P{P:g}.png"), canvas_only=True, flash=False)
        seg.contour, cam.zoom = contour, zoom
        viewer.layers[f"{base} anomaly map"].visible = True
    if base:
        for name in ("anomaly map", "segmentation"):
            viewer.layers[f"{base} {name}"].visible = False
        mask = viewer.layers[f"{base} mask evolution"]
        mask.visible = True
        viewer.layers.selection.active = mask
        settle(app)
        viewer.screenshot(str(out / "brats_mask_evolution.png"), canvas_only=True, flash=False)
    viewer.close()

    # -- OCT: side by side ----------------------------------------------------------------
    viewer, w = open_demo(oct=True, checkpoint=None if ck["oct"] == bundled_path("oct") else ck["oct"])
    viewer.window.resize(1700, 1050)
    if w.run() is not None:
        wait(w, app)
        w.toggle_side_by_side()
        viewer.reset_view()
    settle(app, 1.0)
    viewer.screenshot(str(out / "oct_side_by_side.png"), canvas_only=False, flash=False)
    viewer.close()
    for p in sorted(out.glob("*.png")):
        print(p)
    if tmp is not None:
        tmp.cleanup()
    napari.Viewer.close_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
