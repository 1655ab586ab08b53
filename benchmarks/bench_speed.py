"""Speed benchmark: network, sampler overhead, whole volumes, memory, few-step speed-up.

Random weights (speed does not depend on training); the columns are explained in docs/benchmarks.md::

    .venv/bin/python benchmarks/bench_speed.py --configs paper small          # the docs' table
    .venv/bin/python benchmarks/bench_speed.py --configs tiny --slices 8      # smoke test, seconds
    .venv/bin/python benchmarks/bench_speed.py --device cuda --amp auto --channels-last --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from napari_berdiff.core.inference.accel import configure_threads
from napari_berdiff.core.models.autoencoder import BinaryAutoencoder
from napari_berdiff.core.inference.batching import parse_batch_size
from napari_berdiff.core.models.configs import get_preset
from napari_berdiff.core.inference.detector import Detector
from napari_berdiff.core.diffusion.sampler import masked_sampler, run_sampler
from napari_berdiff.core.models.unet import BernoulliUNet


# -- timing helpers ---------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_forward(model, z: torch.Tensor, t: torch.Tensor, device, repeats: int, warmup: int = 2) -> float:
    """Median seconds of ``model(z, t)`` over ``repeats`` calls after ``warmup`` calls."""
    with torch.inference_mode():
        for _ in range(warmup):
            model(z, t)
        sync(device)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(z, t)
            sync(device)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_sampler(model, z: torch.Tensor, schedule, L: int, S: int, device) -> tuple[float, float]:
    """``(wall seconds, seconds inside the network)`` of the masked sampler (P = 0.5) over ``z``
    at noise level L with S steps (the network calls are timed with a device sync)."""
    inside = [0.0]

    def timed(z_t, t):
        sync(device)
        t0 = time.perf_counter()
        out = model(z_t, t)
        sync(device)
        inside[0] += time.perf_counter() - t0
        return out

    sync(device)
    t0 = time.perf_counter()
    run_sampler(masked_sampler(timed, z, schedule, L, 0.5, steps=S, seeds=0))
    sync(device)
    return time.perf_counter() - t0, inside[0]


# -- memory --------------------------------------------------------------------------------
def reset_peak(device: torch.device) -> str:
    """Reset the peak-memory counter; returns what the peak will measure."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return "cuda max_memory_allocated"
    try:  # Linux >= 4.0: "5" resets the process's peak RSS (VmHWM)
        Path("/proc/self/clear_refs").write_text("5")
        return "RSS high-water mark since the run started"
    except OSError:
        return "process peak RSS (not resettable here: includes earlier work)"


def current_bytes(device: torch.device) -> int:
    """Memory in use now: allocated CUDA memory, or the process's RSS on the CPU."""
    if device.type == "cuda":
        return int(torch.cuda.memory_allocated(device))
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * scale


# -- a generated volume ----------------------------------------------------------------------
def head_volume(channels: int, side: int, n_slices: int, seed: int = 0) -> np.ndarray:
    """(C, side, side, n) float32 in [0, 1]: an ellipsoid "head" with smooth texture and noise,
    zero outside it, so that the first and last ~8% of the slices are empty (as in BraTS)."""
    rng = np.random.default_rng(seed)
    ax = np.linspace(-1, 1, side, dtype=np.float32)
    zs = np.linspace(-1.09, 1.09, n_slices, dtype=np.float32)
    yy, xx = np.meshgrid(ax, ax, indexing="ij")
    vol = np.zeros((channels, side, side, n_slices), np.float32)
    for k, zc in enumerate(zs):
        r2 = (yy / 0.8) ** 2 + (xx / 0.65) ** 2 + zc ** 2
        inside = r2 < 1
        if not inside.any():
            continue
        for c in range(channels):
            tex = 0.5 + 0.2 * np.sin(6 * xx + 3 * c) * np.cos(5 * yy + zc * 4)
            vol[c, :, :, k] = np.where(inside, np.clip(tex + 0.05 * rng.standard_normal(tex.shape), 0, 1), 0)
    return vol


