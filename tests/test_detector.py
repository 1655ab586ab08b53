"""Detector: checkpoint -> preprocess -> encode -> sample -> decode -> anomaly map."""

import numpy as np
import pytest
import torch

from napari_berdiff.core.inference import preprocess
from napari_berdiff.core.models.autoencoder import BinaryAutoencoder
from napari_berdiff.core.models.checkpoint import save_checkpoint
from napari_berdiff.core.models.configs import get_preset
from napari_berdiff.core.inference.detector import Detector
from napari_berdiff.core.inference.volume import slices_to_volume, volume_to_slices
from napari_berdiff.core.models.unet import BernoulliUNet


def make_detector(c=2, seed=0, meta=None):
    torch.manual_seed(seed)
    ae_cfg, unet_cfg = get_preset("tiny", c)
    ae, unet = BinaryAutoencoder(ae_cfg), BernoulliUNet(unet_cfg)
    with torch.no_grad():  # give the zero-initialised output conv some signal
        for p in unet.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return Detector(ae, unet, meta=meta or {}, device="cpu")


def images(n=3, c=2, h=30, w=36, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, c, h, w), dtype=np.float32)


def test_outputs_have_the_input_geometry_and_the_map_is_the_squared_error():
    det = make_detector()
    x = images()
    res = det.detect(x, L=20, P=[0.3, 0.6], seed=1)
    assert res.reconstruction.shape == (2, 3, 2, 30, 36)
    assert res.anomaly_map.shape == (2, 3, 30, 36)
    assert res.masked_fraction.shape == (2, 3)
    assert res.reconstruction.min() >= 0 and res.reconstruction.max() <= 1
    np.testing.assert_allclose(res.anomaly_map, ((x[None] - res.reconstruction) ** 2).sum(axis=2), rtol=1e-5, atol=1e-6)
    assert np.all(res.masked_fraction[0] >= res.masked_fraction[1])  # lower P masks more
    assert res.index_of(0.6) == 1
    with pytest.raises(ValueError):
        res.index_of(0.7)


def test_p_one_is_the_autoencoder_only_reconstruction():
    det = make_detector(c=1)
    x = images(n=2, c=1, h=32, w=32)
    res = det.detect(x, L=50, P=1.0, steps=5, deterministic_encoding=True)
    with torch.no_grad():
        probs = det.autoencoder.encode(torch.from_numpy(x))
        ref = det.autoencoder.decode((probs > 0.5).float()).clamp(0, 1).numpy()
    np.testing.assert_allclose(res.reconstruction[0], ref, atol=1e-6)
    assert np.all(res.masked_fraction == 0)


def test_one_slice_alone_equals_the_same_slice_in_a_batch():
    det = make_detector()
    x = images(n=4)
    batch = det.detect(x, L=30, P=[0.4, 0.7], seed=5, batch_size=8)
    for i in (0, 3):
        one = det.detect(x[i], L=30, P=[0.4, 0.7], seed=5, indices=[i])
        np.testing.assert_allclose(one.reconstruction[:, 0], batch.reconstruction[:, i], atol=1e-5)
        np.testing.assert_allclose(one.masked_fraction[:, 0], batch.masked_fraction[:, i])


def test_same_seed_same_result_and_progress_ticks():
    det = make_detector()
    x = images(n=5)
    ticks = []
    a = det.detect(x, L=40, P=0.5, steps=10, seed=2, batch_size=2, progress=ticks.append)
    b = det.detect(x, L=40, P=0.5, steps=10, seed=2, batch_size=2)
    np.testing.assert_array_equal(a.reconstruction, b.reconstruction)
    # another batching: same trajectories, up to float summation order in the networks
    c = det.detect(x, L=40, P=0.5, steps=10, seed=2, batch_size=3)
    np.testing.assert_allclose(a.reconstruction, c.reconstruction, atol=1e-5)
    assert [t.done for t in ticks] == list(range(1, 31))  # 3 batches x 10 steps
    assert ticks[-1].total == 30 and ticks[0].images == (0, 2)


def test_mask_history_and_provenance():
    det = make_detector()
    res = det.detect(images(n=2), L=20, P=[0.2, 0.8], steps=4, seed=9, keep_mask_history=True)
    assert res.mask_history.shape == (4, 2, 2, 8, 8)
    assert np.all(np.diff(res.mask_history.astype(np.float32), axis=0) >= 0)  # never shrinks
    np.testing.assert_allclose(res.mask_history[-1].mean(axis=(-2, -1)), res.masked_fraction, atol=1e-3)
    prov = res.provenance
    for key in ("L", "P", "steps", "seed", "device", "model_hash", "time", "seconds"):
        assert key in prov
    assert prov["L"] == 20 and prov["P"] == [0.2, 0.8] and prov["steps"] == 4 and prov["device"] == "cpu"


def test_volume_detection_puts_slices_back():
    det = make_detector(c=2)
    rng = np.random.default_rng(0)
    vol = rng.random((2, 30, 32, 6), dtype=np.float32) * 500  # raw intensities: normalised per volume
    res = det.detect_volume(vol, L=10, P=0.5, slices=[1, 4])
    assert res.anomaly_map.shape == (1, 2, 30, 32)
    assert res.provenance["slice_indices"] == [1, 4]
    assert 0 <= res.input.min() and res.input.max() <= 1
    amap_vol = slices_to_volume(res.anomaly_map)
    assert amap_vol.shape == (1, 30, 32, 2)
    stack, idx = volume_to_slices(vol, slice_axis=0)
    assert stack.shape == (30, 2, 32, 6) and idx == list(range(30))
    assert slices_to_volume(stack.transpose(1, 0, 2, 3), slice_axis=0).shape == (2, 30, 32, 6)
    np.testing.assert_array_equal(slices_to_volume(stack.transpose(1, 0, 2, 3), slice_axis=0), vol)


