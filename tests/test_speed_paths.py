"""Speed paths (issue 6) on the CPU: memory-planned batches, skipped empty slices, thread settings,
autocast, channels_last and torch.compile -- all without changing results."""

import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch

from napari_berdiff.core.inference import accel, batching
from napari_berdiff.core.models.configs import get_preset
from napari_berdiff.core.inference.detector import Detector
from tests.test_detector import images, make_detector


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


class Counting:
    """Wraps a detector's U-Net forward and counts the trajectories it sees."""

    def __init__(self, det):
        self.det, self.inner, self.calls, self.items = det, det._unet_forward, 0, 0
        det._unet_forward = self

    def __call__(self, z, t):
        self.calls += 1
        self.items += z.shape[0]
        return self.inner(z, t)


# -- batching: the result does not depend on it ----------------------------------------------
def test_chunked_equals_unchunked_for_any_batch_size():
    det = make_detector()
    x = images(n=5)
    kw = dict(L=30, P=[0.3, 0.7], steps=6, seed=4, keep_mask_history=True)
    ref = det.detect(x, batch_size=10, **kw)  # all 5 slices x 2 P in one call
    assert ref.provenance["batch"]["calls"] == 1
    for bs in (1, 2, 3, "auto"):
        res = det.detect(x, batch_size=bs, **kw)
        np.testing.assert_allclose(res.reconstruction, ref.reconstruction, atol=1e-5)
        np.testing.assert_allclose(res.anomaly_map, ref.anomaly_map, atol=1e-5)
        np.testing.assert_array_equal(res.masked_fraction, ref.masked_fraction)
        np.testing.assert_array_equal(res.mask_history, ref.mask_history)
    assert det.detect(x, batch_size=1, **kw).provenance["batch"]["calls"] == 5  # >= 1 slice/call


def test_auto_batch_size_follows_the_memory_and_runs_a_small_volume_in_one_call():
    det = make_detector()
    ae, un = det.autoencoder.config, det.unet.config
    per = batching.unet_bytes_per_trajectory(un) + batching.sampler_bytes_per_trajectory(un)
    assert batching.plan_batches(ae, un, "cpu", available=10 * per, safety=0.5).trajectories == 5
    assert batching.plan_batches(ae, un, "cpu", available=1).trajectories == 1  # never 0
    big = batching.plan_batches(ae, un, "cpu", available=1 << 40)
    assert big.trajectories == batching.CPU_MAX_TRAJECTORIES and big.source == "auto"
    user = batching.plan_batches(ae, un, "cpu", 3, available=1 << 40)
    assert (user.trajectories, user.ae_images, user.source) == (3, 3, "user")
    assert user.slices_per_call(2) == 1 and big.slices_per_call(2) == big.trajectories // 2
    with pytest.raises(ValueError, match="batch_size"):
        batching.plan_batches(ae, un, "cpu", 0)
    assert batching.parse_batch_size("AUTO") == "auto" and batching.parse_batch_size("7") == 7
    with pytest.raises(ValueError):
        batching.parse_batch_size("-2")
    assert batching.available_memory("cpu") > 0
    res = det.detect_volume(np.random.default_rng(0).random((2, 20, 24, 12), dtype=np.float32),
                            L=8, P=[0.4, 0.6], steps=2)
    assert res.provenance["batch"]["calls"] == 1 and res.provenance["batch"]["source"] == "auto"


def test_memory_estimates_are_conservative_and_scale_with_the_model():
    ae_p, un_p = get_preset("paper", 4)
    ae_s, un_s = get_preset("small", 4)
    assert batching.unet_bytes_per_trajectory(un_p) > 4 * batching.unet_bytes_per_trajectory(un_s)
    assert batching.autoencoder_bytes_per_image(ae_p) > batching.autoencoder_bytes_per_image(ae_s)
    # paper model: the whole per-trajectory estimate stays far below the paper's 1.47 GB per slice
    per = batching.unet_bytes_per_trajectory(un_p) + batching.sampler_bytes_per_trajectory(un_p)
    assert 5e6 < per < 1.47e9 / 10
    # the measured peak of a U-Net forward (fresh process: ru_maxrss is a process-wide peak)
    code = textwrap.dedent("""
        import resource, torch
        torch.set_num_threads(1)
        from napari_berdiff.core.models.configs import get_preset
        from napari_berdiff.core.models.unet import BernoulliUNet
        from napari_berdiff.core.inference.batching import unet_bytes_per_trajectory as est
        _, cfg = get_preset("small", 1)
        m = BernoulliUNet(cfg).eval()
        z = (torch.rand(32, cfg.latent_channels, cfg.latent_size, cfg.latent_size) < .5).float()
        with torch.inference_mode():
            m.flip_prob(z[:1], 5)
            r0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            m.flip_prob(z, 5)
        r1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print((r1 - r0) * 1024 / 32, est(cfg))
    """)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.getcwd())
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120, check=True).stdout.split()
    measured, estimate = float(out[0]), float(out[1])
    assert measured <= estimate, (measured, estimate)