# -- one configuration ---------------------------------------------------------------------
def bench_config(name: str, args, device_spec: str) -> dict:
    ae_cfg, un_cfg = get_preset(name, args.channels)
    torch.manual_seed(0)
    unet = BernoulliUNet(un_cfg)
    with torch.no_grad():  # random but non-degenerate flip probabilities (the last conv is zero-init)
        unet.out[-1].weight.normal_(0, 0.02)
    det = Detector(BinaryAutoencoder(ae_cfg), unet, device=device_spec, amp=args.amp,
                   channels_last=args.channels_last, compile=args.compile)
    dev = det.device
    model = det._flip_model  # what the sampler calls: autocast, channels_last, compiled U-Net
    shape = (un_cfg.latent_channels, un_cfg.latent_size, un_cfg.latent_size)
    g = torch.Generator().manual_seed(0)
    z1 = (torch.rand(1, *shape, generator=g) < 0.5).float().to(dev)
    zb = (torch.rand(args.batch, *shape, generator=g) < 0.5).float().to(dev)
    slow = name == "paper" and dev.type == "cpu"
    reps = 5 if slow else 20
    f1 = time_forward(model, z1, torch.full((1,), 100, device=dev), dev, reps)
    fb = time_forward(model, zb, torch.full((args.batch,), 100, device=dev), dev, max(3, reps // 4))
    row = {"config": name, "device": str(dev), "speed": det.speed_settings,
           "forward_ms_b1": f1 * 1e3, f"forward_ms_b{args.batch}": fb * 1e3,
           "forward_ms_per_item_bB": fb * 1e3 / args.batch, "batch_B": args.batch, "sampler": {}}
    steps = args.steps or [args.L, 20]
    time_sampler(model, z1, det.schedule, args.L, min(2, args.L), dev)  # warm-up (compile guards)
    for S in steps:
        S = min(int(S), args.L)
        runs = [time_sampler(model, z1, det.schedule, args.L, S, dev) for _ in range(1 if slow else 3)]
        t, net = min(runs)  # the least disturbed run
        row["sampler"][S] = {"seconds": t, "network_seconds": net,
                             "overhead_pct": 100 * (t / net - 1),
                             "vs_isolated_forward_pct": 100 * (t / (S * f1) - 1)}
    first, last = min(steps[0], args.L), min(steps[-1], args.L)
    row["speedup_first_over_last"] = row["sampler"][first]["seconds"] / row["sampler"][last]["seconds"]

    if args.slices > 0:
        side = ae_cfg.image_size * 15 // 16  # BraTS: 240 -> padded to 256
        vol = head_volume(args.channels, side, args.slices)
        if args.compile:  # compile for the volume's batch shapes before timing
            det.detect_volume(vol, L=args.L, P=0.5, steps=1, batch_size=args.batch_size)
        what = reset_peak(dev)
        start = current_bytes(dev)
        sync(dev)
        t0 = time.perf_counter()
        res = det.detect_volume(vol, L=args.L, P=0.5, steps=args.volume_steps,
                                batch_size=args.batch_size, skip_empty=not args.no_skip_empty)
        sync(dev)
        secs = time.perf_counter() - t0
        b = res.provenance["batch"]
        row["volume"] = {"slices": args.slices, "skipped": len(res.provenance["skipped_slices"]),
                         "L": args.L, "steps": args.volume_steps, "seconds": secs,
                         "slices_per_s": args.slices / secs, "s_per_slice": secs / args.slices,
                         "batch": b, "peak_bytes": peak_bytes(dev), "start_bytes": start,
                         "peak_measures": what}
        row["volume"]["peak_above_start_bytes"] = row["volume"]["peak_bytes"] - start
    return row


def fmt_row(r: dict, steps: list[int]) -> str:
    cells = [f"{r['config']:<6}", f"{r['forward_ms_b1']:>8.1f}", f"{r['forward_ms_per_item_bB']:>9.2f}"]
    for S in steps:
        s = r["sampler"][S]
        cells.append(f"{s['seconds']:>8.2f}s {s['overhead_pct']:>+5.1f}%")
    cells.append(f"{r['speedup_first_over_last']:>7.1f}x")
    v = r.get("volume")
    if v:
        cells.append(f"{v['slices_per_s']:>7.2f}/s {v['s_per_slice']:>6.2f}s "
                     f"({v['skipped']} skipped, {v['batch']['trajectories_per_call']}/call)")
        cells.append(f"{v['peak_bytes'] / 2**20:>6.0f} MiB (+{v['peak_above_start_bytes'] / 2**20:.0f})")
    return " ".join(cells)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=["paper", "small"], help="presets (paper small tiny)")
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N, auto")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: physical cores unless OMP_NUM_THREADS is set)")
    ap.add_argument("--amp", default="auto", help="off, bf16, fp16, auto (default; off on the CPU)")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--compile", action="store_true", help="torch.compile the U-Net")
    ap.add_argument("--L", type=int, default=200)
    ap.add_argument("--steps", type=int, nargs="+", default=None,
                    help="sampler step counts S to time for one slice (default: L and 20)")
    ap.add_argument("--batch", type=int, default=8, help="B for the batched forward timing (default 8)")
    ap.add_argument("--slices", type=int, default=155, help="slices of the generated volume (0: skip)")
    ap.add_argument("--volume-steps", type=int, default=20, help="S for the volume run (default 20)")
    ap.add_argument("--batch-size", type=parse_batch_size, default="auto",
                    help="trajectories per network call in the volume run (auto or N)")
    ap.add_argument("--no-skip-empty", action="store_true", help="run the empty slices too")
    ap.add_argument("--channels", type=int, default=4, help="image channels (4: BraTS)")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = ap.parse_args(argv)
    threads = configure_threads(args.threads)
    steps = [min(int(s), args.L) for s in (args.steps or [args.L, 20])]
    args.steps = steps
    head = {"torch": torch.__version__, "python": platform.python_version(),
            "cpu_threads": threads, "machine": platform.machine(), "argv": sys.argv[1:]}
    if args.device.startswith("cuda") and torch.cuda.is_available():
        head["gpu"] = torch.cuda.get_device_name()
    print(f"torch {torch.__version__}, {threads} CPU thread(s)"
          + (f", {head['gpu']}" if "gpu" in head else "") + f", L={args.L}")
    cols = (["config", "fwd b1 ms", f"b{args.batch} ms/it"] + [f"S={s}: time ovh" for s in steps]
            + [f"S={steps[0]}/S={steps[-1]}"]
            + ([f"volume ({args.slices} sl, S={args.volume_steps})", "peak"] if args.slices else []))
    print(" | ".join(cols))
    rows = []
    for name in args.configs:
        r = bench_config(name, args, args.device)
        rows.append(r)
        print(fmt_row(r, steps), flush=True)
    print("ovh = sampler time / (sum of its network calls' times) - 1 (target <= 10%); volume: "
          "detect_volume incl. encoding, decoding and maps; peak: " +
          (rows[0]["volume"]["peak_measures"] if rows and "volume" in rows[0] else "-"))
    out = {"environment": head, "results": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=str) + "\n")
        print(f"wrote {args.json}")
    return out


if __name__ == "__main__":
    main()
