"""Shared pieces of the napari plugin tests: tiny random models and small volumes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

BRATS_NAMES = ["flair", "t1", "t1ce", "t2"]


def tiny_checkpoint(path: Path, channels: int = 4, seed: int = 0, names=None, modality=None,
                    preset: str = "tiny", mode: str = "pad", canvas: int | None = None,
                    max_L: int | None = None) -> Path:
    """A randomly initialised model of ``preset`` saved with ``save_checkpoint``; the U-Net gets
    some signal in its zero-initialised output so that masks grow."""
    import torch

    from napari_berdiff.core.models.autoencoder import BinaryAutoencoder
    from napari_berdiff.core.models.checkpoint import save_checkpoint
    from napari_berdiff.core.models.configs import get_preset
    from napari_berdiff.core.models.unet import BernoulliUNet

    torch.manual_seed(seed)
    ae_cfg, unet_cfg = get_preset(preset, channels)
    ae, unet = BinaryAutoencoder(ae_cfg), BernoulliUNet(unet_cfg)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.2 * torch.randn_like(p))
    if names is None:
        names = BRATS_NAMES if channels == 4 else ["oct"] if channels == 1 else []
    meta = {"name": f"test-{preset}-{channels}ch", "channel_names": list(names),
            "modality": modality or ("brats" if channels == 4 else "oct"),
            "preprocess": {"mode": mode, **({"canvas": canvas} if canvas else {})}}
    if max_L is not None:
        meta["max_L"] = int(max_L)
    return save_checkpoint(path, autoencoder=ae, unet=unet, meta=meta)


def small_case(shape=(6, 48, 48), seed=0):
    """Four modality volumes (Z, Y, X) with a bright blob, plus an axis-aligned NIfTI affine."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    brain = (y**2 + x**2) < 0.8
    blob = ((y - 0.2) ** 2 + (x + 0.1) ** 2) < 0.05
    vols = []
    for c in range(4):
        v = (0.4 + 0.1 * c) * brain + 0.5 * blob + 0.05 * rng.random(shape)
        vols.append((v * brain * 1000).astype(np.float32))
    return vols


def add_small_case(viewer, shape=(6, 48, 48), name="case", scale=(3.0, 1.5, 1.5),
                   translate=(-10.0, 5.0, -20.0)):
    """Add the four modality layers (named like the reader's) with a non-trivial geometry."""
    layers = []
    for mod, vol in zip(("FLAIR", "T1", "T1ce", "T2"), small_case(shape)):
        layers.append(viewer.add_image(vol, name=f"{name} {mod}", scale=scale, translate=translate,
                                       metadata={"modality": mod.lower(), "case": name}))
    return layers


WIDGET_TIMEOUT = 120_000  # ms


def configure(w, ckpt, L=20, steps=3, sweep="0.5", P=0.5, scope=None):
    """Set the widget's model and run settings (small and fast)."""
    w.set_checkpoint(ckpt)
    w.c.L.value = L
    w.c.steps.value = steps
    w.c.sweep.value = sweep
    w.c.P.value = P
    if scope is not None:
        w.c.scope.value = scope
    return w


def new_widget(viewer, ckpt, **settings):
    """A BerdiffWidget on ``viewer`` with :func:`configure`'s settings."""
    from napari_berdiff.plugin.widget import BerdiffWidget

    return configure(BerdiffWidget(viewer), ckpt, **settings)


def run_and_wait(qtbot, w):
    """Run and wait until the run is over; it must have finished with results."""
    worker = w.run()
    assert worker is not None, w.c.status.value
    qtbot.waitUntil(lambda: not w.is_busy(), timeout=WIDGET_TIMEOUT)
    assert w.outcome is not None, w.c.status.value
    assert w.c.status.value.startswith("done:"), w.c.status.value  # not overwritten by a late tick
    return worker
