"""The CUDA path end to end (skipped without a GPU): autocast vs float32, batched == chunked,
channels_last, torch.compile (or its fallback), and the peak memory against the batch planner's
estimate."""

import warnings

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

from napari_berdiff.core.inference import batching  # noqa: E402
from napari_berdiff.core.inference.detector import Detector  # noqa: E402
from tests.test_detector import images, make_detector  # noqa: E402


def on_cuda(amp="off", **kw) -> Detector:
    d = make_detector(c=2)
    return Detector(d.autoencoder, d.unet, device="cuda", amp=amp, **kw)


@pytest.fixture
def full_fp32():
    """No TF32 in convolutions / matmuls (cuDNN's default allows it in convolutions), so that
    different batch sizes differ only by float32 summation order."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def test_batched_equals_chunked_on_cuda(full_fp32):
    x = images(n=6)
    kw = dict(L=30, P=[0.3, 0.7], steps=6, seed=2)
    gpu = on_cuda("off")
    one = gpu.detect(x, batch_size=2, **kw)
    allin = gpu.detect(x, batch_size="auto", **kw)
    assert allin.provenance["batch"]["calls"] == 1 and allin.provenance["device"].startswith("cuda")
    # the same trajectories up to bits whose flip probability lies within float rounding of a draw
    assert np.abs(one.reconstruction - allin.reconstruction).mean() < 1e-4
    np.testing.assert_allclose(one.masked_fraction, allin.masked_fraction, atol=1e-2)


def test_autocast_flip_probabilities_and_results_stay_close():
    fp32, amp = on_cuda("off"), on_cuda("auto")
    assert amp.amp_dtype in (torch.bfloat16, torch.float16)
    z = (torch.rand(8, 8, 8, 8, device="cuda") < 0.5).float()
    t = torch.full((8,), 50, dtype=torch.long, device="cuda")
    with torch.inference_mode():
        a, b = fp32._flip_model(z, t), amp._flip_model(z, t)
    assert b.dtype == torch.float32 and float((a - b).abs().max()) < 0.02
    x = images(n=4)
    ra = fp32.detect(x, L=20, P=0.5, steps=5)
    rb = amp.detect(x, L=20, P=0.5, steps=5)
    assert np.abs(ra.masked_fraction - rb.masked_fraction).max() < 0.05
    assert rb.provenance["amp"] == "auto" and rb.provenance["amp_dtype"] in ("torch.bfloat16",
                                                                              "torch.float16")


def test_bundled_model_amp_and_channels_last_give_the_same_maps():
    from napari_berdiff.core.synth.brain import make_case
    from napari_berdiff.weights import bundled_path

    path = bundled_path("brats")
    if path is None:
        pytest.skip("the bundled BraTS model is not installed")
    case = make_case(3, "tumour", (120, 120, 24))
    vol = np.stack([case[k] for k in ("flair", "t1", "t1ce", "t2")])
    ref = Detector.from_checkpoint(path, device="cuda", amp="off").detect_volume(
        vol, slices=[9, 11, 13], L=100, P=0.5, steps=10)
    fast = Detector.from_checkpoint(path, device="cuda", amp="auto", channels_last=True)
    res = fast.detect_volume(vol, slices=[9, 11, 13], L=100, P=0.5, steps=10)
    assert np.abs(ref.reconstruction - res.reconstruction).mean() < 0.01
    assert np.corrcoef(ref.anomaly_map.ravel(), res.anomaly_map.ravel())[0, 1] > 0.99


def test_compile_on_cuda_runs_or_falls_back():
    x = images(n=2)
    ref = on_cuda("off").detect(x, L=10, P=0.5, steps=3)
    comp = on_cuda("off", compile=True)
    with warnings.catch_warnings():  # a fallback warns; it must still give the same result
        warnings.simplefilter("ignore", RuntimeWarning)
        res = comp.detect(x, L=10, P=0.5, steps=3)
    status = res.provenance["compile"]
    assert status == "on" or status.startswith("failed")
    np.testing.assert_allclose(res.reconstruction, ref.reconstruction, atol=1e-3)


def test_peak_memory_is_reported_and_within_the_estimate():
    from napari_berdiff.core.models.configs import get_preset
    from napari_berdiff.core.models.autoencoder import BinaryAutoencoder
    from napari_berdiff.core.models.unet import BernoulliUNet

    ae_cfg, un_cfg = get_preset("small", 1)
    det = Detector(BinaryAutoencoder(ae_cfg), BernoulliUNet(un_cfg), device="cuda", amp="off")
    x = np.random.default_rng(0).random((16, 1, 128, 128), dtype=np.float32)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    res = det.detect(x, L=20, P=[0.4, 0.6], steps=4, batch_size=32)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    assert peak > 0
    per_traj = (batching.unet_bytes_per_trajectory(un_cfg)
                + batching.sampler_bytes_per_trajectory(un_cfg))
    per_img = batching.autoencoder_bytes_per_image(ae_cfg)
    bound = 32 * per_traj + res.provenance["batch"]["autoencoder_images_per_call"] * per_img
    print(f"peak {peak / 2**20:.1f} MiB for 32 trajectories; estimate {bound / 2**20:.1f} MiB")
    assert peak <= bound
