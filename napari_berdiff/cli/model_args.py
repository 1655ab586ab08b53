"""Options shared by the subcommands that run a model (detect, evaluate, grid)."""

from __future__ import annotations

import sys


def add_model_args(p, required_model: bool = False, optional: bool = False) -> None:
    """``--model CKPT`` / ``--bundled brats|oct`` (one of them required unless ``optional``:
    then :func:`bundled_for` picks the bundled model for the inputs), ``--device`` and the speed
    options."""
    g = p.add_mutually_exclusive_group(required=not optional)
    g.add_argument("--model", metavar="CKPT", help="a checkpoint with autoencoder and U-Net")
    if not required_model:
        g.add_argument("--bundled", choices=("brats", "oct"), help="a model bundled with the package"
                       + (" (default: the one for the inputs: brats for BraTS cases and 4-channel "
                          "NIfTI volumes, oct for 2D images)" if optional else ""))
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


def check_run_args(args) -> None:
    """Options shared by the commands that run a model, refused in one line (CLIError):
    ``--threads`` below 1, a negative ``--seed``, ``--P`` outside [0, 1] (lists included)."""
    import math

    from . import CLIError

    threads = getattr(args, "threads", None)
    if threads is not None and threads < 1:
        raise CLIError(f"--threads must be at least 1 (torch CPU threads; leave it out for the "
                       f"default), got {threads}")
    seed = getattr(args, "seed", None)
    if seed is not None and seed < 0:
        raise CLIError(f"--seed must be 0 or more, got {seed}")
    Ps = getattr(args, "P", None)
    for P in (Ps if isinstance(Ps, (list, tuple)) else [] if Ps is None else [Ps]):
        if not (math.isfinite(P) and 0.0 <= P <= 1.0):
            raise CLIError(f"--P must lie in [0, 1] (0: every latent bit resampled, 1: none), "
                           f"got {P}")


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


def bundled_for(items) -> tuple[str, str]:
    """``(modality, why)`` of the bundled model that fits the inputs (:class:`InputItem` s of
    :func:`~napari_berdiff.core.io.discovery.discover_inputs`): ``brats`` for BraTS case folders
    and 4D NIfTI volumes with 4 channels, ``oct`` for 2D images. CLIError when the inputs need
    different models or when their kind does not tell (e.g. a 3D NIfTI volume)."""
    from . import CLIError

    kinds: dict[str, list] = {}
    for it in items:
        modality = "" if it.kind == "invalid" else _modality_of(it)
        if modality != "":  # invalid or unreadable inputs fail on their own when they run
            kinds.setdefault(modality, []).append(it)
    if None in kinds:
        it = kinds[None][0]
        raise CLIError(f"cannot tell which bundled model fits {it.path} (a {it.kind} input that is "
                       "neither a 4-channel brain volume nor a 2D image); pass --bundled brats|oct "
                       "or --model CKPT")
    if len(kinds) > 1:
        raise CLIError(f"the inputs need different models (BraTS-style volumes such as "
                       f"{kinds['brats'][0].path} and 2D images such as {kinds['oct'][0].path}); "
                       "run them separately or pass --model CKPT")
    if not kinds:
        return "brats", "no valid input"
    (modality,) = kinds
    why = "4-channel brain inputs" if modality == "brats" else "2D images"
    return modality, why


def _modality_of(item) -> str | None:
    """"brats", "oct", None (cannot tell) or "" (unreadable)."""
    if item.kind == "brats_case":
        return "brats"
    if item.kind == "image":
        return "oct"
    if item.kind == "nifti":
        try:
            import nibabel as nib

            shape = nib.load(str(item.path)).shape
        except Exception:  # unreadable: its own failure is reported when it runs
            return ""
        return "brats" if len(shape) == 4 and shape[-1] == 4 else None
    return None


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
