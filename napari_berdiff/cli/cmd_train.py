"""``berdiff train-ae`` and ``berdiff train-diffusion``: train the two networks on a prepared
dataset directory.

Both write ``last.pt`` (resumable), ``log.jsonl``, ``loss.png``, ``samples/`` and the final model
file into ``--out``; both run under torchrun, ``--batch-size`` per process (docs/training.md).
"""

from __future__ import annotations

import argparse
import os

from .dataclass_args import add_fields, from_args

# the corruption settings' flags land on args.corruption_<field>
_CORRUPTION = "corruption_"


def _common(p: argparse.ArgumentParser, settings_cls) -> None:
    """The data and output arguments and the flags of ``settings_cls`` (a TrainingRun)."""
    p.add_argument("data", help="prepared dataset directory (healthy training slices)")
    p.add_argument("--out", required=True, help="output folder (checkpoints, logs, samples)")
    add_fields(p, settings_cls)
    r = p.add_mutually_exclusive_group()
    r.add_argument("--resume", metavar="CKPT", default=None,
                   help="continue from this checkpoint (default: OUT/last.pt when it exists)")
    r.add_argument("--no-resume", action="store_true",
                   help="start afresh even when OUT/last.pt exists (it is overwritten)")
    p.add_argument("--hflip", action="store_true", help="random left-right flips of the training slices")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def register(sub) -> None:
    from src_training.train.corruption import Corruption
    from src_training.train.settings import AutoencoderTraining, DiffusionTraining

    p = sub.add_parser("train-ae", help="train the binarizing autoencoder on healthy images",
                       description="Train the binarizing autoencoder (stage 1) on the healthy "
                       "training slices of a prepared directory.")
    _common(p, AutoencoderTraining)
    p.set_defaults(func=run_ae)

    q = sub.add_parser("train-diffusion",
                       help="train the Bernoulli diffusion U-Net on a trained autoencoder's codes",
                       description="Train the Bernoulli diffusion U-Net (stage 2) in the binary "
                       "latent space of a frozen autoencoder checkpoint.")
    _common(q, DiffusionTraining)
    q.add_argument("--ae", required=True, help="autoencoder checkpoint (OUT/autoencoder.pt of train-ae)")
    c = q.add_argument_group(
        "structured corruption (an addition to the paper, off by default)",
        "A share of the clean training codes gets a coherent wrong region before the usual "
        "noise; the target stays the flips relative to the clean code, so the U-Net learns to "
        "flag such regions (what the mask eps_hat > P needs to find anomalies). Healthy "
        "training data only.")
    add_fields(c, Corruption, prefix=_CORRUPTION)
    plain = Corruption()
    c.add_argument("--corruption-area", type=float, nargs=2,
                   default=(plain.min_area, plain.max_area), metavar=("MIN", "MAX"),
                   help="share of the latent cells a region covers, drawn uniformly "
                        f"({plain.min_area:g} {plain.max_area:g})")
    q.set_defaults(func=run_diffusion)


def _dataset(args):
    from pathlib import Path

    from src_training.train.datasets import PreparedDataset
    from src_training.train.stage_common import meta_from_prepared

    if not Path(args.data).is_dir():
        raise FileNotFoundError(f"prepared dataset directory not found: {args.data}")
    ds = PreparedDataset(args.data, hflip=args.hflip)
    return ds, meta_from_prepared(ds.meta, args.data)


def stage_settings(cls, args, **extra):
    """The stage's settings from the parsed flags."""
    return from_args(cls, args, resume=False if args.no_resume else args.resume,
                     progress=not args.quiet, **extra)


def corruption_from_args(args):
    """The :class:`Corruption` of the parsed ``--corruption*`` flags."""
    from src_training.train.corruption import Corruption

    lo, hi = args.corruption_area
    return from_args(Corruption, args, prefix=_CORRUPTION, min_area=lo, max_area=hi)


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
    from src_training.train.settings import AutoencoderTraining
    from src_training.train.train_autoencoder import train_autoencoder

    ds, meta = _dataset(args)
    return _run(train_autoencoder, ds, args.out, stage_settings(AutoencoderTraining, args), meta=meta)


def run_diffusion(args) -> int:
    from src_training.train.settings import DiffusionTraining
    from src_training.train.train_diffusion import train_diffusion

    corruption = corruption_from_args(args)
    ds, meta = _dataset(args)
    # the autoencoder checkpoint's meta is carried forward; the data's fills in what it lacks
    return _run(train_diffusion, ds, args.ae, args.out,
                stage_settings(DiffusionTraining, args, corruption=corruption), meta_defaults=meta)