# -- empty slices -----------------------------------------------------------------------------
def test_empty_slices_are_skipped_without_network_calls():
    det = make_detector()
    rng = np.random.default_rng(1)
    vol = rng.random((2, 20, 24, 6), dtype=np.float32)
    vol[..., [0, 5]] = 0.0  # all zeros
    vol[..., 3] = 0.25  # constant background
    counter = Counting(det)
    res = det.detect_volume(vol, L=10, P=[0.3, 0.6], steps=3, batch_size=4)
    assert res.provenance["skipped_slices"] == [0, 3, 5] and res.provenance["skip_empty"] is True
    assert counter.items == 3 * 2 * 3  # 3 slices x 2 P x 3 steps
    for z in (0, 3, 5):
        assert np.all(res.anomaly_map[:, z] == 0) and np.all(res.masked_fraction[:, z] == 0)
        np.testing.assert_array_equal(res.reconstruction[:, z], np.broadcast_to(res.input[z], (2, 2, 20, 24)))
    full = det.detect_volume(vol, L=10, P=[0.3, 0.6], steps=3, batch_size=4, skip_empty=False)
    assert full.provenance["skipped_slices"] == []
    keep = [1, 2, 4]
    np.testing.assert_allclose(res.reconstruction[:, keep], full.reconstruction[:, keep], atol=1e-5)
    np.testing.assert_array_equal(res.masked_fraction[:, keep], full.masked_fraction[:, keep])
    # all empty: no network call, no tick, a complete result
    counter.items = 0
    ticks = []
    none = det.detect(np.zeros((3, 2, 16, 16), np.float32), L=10, steps=2, progress=ticks.append)
    assert counter.items == 0 and ticks == [] and none.anomaly_map.shape == (1, 3, 16, 16)
    assert none.provenance["batch"]["calls"] == 0


def test_empty_slices_detection():
    x = np.random.default_rng(0).random((4, 2, 5, 5)).astype(np.float32)
    x[1] = 0
    x[2, 0] = 3.0
    x[2, 1] = 0.0  # each channel constant
    x[3, 0] = 0.0  # one channel constant, the other not: not empty
    assert batching.empty_slices(x).tolist() == [False, True, True, False]
    assert batching.empty_slices(x[:0]).shape == (0,)


# -- threads --------------------------------------------------------------------------------
def test_configure_threads_respects_explicit_choices(monkeypatch):
    before = torch.get_num_threads()
    try:
        assert accel.configure_threads(1) == 1 and torch.get_num_threads() == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        torch.set_num_threads(1)
        assert accel.configure_threads() == 1  # the environment's choice is kept
        monkeypatch.delenv("OMP_NUM_THREADS")
        monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
        monkeypatch.setattr(accel, "_STARTUP_THREADS", 7)
        torch.set_num_threads(1)  # differs from the "start-up default" 7: a user's setting
        monkeypatch.setattr(accel, "_LAST_SET", None)
        assert accel.configure_threads() == 1
        monkeypatch.setattr(accel, "_STARTUP_THREADS", 1)  # pristine torch: we choose
        monkeypatch.setattr(accel, "cpu_budget", lambda: 4)
        assert accel.configure_threads() == 4 and torch.get_num_threads() == 4
        assert accel.configure_threads(reserve_gui=True) == 3  # our own earlier setting
        monkeypatch.setattr(accel, "cpu_budget", lambda: 1)
        assert accel.configure_threads(reserve_gui=True) == 1  # never below one
    finally:
        torch.set_num_threads(before)
    assert 1 <= accel.cpu_budget() <= (os.cpu_count() or 1)
    assert accel.physical_cores() >= 1


# -- autocast, channels_last, compile ---------------------------------------------------------
def test_amp_modes_resolve_per_device():
    cpu = torch.device("cpu")
    assert accel.resolve_amp("auto", cpu) is None and accel.resolve_amp("off", cpu) is None
    assert accel.resolve_amp("bf16", cpu) is torch.bfloat16
    with pytest.raises(ValueError, match="CUDA"):
        accel.resolve_amp("fp16", cpu)
    with pytest.raises(ValueError, match="amp"):
        accel.resolve_amp("int8", cpu)
    assert make_detector().amp_dtype is None  # the CPU default is full float32


def test_bf16_autocast_on_the_cpu_gives_close_flip_probabilities():
    d = make_detector(c=1)
    fp32 = Detector(d.autoencoder, d.unet, device="cpu", amp="off")
    bf16 = Detector(d.autoencoder, d.unet, device="cpu", amp="bf16")
    z = (torch.rand(4, 8, 8, 8, generator=torch.Generator().manual_seed(0)) < 0.5).float()
    t = torch.full((4,), 50, dtype=torch.long)
    with torch.inference_mode():
        a, b = fp32._flip_model(z, t), bf16._flip_model(z, t)
    assert b.dtype == torch.float32
    assert float((a - b).abs().max()) < 0.02
    with torch.inference_mode():  # the decoder under autocast: close to float32
        dec = [det.autoencoder.decode(z[:, :8]) for det in (fp32, bf16)]
        with accel.autocast(bf16.device, bf16.amp_dtype):
            dec[1] = bf16.autoencoder.decode(z)
    assert float((dec[0] - dec[1].float()).abs().max()) < 0.05
    x = images(n=2, c=1)
    res = bf16.detect(x, L=20, P=0.5, steps=4, deterministic_last_step=True)
    ref = fp32.detect(x, L=20, P=0.5, steps=4, deterministic_last_step=True)
    assert res.provenance["amp_dtype"] == "torch.bfloat16"
    # same codes (the encoder stays float32); trajectories differ only where a flip probability
    # lies within bf16 rounding of P or of a uniform draw (this random decoder amplifies those
    # few bits; see the bundled-model test for reconstructions)
    assert np.abs(res.masked_fraction - ref.masked_fraction).max() < 0.05
    assert np.all(np.isfinite(res.anomaly_map))


