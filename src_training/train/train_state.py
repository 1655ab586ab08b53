"""Building blocks of the training loop (:mod:`src_training.train.loop`): seeds and RNG states, the
resumable data order, mixed precision, the training state and the stage interface.

Everything a checkpoint stores from here is tensors and plain types, so that
``torch.load(weights_only=True)`` reads it.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from .distributed import DistInfo, unwrap
from .ema import EMA

__all__ = ["LoopOptions", "TrainState", "TrainTask", "TrainingInterrupted", "InfiniteLoader",
           "Amp", "resolve_amp", "configure_cuda", "seed_everything", "derive_seed",
           "capture_rng", "restore_rng", "collate_first", "resume_path", "LAST"]

LAST = "last.pt"


class TrainingInterrupted(KeyboardInterrupt):
    """Raised after a stop request (Ctrl-C / SIGTERM) once ``checkpoint`` holds step ``step``."""

    def __init__(self, step: int, checkpoint: Path | None, reason: str) -> None:
        self.step, self.checkpoint, self.reason = step, checkpoint, reason
        where = f"saved {checkpoint}" if checkpoint else "nothing saved"
        super().__init__(f"training stopped by {reason} at step {step}; {where}")


# ----------------------------------------------------------------------------- seeds and RNG


def derive_seed(*keys: int) -> int:
    """A well-mixed 63-bit seed from integer keys (e.g. ``(seed, rank)``)."""
    ss = np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in keys])
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> 1)


def seed_everything(seed: int) -> None:
    """Seed ``random``, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed & 0xFFFFFFFF)
    torch.manual_seed(seed)


def capture_rng() -> dict:
    """This process's RNG states as tensors and plain types (``weights_only``-loadable)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    out = {"torch": torch.get_rng_state(),
           "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                     "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
           "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return out


def restore_rng(state: Mapping) -> None:
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


# ----------------------------------------------------------------------------- data


def _first(item: Any) -> Any:
    if isinstance(item, (torch.Tensor, np.ndarray)):
        return item
    if isinstance(item, Mapping):
        return item["image"] if "image" in item else next(iter(item.values()))
    if isinstance(item, Sequence) and not isinstance(item, str) and len(item):
        return item[0]
    raise TypeError(f"dataset items must be (C, S, S) tensors, or tuples/dicts holding one first; "
                    f"got {type(item).__name__}")


def collate_first(items: list) -> torch.Tensor:
    """Stack the (C, S, S) image of each item (the item itself, or the first of a tuple/dict)."""
    xs = [torch.as_tensor(_first(it)) for it in items]
    if xs[0].ndim != 3:
        raise ValueError(f"dataset images must be (C, S, S), got shape {tuple(xs[0].shape)}")
    return torch.stack(xs).float()


class _Skip(Sampler):
    """The indices of ``base`` from position ``start`` on (resume inside an epoch)."""

    def __init__(self, base: Sampler, start: int) -> None:
        self.base, self.start = base, int(start)

    def __iter__(self):
        return itertools.islice(iter(self.base), self.start, None)

    def __len__(self) -> int:
        return max(0, len(self.base) - self.start)  # type: ignore[arg-type]


class InfiniteLoader:
    """Endless batches; each rank reads its shard; the position can be saved and restored."""

    def __init__(self, dataset, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1,
                 num_workers: int = 0, pin_memory: bool = False) -> None:
        if len(dataset) == 0:
            raise ValueError("the training dataset is empty")
        self.dataset, self.batch_size, self.seed = dataset, int(batch_size), int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.num_workers, self.pin_memory = int(num_workers), bool(pin_memory)
        self.epoch, self.batch = 0, 0
        self._it = None

    def _sampler(self) -> DistributedSampler:
        s = DistributedSampler(self.dataset, num_replicas=self.world_size, rank=self.rank,
                               shuffle=True, seed=self.seed & 0x7FFFFFFF, drop_last=False)
        s.set_epoch(self.epoch)
        return s

    def _make(self):
        base = self._sampler()
        drop_last = len(base) >= self.batch_size  # a dataset smaller than a batch still trains
        g = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, 77))  # worker seeds
        loader = DataLoader(self.dataset, batch_size=self.batch_size,
                            sampler=_Skip(base, self.batch * self.batch_size), drop_last=drop_last,
                            num_workers=self.num_workers, collate_fn=collate_first,
                            pin_memory=self.pin_memory, generator=g)
        return iter(loader)

    def __iter__(self):
        return self

    def __next__(self) -> torch.Tensor:
        for _ in range(2):
            if self._it is None:
                self._it = self._make()
            try:
                out = next(self._it)
            except StopIteration:
                self._it, self.epoch, self.batch = None, self.epoch + 1, 0
                continue
            self.batch += 1
            return out
        raise RuntimeError("the data loader yields no batches")

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch, "seed": self.seed,
                "world_size": self.world_size, "batch_size": self.batch_size}

    def load_state_dict(self, d: Mapping) -> None:
        self._it = None
        same = (int(d["world_size"]) == self.world_size and int(d["batch_size"]) == self.batch_size
                and int(d["seed"]) == self.seed)
        self.epoch, self.batch = int(d["epoch"]), int(d["batch"]) if same else 0
        if not same:
            print("note: batch size, seed or number of processes changed since the checkpoint; "
                  f"the data order restarts at epoch {self.epoch}")


# ----------------------------------------------------------------------------- precision


@dataclass(frozen=True)
class Amp:
    """Mixed precision on CUDA: autocast to ``dtype`` (None: full precision), loss scaling for fp16."""

    device_type: str = "cpu"
    dtype: torch.dtype | None = None

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler("cuda", enabled=self.dtype == torch.float16)

    @property
    def name(self) -> str:
        return {None: "off", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]


def configure_cuda(device: torch.device) -> None:
    """TF32 matmuls/convolutions and cuDNN autotuning for training on CUDA (no-op elsewhere)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True


