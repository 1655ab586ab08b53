"""The shipped models: what the README claims about them holds on freshly generated images.

These run the bundled weights (a few seconds on the CPU). They skip when a wheel was built without
the weights.
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_berdiff.core.synth.oct import make_bscan
from napari_berdiff.core.inference.detector import Detector
from napari_berdiff.weights import bundled_path

pytestmark = pytest.mark.usefixtures("one_thread")


def _detector(modality: str) -> Detector:
    path = bundled_path(modality)
    if path is None:
        pytest.skip(f"no bundled {modality} model installed")
    return Detector.from_checkpoint(path, device="cpu")


@pytest.fixture(scope="module")
def drusen_scans():
    scans = [make_bscan(seed, drusen=3) for seed in (101, 102)]
    x = np.stack([s[0] for s in scans])[:, None]
    masks = np.stack([s[1] for s in scans]).astype(bool)
    return x, masks


def test_bundled_models_describe_themselves():
    for modality, channels in (("brats", 4), ("oct", 1)):
        det = _detector(modality)
        assert det.in_channels == channels
        assert len(det.meta["channel_names"]) == channels
        assert 200 <= det.max_L <= 1000  # the README's L = 200 is within the trained range
        assert det.meta["trained_with"] and det.meta["autoencoder_training"]


def test_bundled_codes_are_nearly_deterministic(drusen_scans):
    """The autoencoder's bits are (almost) a function of the image: the stochastic and the
    deterministic encoding decode to nearly the same image. A code of coin flips (the v1 models:
    0.42-0.46 nats per bit) is noise the diffusion model cannot learn."""
    x, _ = drusen_scans
    det = _detector("oct")
    kw = dict(L=200, P=1.0, steps=1, seed=0, normalize="none")
    sto = det.detect(x, **kw).reconstruction[0]
    dtm = det.detect(x, deterministic_encoding=True, **kw).reconstruction[0]
    assert float(np.abs(sto - dtm).mean()) < 0.007  # v1: 0.0107, v2: 0.0043


def test_bundled_oct_model_finds_drusen(drusen_scans):
    x, masks = drusen_scans
    det = _detector("oct")
    res = det.detect(x, L=200, P=[0.5], steps=10, seed=0, normalize="none")
    amap = res.anomaly_map[0]
    inside = amap[masks].mean()
    outside = amap[~masks].mean()
    assert inside > 5 * outside, (inside, outside)
