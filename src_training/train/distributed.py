"""Distributed data parallel (DDP) helpers; every entry point also works without ``torchrun``.

Under torchrun :func:`init_distributed` starts a process group (nccl on CUDA, gloo on the CPU);
without it every helper is a no-op, so the loops never branch on it. Rank 0 alone logs and
writes checkpoints (docs/design-notes.md, "Training internals").
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from napari_berdiff.core.inference.device import resolve_device

__all__ = ["DistInfo", "init_distributed", "wrap_ddp", "unwrap", "barrier", "all_gather_object",
           "any_rank", "cleanup"]


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: rank, world size, local rank and the torch device it trains on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None
    device_warning: str | None = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 and dist.is_available() and dist.is_initialized()

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        raise ValueError(f"environment variable {name}={os.environ[name]!r} is not an integer"
                         ) from None


def init_distributed(device: str | torch.device | None = "auto") -> DistInfo:
    """Start the process group when launched by ``torchrun`` (idempotent); pick the device.

    ``device``: ``auto`` | ``cpu`` | ``cuda`` (| ``cuda:N`` outside torchrun). Under torchrun with
    CUDA each rank uses ``cuda:LOCAL_RANK``.
    """
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", 0)
    dev, warning = resolve_device(device)
    if world <= 1:
        return DistInfo(0, 1, 0, dev, None, warning)
    if dev.type == "cuda":
        if torch.cuda.device_count() <= local:
            raise ValueError(f"LOCAL_RANK {local} needs at least {local + 1} CUDA devices; found "
                             f"{torch.cuda.device_count()}")
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
        backend = "nccl"
    elif dev.type == "cpu":
        backend = "gloo"
        local_world = _env_int("LOCAL_WORLD_SIZE", world)
        # share the cores between the ranks on this machine instead of oversubscribing them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, local_world)))
    else:
        raise ValueError(f"distributed training supports cpu and cuda devices, not {dev.type}")
    if not dist.is_initialized():
        kwargs: dict[str, Any] = {"backend": backend}
        if backend == "nccl":
            kwargs["device_id"] = dev
        dist.init_process_group(**kwargs)
    return DistInfo(rank, world, local, dev, backend, warning)


def wrap_ddp(model: torch.nn.Module, info: DistInfo, **kwargs) -> torch.nn.Module:
    """``DistributedDataParallel(model)`` when distributed, else ``model`` itself."""
    if not info.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [info.device.index] if info.device.type == "cuda" else None
    return DDP(model, device_ids=ids, output_device=ids[0] if ids else None, **kwargs)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside a DDP wrapper (or the module itself)."""
    return getattr(model, "module", model)


def barrier(info: DistInfo) -> None:
    if info.distributed:
        if info.backend == "nccl":
            dist.barrier(device_ids=[info.device.index])
        else:
            dist.barrier()


def all_gather_object(obj: Any, info: DistInfo) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` (``[obj]`` when not distributed)."""
    if not info.distributed:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def any_rank(flag: bool, info: DistInfo) -> bool:
    """True on every rank when ``flag`` is true on any rank (used to stop all ranks together)."""
    if not info.distributed:
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def cleanup() -> None:
    """Tear the process group down, if one is up (safe to call more than once). The training
    functions leave it up, so that one process can run several stages; entry points call this."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