def resolve_amp(mode: str, device: torch.device) -> Amp:
    """``auto`` (on CUDA bf16 where supported, else fp16; off elsewhere) | bf16 | fp16 | off."""
    if mode not in ("auto", "bf16", "fp16", "off"):
        raise ValueError(f"amp must be auto, bf16, fp16 or off, got {mode!r}")
    if device.type != "cuda" or mode == "off":
        if mode in ("bf16", "fp16"):
            print(f"note: mixed precision ({mode}) is only used on CUDA; training in float32")
        return Amp(device.type, None)
    if mode == "auto":
        mode = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return Amp("cuda", torch.bfloat16 if mode == "bf16" else torch.float16)


# ----------------------------------------------------------------------------- state and task


class TrainState:
    """Everything that changes during training, by name: models, optimisers, EMAs, scalers, step."""

    def __init__(self, models: dict, optimizers: dict, emas: dict[str, EMA], scalers: dict) -> None:
        self.models, self.optimizers, self.emas, self.scalers = models, optimizers, emas, scalers
        self.step = 0

    def state_dict(self, ema_states: Mapping[str, dict]) -> dict:
        return {"step": self.step,
                "models": {k: unwrap(m).state_dict() for k, m in self.models.items()},
                "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
                "emas": dict(ema_states),
                "scalers": {k: s.state_dict() for k, s in self.scalers.items()}}

    def load_state_dict(self, d: Mapping) -> None:
        for group in ("models", "optimizers", "emas", "scalers"):
            have, saved = set(getattr(self, group)), set(d.get(group, {}))
            if have != saved:
                raise ValueError(f"the checkpoint's {group} {sorted(saved)} do not match this run's "
                                 f"{sorted(have)}")
        for k, m in self.models.items():
            unwrap(m).load_state_dict(d["models"][k])
        for k, o in self.optimizers.items():
            o.load_state_dict(d["optimizers"][k])
        for k, e in self.emas.items():
            e.load_state_dict(d["emas"][k])
        for k, s in self.scalers.items():
            if d["scalers"][k]:
                s.load_state_dict(d["scalers"][k])
        self.step = int(d["step"])


class TrainTask:
    """Interface of a training stage (see the module docstring); subclasses fill these in."""

    stage: str = "?"
    final_name: str = "model.pt"
    state: TrainState
    info: DistInfo

    def train_step(self, batch: torch.Tensor, step: int) -> dict[str, float]:
        """One optimisation step on ``batch`` (already on the device); ``step`` counts from 1."""
        raise NotImplementedError

    def export(self, ema_states: Mapping[str, dict]) -> dict:
        """Keyword arguments of ``save_checkpoint`` for the released file (EMA weights + meta)."""
        raise NotImplementedError

    def check_resume(self, ckpt: Mapping) -> None:
        """Raise ValueError when ``ckpt`` (a raw checkpoint dict) was made by an incompatible run."""

    def write_samples(self, path: Path, step: int) -> None:
        """Write a PNG grid of samples/reconstructions (rank 0 only)."""

    def lr(self) -> float:
        return float(next(iter(self.state.optimizers.values())).param_groups[0]["lr"])


@dataclass
class LoopOptions:
    out_dir: Path
    steps: int
    batch_size: int
    seed: int = 0
    ckpt_every: int = 1000
    log_every: int = 50
    sample_every: int = 1000
    resume: str | os.PathLike | bool | None = None
    num_workers: int = 0
    progress: bool = True
    on_end: Callable[[TrainTask], None] | None = None  # hook for tests / scripts (every rank)

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        for name in ("steps", "batch_size", "ckpt_every", "log_every", "sample_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")


def resume_path(opts: LoopOptions) -> Path | None:
    if opts.resume is False:
        return None
    if opts.resume in (None, True):
        p = opts.out_dir / LAST
        if p.is_file():
            return p
        if opts.resume is True:
            raise FileNotFoundError(f"nothing to resume: {p} does not exist")
        return None
    p = Path(opts.resume)  # type: ignore[arg-type]
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint to resume from not found: {p}")
    return p
