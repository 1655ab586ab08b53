"""``berdiff train-ae`` and ``berdiff train-diffusion``: train the two networks on a prepared
dataset directory (``python -m src_training.prepare ...``).

Both write into ``--out``: ``last.pt`` (every ``--ckpt-every`` steps; rerunning the same command
continues from it), ``log.jsonl``, ``loss.png``, ``samples/`` and at the end the model file
(``autoencoder.pt`` / ``model.pt``, EMA weights) that the napari widget and ``berdiff`` load.

Several processes (one per GPU, or CPU processes with gloo) through torchrun::

    torchrun --nproc_per_node=2 -m napari_berdiff.cli train-ae DATA --out DIR [options]

(the same for ``train-diffusion``). ``--batch-size`` is per process.
"""

from __future__ import annotations

import argparse
import os

from ..core.models.configs import PRESETS


def _common(p: argparse.ArgumentParser, *, steps: int, batch: int, lr: float, ema: float,
            sample_every: int) -> None:
    p.add_argument("data", help="prepared dataset directory (healthy training slices)")
    p.add_argument("--out", required=True, help="output folder (checkpoints, logs, samples)")
    p.add_argument("--steps", type=int, default=steps,
                   help=f"total optimisation steps (default {steps})")
    p.add_argument("--batch-size", type=int, default=batch, help=f"per process (default {batch})")
    p.add_argument("--lr", type=float, default=lr, help=f"learning rate (default {lr:g})")
    p.add_argument("--ema", type=float, default=ema, help=f"EMA decay (default {ema})")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--amp", default="auto", choices=("auto", "bf16", "fp16", "off"),
                   help="mixed precision on CUDA (auto: bf16 where supported, else fp16)")
    r = p.add_mutually_exclusive_group()
    r.add_argument("--resume", metavar="CKPT", default=None,
                   help="continue from this checkpoint (default: OUT/last.pt when it exists)")
    r.add_argument("--no-resume", action="store_true",
                   help="start afresh even when OUT/last.pt exists (it is overwritten)")
    p.add_argument("--ckpt-every", type=int, default=1000, help="steps between checkpoints (1000)")
    p.add_argument("--log-every", type=int, default=50, help="steps between log lines (50)")
    p.add_argument("--sample-every", type=int, default=sample_every,
                   help=f"steps between sample grids ({sample_every})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes (0)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--hflip", action="store_true", help="random left-right flips of the training slices")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def register(sub) -> None:
    presets = sorted(PRESETS)
    p = sub.add_parser("train-ae", help="train the binarizing autoencoder on healthy images",
                       description="Train the binarizing autoencoder (stage 1) on the healthy "
                       "training slices of a prepared directory.")
    _common(p, steps=12000, batch=6, lr=1.08e-4, ema=0.995, sample_every=1000)
    p.add_argument("--config", default="small", choices=presets, help="model size (default small)")
    p.add_argument("--rec-loss", default="l1", choices=("l1", "mse"), help="reconstruction loss (l1)")
    p.add_argument("--gan-start", type=int, default=30001,
                   help="first step with the adversarial loss (default 30001, as the released code)")
    p.add_argument("--disc-weight", type=float, default=1.0,
                   help="factor on the adaptive adversarial weight; 0: no discriminator (1.0)")
    p.add_argument("--disc-lr", type=float, default=None, help="discriminator lr (default: --lr)")
    p.add_argument("--lpips", default="off", choices=("off", "auto", "on"),
                   help="perceptual loss: auto uses LPIPS when its weights are on disk (never "
                   "downloads), on requires them (default off)")
    p.add_argument("--lpips-weight", type=float, default=1.0)
    p.add_argument("--entropy-weight", type=float, default=0.0,
                   help="factor on the mean binary entropy of the code: pushes the bit "
                        "probabilities to 0/1 so that the diffusion model can learn the code "
                        "(0: docs/method.md §7 exactly; the bundled models use 0.02)")
    p.add_argument("--content-mix", type=float, default=0.0, metavar="PROB",
                   help="probability that a training image gets a pasted region of another "
                        "healthy image with new contrast, which the autoencoder must reproduce: "
                        "teaches it to reconstruct unseen content such as anomalies "
                        "(0: docs/method.md §7 exactly)")
    p.set_defaults(func=run_ae)

    q = sub.add_parser("train-diffusion",
                       help="train the Bernoulli diffusion U-Net on a trained autoencoder's codes",
                       description="Train the Bernoulli diffusion U-Net (stage 2) in the binary "
                       "latent space of a frozen autoencoder checkpoint.")
    _common(q, steps=200000, batch=32, lr=1e-4, ema=0.999, sample_every=2000)
    q.add_argument("--ae", required=True, help="autoencoder checkpoint (OUT/autoencoder.pt of train-ae)")
    q.add_argument("--config", default=None, choices=presets,
                   help="U-Net size (default: the preset of the autoencoder)")
    q.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay (0)")
    q.add_argument("--sample-L", type=int, default=200, help="noise level of the sample grids (200)")
    q.add_argument("--init", metavar="MODEL", default=None,
                   help="start from the U-Net weights of this diffusion checkpoint (e.g. fine-tune "
                        "after the autoencoder trained further); ignored when resuming")
    q.add_argument("--t-max", type=int, default=None,
                   help="train on noise steps 1..T_MAX only (default: all 1000); the model is then "
                        "meant for L <= T_MAX (recorded in the checkpoint)")
    q.add_argument("--cache-codes", default="auto", choices=("auto", "on", "off"),
                   help="encode the training images once and draw each step's code from the "
                        "stored probabilities (same distribution, about 2x faster on the CPU); "
                        "auto: when they fit in a quarter of the free memory (default)")
    c = q.add_argument_group(
        "structured corruption (an addition to the paper, off by default)",
        "A share of the clean training codes gets a coherent wrong region before the usual "
        "noise; the target stays the flips relative to the clean code, so the U-Net learns to "
        "flag such regions (what the mask eps_hat > P needs to find anomalies). Healthy "
        "training data only.")
    c.add_argument("--corruption", default="iid", choices=("iid", "patch", "blob", "image"),
                   help="iid: the paper (default); patch: the bits of another training code, "
                        "shifted; blob: random flips in the region; image: a region of another "
                        "training image with new contrast, encoded (no code cache)")
    c.add_argument("--corruption-prob", type=float, default=0.5, metavar="PROB",
                   help="share of the training codes that get a region (0.5)")
    c.add_argument("--corruption-area", type=float, nargs=2, default=(0.03, 0.25),
                   metavar=("MIN", "MAX"),
                   help="share of the latent cells a region covers, drawn uniformly (0.03 0.25)")
    c.add_argument("--corruption-shape", default="blob", choices=("blob", "box"),
                   help="smooth random blobs or boxes (blob)")
    c.add_argument("--corruption-shift", type=int, default=8, metavar="CELLS",
                   help="patch: the donor code is shifted by up to this many latent cells (8)")
    c.add_argument("--corruption-flip-rate", type=float, default=0.5, metavar="RATE",
                   help="blob: each bit in the region flips with this probability (0.5)")
    q.set_defaults(func=run_diffusion)


