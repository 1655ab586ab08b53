"""Benchmark of the napari widget: P-slider swaps, threshold-slider moves and GUI responsiveness
during a run.

    xvfb-run -a .venv/bin/python benchmarks/bench_widget.py            # headless
    .venv/bin/python benchmarks/bench_widget.py                        # re-runs itself under xvfb-run
    .venv/bin/python benchmarks/bench_widget.py --preset tiny --json out.json

What it measures: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def ensure_display() -> None:
    if os.environ.get("DISPLAY") or os.environ.get("_BERDIFF_XVFB"):
        return
    if not shutil.which("xvfb-run"):
        sys.exit("no display and no xvfb-run: install xvfb, or run under a display")
    env = dict(os.environ, _BERDIFF_XVFB="1")
    sys.exit(subprocess.call(["xvfb-run", "-a", "-s", "-screen 0 1920x1200x24", sys.executable, *sys.argv], env=env))


def model(preset: str, folder: Path) -> tuple[Path, str]:
    from napari_berdiff.weights import bundled_path

    p = bundled_path("brats")
    if p is not None and preset == "bundled":
        return p, "bundled brats_small.pt"
    return random_model(folder / f"{preset}.pt", preset), f"random {preset}"


def random_model(path: Path, preset: str) -> Path:
    """A randomly initialised 4-channel BraTS-style model of ``preset``; the U-Net's
    zero-initialised output gets some signal so that masks grow."""
    import torch

    from napari_berdiff.core.models.autoencoder import BinaryAutoencoder
    from napari_berdiff.core.models.checkpoint import save_checkpoint
    from napari_berdiff.core.models.configs import get_preset
    from napari_berdiff.core.models.unet import BernoulliUNet

    torch.manual_seed(0)
    ae_cfg, unet_cfg = get_preset(preset, 4)
    ae, unet = BinaryAutoencoder(ae_cfg), BernoulliUNet(unet_cfg)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.2 * torch.randn_like(p))
    meta = {"name": f"random-{preset}", "channel_names": ["flair", "t1", "t1ce", "t2"],
            "modality": "brats", "preprocess": {"mode": "pad"}}
    return save_checkpoint(path, autoencoder=ae, unet=unet, meta=meta)


def run_with_timer(w, app, interval_ms=10):
    """Start a run and spin the real Qt event loop until it ends; returns (seconds, gaps in ms)."""
    from qtpy.QtCore import QEventLoop, QTimer

    stamps: list[float] = []
    timer = QTimer()
    timer.setInterval(interval_ms)
    timer.timeout.connect(lambda: stamps.append(time.perf_counter()))
    loop = QEventLoop()
    ready: list[float] = []
    w.outcome = None  # to notice when this run's first results are displayed
    t0 = time.perf_counter()
    timer.start()
    worker = w.run()
    if worker is None:
        raise SystemExit(f"run refused: {w.c.status.value}")

    def check():
        if not ready and w.outcome is not None:
            ready.append(time.perf_counter() - t0)
        if not w.is_busy():
            loop.quit()

    poll = QTimer()
    poll.setInterval(20)
    poll.timeout.connect(check)
    poll.start()
    loop.exec()
    t1 = time.perf_counter()
    timer.stop()
    poll.stop()
    gaps = np.diff(stamps) * 1000 if len(stamps) > 1 else np.array([0.0])
    return t1 - t0, (ready or [t1 - t0])[0], gaps


def idle_gaps(app, seconds: float, interval_ms=10):
    from qtpy.QtCore import QEventLoop, QTimer

    stamps: list[float] = []
    timer = QTimer()
    timer.setInterval(interval_ms)
    timer.timeout.connect(lambda: stamps.append(time.perf_counter()))
    loop = QEventLoop()
    QTimer.singleShot(int(seconds * 1000), loop.quit)
    timer.start()
    loop.exec()
    timer.stop()
    return np.diff(stamps) * 1000


def p_swaps(w, app, repeats=3):
    slot, paint = [], []
    for _ in range(repeats):
        for p in w.outcome.thresholds:
            t0 = time.perf_counter()
            w.c.P.value = p
            t1 = time.perf_counter()
            app.processEvents()
            t2 = time.perf_counter()
            slot.append((t1 - t0) * 1000)
            paint.append((t2 - t0) * 1000)
    return np.array(slot), np.array(paint)


def calibrated(path: Path, folder: Path) -> Path:
    """``path`` itself when its model is calibrated, else a copy in ``folder`` with a stand-in
    calibration (the cost of a threshold move does not depend on the calibration's values)."""
    from napari_berdiff.core.inference.calibration import Calibration
    from napari_berdiff.core.models.checkpoint import load_checkpoint
    from napari_berdiff.core.models.export import write_meta

    if Calibration.from_meta(load_checkpoint(path).meta) is not None:
        return path
    cal = Calibration.from_values(np.random.default_rng(0).gamma(2.0, 0.005, 200_000))
    return write_meta(path, folder / (path.stem + "_calibrated.pt"),
                      {"calibration": cal.to_meta()}, overwrite=True)


def threshold_moves(w, app, n=12):
    """Move the segmentation-threshold slider over the shown run's map range: (slot ms, with
    repaint ms) per move; every move re-segments the kept maps (no sampling)."""
    if not w.c.seg_threshold.enabled:
        raise SystemExit("the threshold slider is off: the model has no calibration")
    kept = w.segmenter.kept_maps(w.shown)
    values = np.concatenate([kept.map(i).ravel() for i in range(len(kept))])
    runs = w.n_runs
    slot, paint = [], []
    for t in np.percentile(values, np.linspace(50, 99.9, n)):
        t0 = time.perf_counter()
        w.c.seg_threshold.value = float(t)
        t1 = time.perf_counter()
        app.processEvents()
        t2 = time.perf_counter()
        slot.append((t1 - t0) * 1000)
        paint.append((t2 - t0) * 1000)
    if w.n_runs != runs:
        raise SystemExit("a threshold move started a run")
    return np.array(slot), np.array(paint)


def stats(a):
    return {"median": round(float(np.median(a)), 2), "p95": round(float(np.percentile(a, 95)), 2),
            "max": round(float(np.max(a)), 2), "n": int(len(a))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small", choices=["bundled", "small", "tiny"])
    ap.add_argument("--L", type=int, default=200)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--range", type=int, default=10, help="slices in the slice-range run")
    ap.add_argument("--switch-interval", type=float, default=None,
                    help="sys.setswitchinterval for the whole process (Python's default 0.005 s)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    ensure_display()
    if args.switch_interval:
        sys.setswitchinterval(args.switch_interval)

    import napari
    import torch
    from qtpy.QtWidgets import QApplication

    from napari_berdiff.plugin.widget import BerdiffWidget

    tmp = tempfile.TemporaryDirectory()
    ck, desc = model(args.preset, Path(tmp.name))
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1400, 900)
    app = QApplication.instance()
    t = time.perf_counter()
    layers = viewer.open_sample("napari-berdiff", "brats_quick")
    t_sample = time.perf_counter() - t
    w = BerdiffWidget(viewer)
    viewer.window.add_dock_widget(w, name="berdiff")
    w.set_checkpoint(calibrated(Path(ck), Path(tmp.name)))
    w.c.L.value, w.c.steps.value = args.L, args.steps
    w.c.live.value = False
    flair = layers[0]
    viewer.dims.set_point(0, flair.data_to_world((24, 0, 0))[0])
    results = {"model": desc, "L": args.L, "steps": args.steps, "torch_threads": torch.get_num_threads(),
               "cpu_count": os.cpu_count(), "load_avg_start": os.getloadavg(),
               "sample_seconds": round(t_sample, 2), "runs": {}}
    # the GUI thread's own stalls while idle (what the machine's load alone does to a 10 ms timer)
    idle = idle_gaps(app, 2.0)
    results["idle_timer_gap_ms"] = stats(idle)
    print(f"idle: 10 ms timer gaps median {np.median(idle):.1f} ms, p95 {np.percentile(idle, 95):.1f} ms, "
          f"max {idle.max():.1f} ms", flush=True)
    # main-thread time spent turning a finished run into layers
    ready_ms: list[float] = []
    orig_ready = w.runner.on_ready

    def timed_ready(*a):
        t = time.perf_counter()
        orig_ready(*a)
        ready_ms.append((time.perf_counter() - t) * 1000)

    w.runner.on_ready = timed_ready
    for scope in ("current slice", "slice range"):
        w.c.scope.value = scope
        w.c.range_from.value, w.c.range_to.value = 24 - args.range // 2, 24 - args.range // 2 + args.range - 1
        secs, t_ready, gaps = run_with_timer(w, app)
        slot, paint = p_swaps(w, app)
        t_slot, t_paint = threshold_moves(w, app)
        n = len(w.outcome.slices)
        results["runs"][scope] = {
            "slices": n, "P_values": len(w.outcome.thresholds), "run_seconds": round(secs, 2),
            "first_display_seconds": round(t_ready, 2),
            "display_slot_ms": round(ready_ms[-1], 1) if ready_ms else None,
            "timer_gap_ms": stats(gaps), "p_swap_slot_ms": stats(slot), "p_swap_repaint_ms": stats(paint),
            "threshold_move_slot_ms": stats(t_slot), "threshold_move_repaint_ms": stats(t_paint),
            "threshold_move_ms_per_slice": round(float(np.median(t_paint)) / n, 2)}
        print(f"{scope}: {n} slice(s) x {len(w.outcome.thresholds)} P, outputs shown after "
              f"{t_ready:.1f} s (display slot {ready_ms[-1] if ready_ms else float('nan'):.0f} ms), "
              f"run (with all P segmentations) {secs:.1f} s; "
              f"10 ms timer gaps during the run: median {np.median(gaps):.1f} ms, "
              f"p95 {np.percentile(gaps, 95):.1f} ms, max {gaps.max():.1f} ms; "
              f"P swap: slot median {np.median(slot):.1f} ms (max {slot.max():.1f}), "
              f"with repaint median {np.median(paint):.1f} ms (max {paint.max():.1f}); "
              f"threshold move: slot median {np.median(t_slot):.1f} ms (max {t_slot.max():.1f}), "
              f"with repaint median {np.median(t_paint):.1f} ms (max {t_paint.max():.1f}), "
              f"{np.median(t_paint) / n:.1f} ms per slice", flush=True)
    results["load_avg_end"] = os.getloadavg()
    print(json.dumps(results, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    viewer.close()
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