def test_bad_inputs_give_clear_errors():
    det = make_detector(c=2, meta={"channel_names": ["flair", "t2"]})
    with pytest.raises(ValueError, match="1 channel.*expects 2 .flair, t2"):
        det.detect(images(c=1), L=10)
    x = images()
    x[0, 0, 3, 3] = np.nan
    with pytest.raises(ValueError, match="1 NaN"):
        det.detect(x, L=10)
    with pytest.raises(ValueError, match="shape"):
        det.detect(np.zeros((2, 2, 2, 8, 8), np.float32), L=10)


def test_from_checkpoint_records_the_model_hash(tmp_path):
    det = make_detector(c=1)
    path = save_checkpoint(tmp_path / "m.pt", autoencoder=det.autoencoder, unet=det.unet,
                           meta={"name": "tiny-test", "preprocess": {"mode": "resize"}})
    det2 = Detector.from_checkpoint(path, device="cpu")
    assert det2.preprocess_mode == "resize"
    res = det2.detect(images(n=1, c=1, h=40, w=20), L=10, P=0.5)
    assert res.provenance["model_hash"] == det2.model_hash and len(det2.model_hash) == 12
    assert res.provenance["model"] == "tiny-test"
    assert res.anomaly_map.shape == (1, 1, 40, 20)


def test_unavailable_cuda_falls_back_to_cpu_with_a_warning():
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    d = make_detector()
    ae, unet = d.autoencoder, d.unet
    det = Detector(ae, unet, device="cuda:0")
    assert det.device.type == "cpu" and "CUDA is not available" in det.device_warning
    assert det.detect(images(n=1), L=5).provenance["device_warning"] == det.device_warning


@pytest.mark.parametrize("hw, mode, canvas", [((240, 240), "pad", 256), ((30, 36), "pad", None),
                                              ((496, 512), "resize", None), ((20, 44), "square", None)])
def test_preprocess_round_trip(hw, mode, canvas):
    size = 256 if canvas else 32
    geom = preprocess.plan(hw, size, mode, canvas)
    x = torch.rand(2, 1, *hw)
    y = preprocess.to_model(x, geom)
    assert y.shape == (2, 1, size, size)
    back = preprocess.from_model(y, geom)
    assert back.shape == x.shape
    if geom.mid_hw == (size, size):  # pure padding is exactly invertible
        torch.testing.assert_close(back, x)


def test_pad_mode_is_the_paper_zero_padding():
    geom = preprocess.plan((240, 240), 256, "pad", 256)
    x = torch.ones(1, 1, 240, 240)
    y = preprocess.to_model(x, geom)
    assert y[0, 0, 8:248, 8:248].min() == 1 and y.sum() == 240 * 240
    with pytest.raises(ValueError):
        preprocess.plan((10, 10), 32, "stretch")


def test_L_beyond_the_models_trained_noise_levels_is_refused(tmp_path):
    from _plugin_helpers import tiny_checkpoint

    det = Detector.from_checkpoint(str(tiny_checkpoint(tmp_path / "m.pt", channels=1, max_L=50)),
                                   device="cpu")
    assert det.max_L == 50
    x = np.random.default_rng(0).random((1, 1, 32, 32)).astype(np.float32)
    assert det.detect(x, L=50, P=0.5, steps=2).anomaly_map.shape == (1, 1, 32, 32)
    with pytest.raises(ValueError, match="L <= 50"):
        det.detect(x, L=51, P=0.5, steps=2)


@pytest.mark.parametrize("hw,size,mode", [((240, 240), 128, "pad"), ((496, 512), 128, "resize"),
                                          ((300, 200), 128, "square"), ((97, 61), 32, "resize")])
def test_inference_resizing_equals_the_training_preparation(hw, size, mode):
    """The detector shrinks slices exactly as prepare-brats/-oct/-folder did for the training data
    (skimage resize with anti-aliasing), so a model sees the same kind of input at inference."""
    from napari_berdiff.core.io.geometry import plan_fit_square, plan_resize

    img = np.random.default_rng(1).random((3,) + hw).astype(np.float32)
    ref = (plan_resize(hw, size) if mode == "resize" else plan_fit_square(hw, size)).apply(img)
    got = preprocess.to_model(torch.from_numpy(img)[None], preprocess.plan(hw, size, mode))[0]
    np.testing.assert_allclose(got.numpy(), ref, atol=1e-5)


def test_the_unet_gets_the_samplers_1_based_steps_as_in_training():
    """SPEC 1: the same step convention in training and sampling. The U-Net is called at the
    sampler's t (training feeds it the t that noised z_t, see test_diffusion_step.py) and the
    sampler's flip probabilities are sigmoid(logits)."""
    det = make_detector()
    calls = []
    hooks = [det.unet.register_forward_pre_hook(lambda m, a: calls.append([v.clone() for v in a])),
             det.unet.register_forward_hook(lambda m, a, out: calls[-1].append(out.float()))]
    seen = []
    det.detect(images(n=1), L=5, P=0.5, seed=0, progress=lambda p: seen.append(p.step.eps_hat.clone()))
    for h in hooks:
        h.remove()
    assert [c[1].tolist() for c in calls] == [[5], [4], [3], [2], [1]]
    for (_, _, logits), eps in zip(calls, seen):
        torch.testing.assert_close(eps, torch.sigmoid(logits))
