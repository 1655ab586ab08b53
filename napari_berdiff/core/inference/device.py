"""Choosing the torch device, with a visible fallback to the CPU."""

from __future__ import annotations

import torch


def resolve_device(spec: str | torch.device | None = "auto") -> tuple[torch.device, str | None]:
    """Map ``"auto" | "cpu" | "cuda" | "cuda:N" | "mps"`` to a usable device.

    Returns ``(device, warning)``; ``warning`` is a sentence for the user when the request could not
    be honoured and the CPU is used instead (``None`` otherwise).
    """
    if spec is None or str(spec) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device()), None
        return torch.device("cpu"), None
    try:
        dev = torch.device(spec)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"unknown device {spec!r} (use auto, cpu, cuda or cuda:N): {err}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            return torch.device("cpu"), f"CUDA is not available here; running on the CPU instead of {spec}"
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            return torch.device("cpu"), f"{spec} does not exist ({n} CUDA device(s)); running on the CPU"
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            return torch.device("cpu"), "MPS is not available here; running on the CPU"
    elif dev.type != "cpu":
        raise ValueError(f"unsupported device {spec!r} (use auto, cpu, cuda or cuda:N)")
    return dev, None


def available_devices() -> list[str]:
    """Device choices for a user interface: ``auto``, ``cpu`` and each CUDA device."""
    out = ["auto", "cpu"]
    if torch.cuda.is_available():
        out += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return out
