"""Options shared by the subcommands that run a model (detect, evaluate, grid)."""

from __future__ import annotations

import sys


def add_model_args(p, required_model: bool = False) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--model", metavar="CKPT", help="a checkpoint with autoencoder and U-Net")
    if not required_model:
        g.add_argument("--bundled", choices=("brats", "oct"), help="a model bundled with the package")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    add_speed_args(p)


def add_sampling_args(p, steps_help: str) -> None:
    """``--L``, ``--P``, ``--steps`` (default None: see ``steps_help``) and ``--seed``, with the
    defaults of :data:`napari_berdiff.core.inference.settings.DEFAULTS`."""
    from ..core.inference.settings import DEFAULTS

    p.add_argument("--L", type=int, default=DEFAULTS.L, help=f"noise level L (default {DEFAULTS.L})")
    p.add_argument("--P", type=float, default=DEFAULTS.P,
                   help=f"mask threshold P (default {DEFAULTS.P})")
    p.add_argument("--steps", type=int, default=None, help=steps_help)
    p.add_argument("--seed", type=int, default=DEFAULTS.seed)


def add_postprocess_args(p, names=None) -> None:
    """The post-processing flags (all, or ``names``) of
    :class:`napari_berdiff.core.inference.settings.PostProcess`."""
    from ..core.inference.settings import PostProcess
    from .dataclass_args import add_fields

    add_fields(p, PostProcess, names)


def postprocess_from_args(args):
    """The :class:`PostProcess` of the parsed flags (defaults for those a command lacks)."""
    from ..core.inference.settings import PostProcess
    from .dataclass_args import from_args

    return from_args(PostProcess, args)


def add_speed_args(p) -> None:
    """``--amp``, ``--channels-last``, ``--compile`` and ``--threads`` (see core.inference.accel)."""
    from ..core.inference.accel import AMP_MODES

    g = p.add_argument_group("speed")
    g.add_argument("--amp", choices=AMP_MODES, default="auto",
                   help="mixed precision for the networks: auto (default: bf16 on CUDA, fp16 on "
                        "GPUs without bf16, off on the CPU), off, bf16, fp16 (CUDA only)")
    g.add_argument("--channels-last", action="store_true",
                   help="channels_last (NHWC) memory format for the networks (CUDA speed-up)")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the U-Net (slow first call; falls back to eager with a "
                        "warning when compilation fails)")
    g.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: physical cores, unless OMP_NUM_THREADS "
                        "is set)")


def add_batch_size_arg(p, help_extra: str = "", default="auto") -> None:
    """``--batch-size auto|N``: trajectories (slices x thresholds) per network call."""
    from ..core.inference.batching import parse_batch_size

    def _parse(v):
        try:
            return parse_batch_size(v)
        except ValueError as err:
            import argparse

            raise argparse.ArgumentTypeError(str(err)) from None

    what = ("auto (default: as many as the free memory allows) or a number" if default == "auto"
            else f"auto (as many as the free memory allows) or a number (default {default})")
    p.add_argument("--batch-size", type=_parse, default=default, metavar="auto|N",
                   help="slices x thresholds per network call: " + what + help_extra)


def resolve_batch_size(det, value) -> int:
    """An int batch size: ``auto`` planned from the detector's device and free memory."""
    return int(det.plan_batches("auto").trajectories) if value == "auto" else int(value)


def load_detector(args, local_rank: str | None = None):
    """The :class:`Detector` named by ``--model`` / ``--bundled`` on ``--device`` (under torchrun
    with ``--device auto``: ``cuda:LOCAL_RANK`` when CUDA is available). Warnings go to stderr."""
    import torch

    from ..core.inference.detector import Detector
    from . import CLIError

    path = args.model
    if getattr(args, "bundled", None):
        from ..weights import bundled_path

        path = bundled_path(args.bundled)
        if path is None:
            raise CLIError(f"the bundled {args.bundled} model is not installed (not trained yet or "
                           "stripped from this installation); pass --model CKPT")
    from ..core.inference.accel import configure_threads

    device = args.device
    if device == "auto" and local_rank is not None and torch.cuda.is_available():
        device = f"cuda:{int(local_rank) % torch.cuda.device_count()}"
    configure_threads(getattr(args, "threads", None))
    det = Detector.from_checkpoint(str(path), device=device, **speed_options(args))
    if det.device_warning:
        print(f"warning: {det.device_warning}", file=sys.stderr)
    return det


def speed_options(args) -> dict:
    """The Detector speed options from parsed arguments (defaults where a command lacks them)."""
    return {"amp": getattr(args, "amp", "auto"),
            "channels_last": bool(getattr(args, "channels_last", False)),
            "compile": bool(getattr(args, "compile", False))}


class _Bar:
    """A tqdm bar driven by (done, total) ticks; a no-op when disabled."""

    def __init__(self, desc: str, disable: bool):
        from tqdm import tqdm

        self._bar = tqdm(total=0, desc=desc, unit="step", disable=disable, leave=False,
                         file=sys.stderr, dynamic_ncols=True)

    def update_to(self, done: int, total: int) -> None:
        if self._bar.total != total:
            self._bar.total = total
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        self._bar.close()


def progress_bar(desc: str, disable: bool = False) -> _Bar:
    return _Bar(desc, disable)
