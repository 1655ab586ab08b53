"""Training throughput benchmark: samples/s of one optimisation step of each stage.

Times the real training steps on a fixed random batch (no data loading; docs/benchmarks.md)::

    .venv/bin/python benchmarks/bench_training.py [--configs tiny small] [--channels 4]
        [--device cpu] [--threads N] [--steps 5] [--warmup 2] [--amp auto]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from napari_berdiff.core.models.autoencoder import BinaryAutoencoder
from napari_berdiff.core.models.checkpoint import load_checkpoint, save_checkpoint
from napari_berdiff.core.models.configs import get_preset
from napari_berdiff.core.diffusion.schedule import BernoulliSchedule
from src_training.train.distributed import init_distributed
from src_training.train.train_autoencoder import AutoencoderTask
from src_training.train.train_diffusion import DiffusionTask
from src_training.train.train_state import resolve_amp


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rate(task, x: torch.Tensor, steps: int, warmup: int, first_step: int = 1) -> float:
    for i in range(warmup):
        task.train_step(x, first_step + i)
    _sync(x.device)
    t0 = time.perf_counter()
    for i in range(steps):
        task.train_step(x, first_step + warmup + i)
    _sync(x.device)
    return x.shape[0] * steps / (time.perf_counter() - t0)


def bench(preset: str, channels: int, args, info, amp) -> list[tuple[str, int, float]]:
    dev = info.device
    ae_cfg, unet_cfg = get_preset(preset, channels)
    s = ae_cfg.image_size
    rows = []
    for gan in (False, True):
        x = torch.rand(args.ae_batch, channels, s, s, device=dev)
        task = AutoencoderTask(ae_cfg, info, amp=amp, lr=1e-4, ema=0.995, rec_loss="l1",
                               gan_start=1 if gan else 10**9, disc_weight=1.0, disc_lr=1e-4,
                               lpips=None, lpips_weight=1.0, meta={}, samples=x[:1])
        rows.append((f"autoencoder{' + GAN' if gan else ''}", args.ae_batch,
                     _rate(task, x, args.steps, args.warmup)))
        del task
    with tempfile.TemporaryDirectory() as tmp:
        path = save_checkpoint(Path(tmp) / "ae.pt", autoencoder=BinaryAutoencoder(ae_cfg))
        ck = load_checkpoint(path)
    x = torch.rand(args.diff_batch, channels, s, s, device=dev)
    task = DiffusionTask(ck, unet_cfg, BernoulliSchedule(), info, amp=amp, lr=1e-4,
                         weight_decay=0.0, ema=0.999, meta={}, samples=x[:1], sample_L=10)
    rows.append(("diffusion (encode + U-Net)", args.diff_batch,
                 _rate(task, x, args.steps, args.warmup)))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="+", default=["tiny", "small"])
    ap.add_argument("--channels", type=int, default=4, help="image channels (BraTS: 4)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--ae-batch", type=int, default=6, help="autoencoder batch (default 6)")
    ap.add_argument("--diff-batch", type=int, default=32, help="diffusion batch (default 32)")
    ap.add_argument("--amp", default="auto", choices=("auto", "bf16", "fp16", "off"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    info = init_distributed(args.device)
    amp = resolve_amp(args.amp, info.device)
    print(f"device {info.device}, threads {torch.get_num_threads()}, amp {amp.name}, "
          f"{args.channels} channel(s), {args.steps} timed steps after {args.warmup} warm-up")
    print(f"{'config':<7} {'stage':<28} {'batch':>5} {'samples/s':>10} {'ms/step':>9}")
    for preset in args.configs:
        torch.manual_seed(0)
        for stage, batch, rate in bench(preset, args.channels, args, info, amp):
            print(f"{preset:<7} {stage:<28} {batch:>5} {rate:>10.1f} {1000 * batch / rate:>9.1f}",
                  flush=True)


if __name__ == "__main__":
    main()