def test_bf16_with_the_bundled_model_gives_the_same_maps():
    from napari_berdiff.core.synth.brain import make_case
    from napari_berdiff.weights import bundled_path

    path = bundled_path("brats")
    if path is None:
        pytest.skip("the bundled BraTS model is not installed")
    case = make_case(3, "tumour", (120, 120, 24))
    vol = np.stack([case[k] for k in ("flair", "t1", "t1ce", "t2")])
    out = {}
    for amp in ("off", "bf16"):
        det = Detector.from_checkpoint(path, device="cpu", amp=amp)
        out[amp] = det.detect_volume(vol, slices=[11, 13], L=100, P=0.5, steps=10)
    a, b = out["off"], out["bf16"]
    assert np.abs(a.reconstruction - b.reconstruction).mean() < 0.01
    assert np.corrcoef(a.anomaly_map.ravel(), b.anomaly_map.ravel())[0, 1] > 0.99
    assert np.abs(a.masked_fraction - b.masked_fraction).max() < 0.01


def test_channels_last_and_default_cpu_behaviour_are_unchanged():
    d = make_detector()
    x = images(n=3)
    ref = d.detect(x, L=20, P=[0.4, 0.6], steps=5, seed=3, batch_size=8, skip_empty=False)
    nhwc = Detector(d.autoencoder, d.unet, device="cpu", channels_last=True)
    res = nhwc.detect(x, L=20, P=[0.4, 0.6], steps=5, seed=3)
    np.testing.assert_allclose(res.reconstruction, ref.reconstruction, atol=1e-5)
    np.testing.assert_array_equal(res.masked_fraction, ref.masked_fraction)
    assert res.provenance["channels_last"] is True and res.provenance["compile"] == "off"


def test_compile_runs_or_falls_back_with_a_clear_message(monkeypatch):
    d = make_detector(c=1)
    x = images(n=2, c=1)
    ref = d.detect(x, L=10, P=0.5, steps=3)
    comp = Detector(d.autoencoder, d.unet, device="cpu", compile="eager")  # dynamo, no C compiler
    res = comp.detect(x, L=10, P=0.5, steps=3)
    assert res.provenance["compile"] == "on"
    np.testing.assert_allclose(res.reconstruction, ref.reconstruction, atol=1e-5)

    def broken(fn, **kw):
        def run(*a, **k):
            raise RuntimeError("no C++ compiler found")
        return run

    monkeypatch.setattr(torch, "compile", broken)
    bad = Detector(d.autoencoder, d.unet, device="cpu", compile=True)
    with pytest.warns(RuntimeWarning, match="torch.compile of the U-Net failed.*no C\\+\\+ compiler"):
        res = bad.detect(x, L=10, P=0.5, steps=3)
    assert res.provenance["compile"].startswith("failed: RuntimeError: no C++ compiler")
    np.testing.assert_allclose(res.reconstruction, ref.reconstruction, atol=1e-5)

    def missing(fn, **kw):
        raise RuntimeError("torch.compile is not supported on this Python")

    monkeypatch.setattr(torch, "compile", missing)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gone = Detector(d.autoencoder, d.unet, device="cpu", compile=True)
    assert any("unavailable" in str(w.message) for w in caught)
    assert gone.speed_settings["compile"].startswith("failed")
    np.testing.assert_allclose(gone.detect(x, L=10, P=0.5, steps=3).reconstruction,
                               ref.reconstruction, atol=1e-5)


# -- the benchmark ------------------------------------------------------------------------------
def test_bench_speed_runs_end_to_end(tmp_path):
    # as a user runs it: python benchmarks/bench_speed.py ... --json F (the installed package)
    import json
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(repo)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    proc = subprocess.run(
        [sys.executable, str(repo / "benchmarks" / "bench_speed.py"), "--configs", "tiny",
         "--slices", "6", "--L", "8", "--steps", "8", "2", "--volume-steps", "2", "--threads", "1",
         "--json", str(tmp_path / "b.json")], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr
    out = json.loads((tmp_path / "b.json").read_text())
    row = out["results"][0]
    assert set(row["sampler"]) == {"8", "2"} and row["forward_ms_b1"] > 0
    assert row["volume"]["slices"] == 6 and row["volume"]["skipped"] == 2
    assert row["volume"]["peak_bytes"] > 0 and row["speedup_first_over_last"] > 0
    assert "tiny" in proc.stdout
