"""Exponential moving average (EMA) of a model's parameters.

``shadow = decay * shadow + (1 - decay) * param`` after every optimiser step; buffers (e.g.
BatchNorm statistics) are copied as they are. The shadow is a full copy of the module, so it can be
evaluated directly (samples during training) and saved as the released weights. The state dict
holds plain tensors and numbers (``torch.load(weights_only=True)`` reads it).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["EMA"]


class EMA:
    """EMA of ``model``'s floating-point parameters with a fixed ``decay`` (no warm-up, as released)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 <= float(decay) < 1.0:
            raise ValueError(f"EMA decay must lie in [0, 1), got {decay}")
        self.decay = float(decay)
        self.num_updates = 0
        self.shadow = copy.deepcopy(_plain(model)).eval()
        self.shadow.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One EMA step towards ``model``'s current parameters (call after ``optimizer.step()``)."""
        model = _plain(model)
        ema_p = [p for p in self.shadow.parameters()]
        cur_p = [p.detach() for p in model.parameters()]
        if len(ema_p) != len(cur_p):
            raise ValueError("EMA.update: the model's parameters do not match the shadow's")
        floats = [(e, c) for e, c in zip(ema_p, cur_p) if e.is_floating_point()]
        if floats:
            e, c = zip(*floats)
            torch._foreach_lerp_(list(e), list(c), 1.0 - self.decay)
        for eb, cb in zip(self.shadow.buffers(), model.buffers()):
            eb.copy_(cb)
        self.num_updates += 1

    def copy_to(self, model: nn.Module) -> None:
        """Load the EMA weights into ``model``."""
        _plain(model).load_state_dict(self.shadow.state_dict())

    def state_dict(self) -> dict:
        return {"decay": self.decay, "num_updates": int(self.num_updates),
                "shadow": {k: v.detach().cpu() for k, v in self.shadow.state_dict().items()}}

    def load_state_dict(self, state: dict) -> None:
        self.decay = float(state["decay"])
        self.num_updates = int(state["num_updates"])
        self.shadow.load_state_dict(state["shadow"])


def _plain(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)  # unwrap DistributedDataParallel
