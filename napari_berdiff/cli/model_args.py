"""Options shared by the subcommands that run a model (detect, evaluate, grid)."""

from __future__ import annotations

import sys


def add_model_args(p, required_model: bool = False) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--model", metavar="CKPT", help="a checkpoint with autoencoder and U-Net")
    if not required_model:
        g.add_argument("--bundled", choices=("brats", "oct"), help="a model bundled with the package")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")


def load_detector(args, local_rank: str | None = None):
    """The :class:`Detector` named by ``--model`` / ``--bundled`` on ``--device`` (under torchrun
    with ``--device auto``: ``cuda:LOCAL_RANK`` when CUDA is available). Warnings go to stderr."""
    import torch

    from ..core.detector import Detector
    from . import CLIError

    path = args.model
    if getattr(args, "bundled", None):
        from ..weights import bundled_path

        path = bundled_path(args.bundled)
        if path is None:
            raise CLIError(f"the bundled {args.bundled} model is not installed (not trained yet or "
                           "stripped from this installation); pass --model CKPT")
    device = args.device
    if device == "auto" and local_rank is not None and torch.cuda.is_available():
        device = f"cuda:{int(local_rank) % torch.cuda.device_count()}"
    det = Detector.from_checkpoint(str(path), device=device)
    if det.device_warning:
        print(f"warning: {det.device_warning}", file=sys.stderr)
    return det


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
