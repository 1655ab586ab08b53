"""``berdiff diagnose ae|unet|oracle|paired MODEL ...``: where a model's detection fails.

Thin wrappers over :mod:`napari_berdiff.core.evaluation.diagnosis`: load the model (and the
prepared split), run the diagnosis, print its table, write ``--json`` when asked.
"""

from __future__ import annotations

import argparse
import json

from ..core.inference.settings import DEFAULTS


def register(sub) -> None:
    p = sub.add_parser("diagnose", help="diagnose a model: autoencoder PSNR (ae), the U-Net on "
                                        "anomaly bits (unet), an oracle mask (oracle), "
                                        "generated healthy twins (paired)")
    what = p.add_subparsers(dest="diagnosis", metavar="ae|unet|oracle|paired")
    what.required = True
    _ae(what.add_parser("ae", help="does the autoencoder reproduce anomalies? (PSNR, AE only)"))
    _unet(what.add_parser("unet", help="does the U-Net flag the anomaly's bits?"))
    _oracle(what.add_parser("oracle", help="would it heal the anomaly with a perfect mask?"))
    _paired(what.add_parser("paired", help="does the mask find generated anomalies? "
                                           "(pairs with healthy twins)"))


def _common(p: argparse.ArgumentParser, seed: int = DEFAULTS.seed, threads: int | None = None,
            seed_help: str | None = None) -> None:
    p.add_argument("--seed", type=int, default=seed, help=seed_help)
    p.add_argument("--threads", type=int, default=threads)
    p.add_argument("--json", default=None, help="also write the figures here")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")


def _ae(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="autoencoder.pt, a full model or a training last.pt")
    p.add_argument("data", help="prepared directory with val/test splits")
    p.add_argument("--split", default="val", choices=["val", "test"])
    p.add_argument("--max-slices", type=int, default=None, help="evenly spaced subset")
    p.add_argument("--batch-size", type=int, default=16)
    _common(p)
    p.set_defaults(func=run_ae)


def _split_args(p: argparse.ArgumentParser, max_slices: int, batch: int) -> None:
    p.add_argument("model", metavar="MODEL",
                   help="a full model (autoencoder and U-Net) or a diffusion run's last.pt")
    p.add_argument("data", help="a prepared dataset with labelled anomalies")
    p.add_argument("--split", default="test", choices=("val", "test"))
    p.add_argument("--max-slices", type=int, default=max_slices,
                   help="diseased slices, evenly spaced")
    p.add_argument("--P", type=float, default=DEFAULTS.P, help="mask threshold")
    p.add_argument("--batch", type=int, default=batch)
    _common(p)


def _unet(p: argparse.ArgumentParser) -> None:
    _split_args(p, max_slices=60, batch=16)
    p.add_argument("--t", type=int, nargs="+", default=[50, 100, 200], help="noise levels")
    p.set_defaults(func=run_unet)


def _oracle(p: argparse.ArgumentParser) -> None:
    _split_args(p, max_slices=40, batch=8)
    p.add_argument("--L", type=int, default=DEFAULTS.L)
    p.add_argument("--steps", type=int, default=DEFAULTS.steps)
    p.add_argument("--dilate", type=int, default=1, help="grow the oracle mask by N latent cells")
    p.set_defaults(func=run_oracle)


def _paired(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL",
                   help="diffusion checkpoint (model.pt, last.pt or a bundled file)")
    p.add_argument("--kind", default="tumour", choices=("tumour", "cavity", "ventricle", "oct"),
                   help="BraTS-like lesion kind, or oct (drusen)")
    p.add_argument("--pairs", type=int, default=8, help="subjects (BraTS) or B-scans (OCT) (8)")
    p.add_argument("--per-subject", type=int, default=5, help="BraTS slices per subject (5)")
    p.add_argument("--t", type=int, nargs="+", default=[50, 200])
    p.add_argument("--L", type=int, default=DEFAULTS.L)
    p.add_argument("--P", type=float, nargs="+", default=[0.3, 0.5])
    p.add_argument("--steps", type=int, default=DEFAULTS.steps)
    _common(p, seed=24680, threads=1, seed_help="held-out seeds (default 24680)")
    p.set_defaults(func=run_paired)
    p.add_argument("--pairs-cache", default=None, metavar="NPZ",
                   help="keep the generated pairs in this file and reuse them (same settings!)")


def _start(args) -> None:
    """Refuse an existing --json before any work; set the torch threads."""
    import torch

    from ..core.io.outputs import check_outputs

    if args.json:
        check_outputs([args.json], args.overwrite)
    if args.threads:
        torch.set_num_threads(args.threads)


def _load(args):
    """``(checkpoint, split)`` of ``args.model`` and ``args.data``; one line when unreadable."""
    from src_training.train.datasets import load_eval_split

    from ..core.models.checkpoint import load_checkpoint
    from . import CLIError

    try:
        ck = load_checkpoint(args.model)
        split = load_eval_split(args.data, args.split)
    except (OSError, KeyError) as e:
        raise CLIError(str(e)) from None
    return ck, split


def _finish(args, res: dict, text: str) -> int:
    from ..core.io.atomic import atomic_write_text

    print(text)
    if args.json:
        atomic_write_text(args.json, json.dumps(res, indent=2) + "\n")
    return 0


def _info(args) -> dict:
    return {"checkpoint": str(args.model), "data": str(args.data), "split": args.split}


def run_ae(args) -> int:
    from ..core.evaluation.diagnosis import ae

    _start(args)
    ck, split = _load(args)
    ck.check_channels(split.images.shape[1], f"{args.data} ({args.split})")
    res = ae.measure(ck, split, _info(args), args.max_slices, args.batch_size, args.seed)
    return _finish(args, res, ae.report(res))


def run_unet(args) -> int:
    from ..core.evaluation.diagnosis import unet
    from ..core.evaluation.diagnosis.slices import diseased_slices

    _start(args)
    ck, split = _load(args)
    s, cell = diseased_slices(ck, split, f"{args.data} ({args.split})", args.max_slices)
    res = unet.measure(ck, s, cell, _info(args), args.t, args.P, args.batch, args.seed)
    return _finish(args, res, unet.report(res))


def run_oracle(args) -> int:
    from ..core.evaluation.diagnosis import oracle
    from ..core.evaluation.diagnosis.slices import diseased_slices

    _start(args)
    ck, split = _load(args)
    s, cell = diseased_slices(ck, split, f"{args.data} ({args.split})", args.max_slices)
    res = oracle.measure(ck, s, cell, _info(args), args.L, args.steps, args.P, args.dilate,
                         args.batch, args.seed)
    return _finish(args, res, oracle.report(res))


def run_paired(args) -> int:
    from ..core.evaluation.diagnosis import paired
    from . import CLIError

    _start(args)
    try:
        res = paired.measure(args.model, args.kind, args.pairs, args.per_subject, args.t, args.L,
                             args.P, args.steps, args.seed, args.pairs_cache)
    except (OSError, KeyError) as e:
        raise CLIError(str(e)) from None
    return _finish(args, res, paired.report(res))