def _dataset(args):
    from pathlib import Path

    from src_training.train.datasets import PreparedDataset
    from src_training.train.stage_common import meta_from_prepared

    if not Path(args.data).is_dir():
        raise FileNotFoundError(f"prepared dataset directory not found: {args.data}")
    ds = PreparedDataset(args.data, hflip=args.hflip)
    return ds, meta_from_prepared(ds.meta, args.data)


def _loop_kwargs(args) -> dict:
    return dict(steps=args.steps, batch_size=args.batch_size, lr=args.lr, ema=args.ema,
                device=args.device, amp=args.amp,
                resume=False if args.no_resume else args.resume, ckpt_every=args.ckpt_every,
                log_every=args.log_every, sample_every=args.sample_every, seed=args.seed,
                num_workers=args.num_workers, threads=args.threads, progress=not args.quiet)


def _run(train, *a, **kw) -> int:
    from src_training.train.distributed import cleanup
    from src_training.train.train_state import TrainingInterrupted

    try:
        path = train(*a, **kw)
    except TrainingInterrupted as err:  # the loop has saved and said where
        return 143 if err.reason == "SIGTERM" else 130
    finally:
        cleanup()
    if os.environ.get("RANK", "0") == "0":  # one line under torchrun too
        print(path)
    return 0


def run_ae(args) -> int:
    from src_training.train.train_autoencoder import train_autoencoder

    ds, meta = _dataset(args)
    return _run(train_autoencoder, ds, args.out, preset=args.config, rec_loss=args.rec_loss,
                gan_start=args.gan_start, disc_weight=args.disc_weight, disc_lr=args.disc_lr,
                lpips=args.lpips, lpips_weight=args.lpips_weight,
                entropy_weight=args.entropy_weight, content_mix=args.content_mix, meta=meta,
                **_loop_kwargs(args))


def run_diffusion(args) -> int:
    from src_training.train.corruption import Corruption
    from src_training.train.train_diffusion import train_diffusion

    corruption = Corruption(kind=args.corruption, prob=args.corruption_prob,
                            min_area=args.corruption_area[0], max_area=args.corruption_area[1],
                            shape=args.corruption_shape, max_shift=args.corruption_shift,
                            flip_rate=args.corruption_flip_rate)
    ds, meta = _dataset(args)
    # the autoencoder checkpoint's meta is carried forward; the data's fills in what it lacks
    return _run(train_diffusion, ds, args.ae, args.out, preset=args.config,
                weight_decay=args.weight_decay, sample_L=args.sample_L, meta_defaults=meta,
                init_unet=args.init, t_max=args.t_max, cache_codes=args.cache_codes,
                corruption=corruption,
                **_loop_kwargs(args))
