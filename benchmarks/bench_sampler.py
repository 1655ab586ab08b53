"""Sampler overhead benchmark (issue: core library).

Prints, for each model configuration: ms per U-Net forward at batch 1 and 8, the masked sampler's
wall time at L = 200 (S = 200 and S = 20) for one slice, and the ratio
sampler time / (number of forwards x forward time) -- how much the sampler adds to the network's
own cost (target <= 1.10). Random weights: speed does not depend on training.

    .venv/bin/python benchmarks/bench_sampler.py [--configs paper small] [--threads 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from napari_berdiff.core.configs import get_preset
from napari_berdiff.core.device import resolve_device
from napari_berdiff.core.sampler import masked_sampler, run_sampler
from napari_berdiff.core.schedule import BernoulliSchedule
from napari_berdiff.core.unet import BernoulliUNet


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_forward(unet, z, t, device, repeats):
    with torch.inference_mode():
        for _ in range(2):
            unet.flip_prob(z, t)
        _sync(device)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            unet.flip_prob(z, t)
            _sync(device)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_sampler(unet, z, L, S, device):
    sched = BernoulliSchedule()
    t0 = time.perf_counter()
    run_sampler(masked_sampler(unet.flip_prob, z, sched, L, 0.5, steps=S, seeds=0))
    _sync(device)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=["paper", "small"])
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--L", type=int, default=200)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device, warn = resolve_device(args.device)
    if warn:
        print("warning:", warn)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    head = (f"{'config':<7} {'fwd b1 ms':>10} {'fwd b8 ms':>10} {'sampler S=L s':>14} {'ratio':>6} "
            f"{'S=20 s':>8} {'speed-up':>9}")
    print(head)
    print("-" * len(head))
    for name in args.configs:
        _, cfg = get_preset(name, 1)
        torch.manual_seed(0)
        unet = BernoulliUNet(cfg).to(device).eval()
        shape = (cfg.latent_channels, cfg.latent_size, cfg.latent_size)
        z1 = (torch.rand(1, *shape, device=device) < 0.5).float()
        z8 = (torch.rand(8, *shape, device=device) < 0.5).float()
        reps = 5 if name == "paper" and device.type == "cpu" else 20
        f1 = time_forward(unet, z1, torch.full((1,), 100, device=device), device, reps)
        f8 = time_forward(unet, z8, torch.full((8,), 100, device=device), device, max(3, reps // 4))
        s_full = time_sampler(unet, z1, args.L, args.L, device)
        s_20 = time_sampler(unet, z1, args.L, 20, device)
        ratio = s_full / (args.L * f1)
        print(f"{name:<7} {f1 * 1e3:>10.1f} {f8 * 1e3:>10.1f} {s_full:>14.2f} {ratio:>6.3f} "
              f"{s_20:>8.2f} {s_full / s_20:>8.1f}x")
    print("ratio = sampler wall time / (L x median forward time at batch 1); target <= 1.10")


if __name__ == "__main__":
    main()
