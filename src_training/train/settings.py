"""The training hyperparameters of both stages as dataclasses: the defaults live here, the stage
functions take these objects and ``berdiff train-ae`` / ``train-diffusion`` make their flags from
them (a field with a ``help`` in its metadata is a flag; see ``napari_berdiff.cli.dataclass_args``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from napari_berdiff.core.inference.settings import DEFAULTS, Record
from napari_berdiff.core.models.configs import PRESETS

__all__ = ["TrainingRun", "AutoencoderTraining", "DiffusionTraining", "Corruption", "KINDS",
           "SHAPES"]


def _flag(default, help: str, **more):
    return field(default=default, metadata={"help": help, **more})


def _named_flag(default, flag: str, help: str, **more):
    return _flag(default, help, flag=flag, **more)


KINDS = ("iid", "patch", "blob", "image")
SHAPES = ("blob", "box")


@dataclass(frozen=True)
class Corruption(Record):
    """Settings of the structured corruption (see :mod:`.corruption`); ``kind="iid"``: none."""

    kind: str = _named_flag("iid", "--corruption",
                      "iid: the paper (default); patch: the bits of another training code, "
                      "shifted; blob: random flips in the region; image: a region of another "
                      "training image with new contrast, encoded (no code cache)", choices=KINDS)
    prob: float = _named_flag(0.5, "--corruption-prob",
                        "share of the training codes that get a region ({default})",
                        metavar="PROB")
    # share of the latent cells a region covers, uniform in [min, max] (--corruption-area MIN MAX)
    min_area: float = 0.03
    max_area: float = 0.25
    shape: str = _named_flag("blob", "--corruption-shape", "smooth random blobs or boxes ({default})",
                       choices=SHAPES)
    max_shift: int = _named_flag(8, "--corruption-shift", "patch: the donor code is shifted by up to "
                                                    "this many latent cells ({default})",
                           metavar="CELLS")
    flip_rate: float = _named_flag(0.5, "--corruption-flip-rate",
                             "blob: each bit in the region flips with this probability "
                             "({default})", metavar="RATE")
    coarse: int = 4            # blob regions: side of the coarse Gaussian field

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"corruption must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.shape not in SHAPES:
            raise ValueError(f"corruption shape must be one of {', '.join(SHAPES)}, "
                             f"got {self.shape!r}")
        if not 0.0 <= self.prob <= 1.0:
            raise ValueError(f"corruption probability must be in [0, 1], got {self.prob}")
        if not 0.0 < self.min_area <= self.max_area <= 1.0:
            raise ValueError("corruption area must satisfy 0 < min <= max <= 1, got "
                             f"{self.min_area} {self.max_area}")
        if self.max_shift < 0:
            raise ValueError(f"corruption shift must be >= 0, got {self.max_shift}")
        if not 0.0 < self.flip_rate <= 1.0:
            raise ValueError(f"corruption flip rate must be in (0, 1], got {self.flip_rate}")
        if self.coarse < 2:
            raise ValueError(f"corruption coarse grid must be >= 2, got {self.coarse}")

    @property
    def active(self) -> bool:
        return self.kind != "iid" and self.prob > 0

    def describe(self) -> str:
        if not self.active:
            return "iid (the paper's i.i.d. bit flips only)"
        what = {"patch": f"bits of another training code shifted by up to {self.max_shift} cells",
                "blob": f"random flips at rate {self.flip_rate:g}",
                "image": "an encoded image region of another training image"}[self.kind]
        return (f"{self.kind}: with probability {self.prob:g}, a {self.shape} region covering "
                f"{self.min_area:.0%}-{self.max_area:.0%} of the latent cells gets {what}")



# the stage-dependent options: each stage declares them with its own default
def _steps(d):
    return _flag(d, "total optimisation steps (default {default})")


def _batch(d):
    return _flag(d, "per process (default {default})")


def _lr(d):
    return _flag(d, "learning rate (default {default:g})")


def _ema(d):
    return _flag(d, "EMA decay (default {default})")


def _sample_every(d):
    return _flag(d, "steps between sample grids ({default})")


@dataclass(frozen=True)
class TrainingRun:
    """The training loop's options, shared by both stages. ``resume``: None continues from
    ``out_dir/last.pt`` if present, a path continues from that file, False starts afresh.
    ``threads``: torch CPU threads (default: torch's choice). ``amp`` (CUDA only): auto | bf16 |
    fp16 | off."""

    steps: int
    batch_size: int
    lr: float
    ema: float
    sample_every: int
    device: str = _flag("auto", "auto | cpu | cuda | cuda:N (default auto)")
    amp: str = _flag("auto", "mixed precision on CUDA (auto: bf16 where supported, else fp16)",
                     choices=("auto", "bf16", "fp16", "off"))
    resume: str | Path | bool | None = None  # --resume CKPT / --no-resume
    ckpt_every: int = _flag(1000, "steps between checkpoints ({default})")
    log_every: int = _flag(50, "steps between log lines ({default})")
    seed: int = _flag(0, "random seed ({default})")
    num_workers: int = _flag(0, "DataLoader worker processes ({default})")
    threads: int | None = _flag(None, "torch CPU threads (default: torch's)")
    progress: bool = True  # --quiet


@dataclass(frozen=True)
class AutoencoderTraining(TrainingRun):
    """Stage 1, the binarizing autoencoder (see :mod:`.train_autoencoder`)."""

    steps: int = _steps(12000)
    batch_size: int = _batch(6)
    lr: float = _lr(1.08e-4)
    ema: float = _ema(0.995)
    sample_every: int = _sample_every(1000)
    preset: str = _flag("small", "model size (default {default})", flag="--config",
                        choices=sorted(PRESETS))
    rec_loss: str = _flag("l1", "reconstruction loss ({default})", choices=("l1", "mse"))
    gan_start: int = _flag(30001, "first step with the adversarial loss (default {default}, as "
                                  "the released code)")
    disc_weight: float = _flag(1.0, "factor on the adaptive adversarial weight; 0: no "
                                    "discriminator ({default})")
    disc_lr: float | None = _flag(None, "discriminator lr (default: --lr)")
    lpips: str | bool = _flag("off", "perceptual loss: auto uses LPIPS when its weights are on "
                                     "disk (never downloads), on requires them (default off)",
                              choices=("off", "auto", "on"))
    lpips_weight: float = _flag(1.0, "factor on the perceptual loss ({default})")
    entropy_weight: float = _flag(
        0.0, "factor on the mean binary entropy of the code: pushes the bit probabilities to 0/1 "
             "so that the diffusion model can learn the code (0: docs/method.md §7 exactly; the "
             "bundled models use 0.02)")
    content_mix: float = _flag(
        0.0, "probability that a training image gets a pasted region of another healthy image "
             "with new contrast, which the autoencoder must reproduce: teaches it to reconstruct "
             "unseen content such as anomalies (0: docs/method.md §7 exactly)", metavar="PROB")


@dataclass(frozen=True)
class DiffusionTraining(TrainingRun):
    """Stage 2, the Bernoulli diffusion U-Net (see :mod:`.train_diffusion`)."""

    steps: int = _steps(200_000)
    batch_size: int = _batch(32)
    lr: float = _lr(1e-4)
    ema: float = _ema(0.999)
    sample_every: int = _sample_every(2000)
    preset: str | None = _flag(None, "U-Net size (default: the preset of the autoencoder)",
                               flag="--config", choices=sorted(PRESETS))
    weight_decay: float = _flag(0.0, "AdamW weight decay ({default:g})")
    sample_L: int = _flag(DEFAULTS.L, "noise level of the sample grids ({default})",
                          flag="--sample-L")
    init_unet: str | Path | None = _flag(
        None, "start from the U-Net weights of this diffusion checkpoint (e.g. fine-tune after "
              "the autoencoder trained further); ignored when resuming", flag="--init",
        metavar="MODEL", type=str)
    t_max: int | None = _flag(
        None, "train on noise steps 1..T_MAX only (default: all 1000); the model is then meant "
              "for L <= T_MAX (recorded in the checkpoint)")
    cache_codes: str = _flag(
        "auto", "encode the training images once and draw each step's code from the stored "
                "probabilities (same distribution, about 2x faster on the CPU); auto: when they "
                "fit in a quarter of the free memory (default)", choices=("auto", "on", "off"))
    corruption: Corruption = field(default_factory=Corruption)  # the --corruption* flags
