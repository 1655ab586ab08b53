"""Training losses of both stages (docs/method.md §4 and §7).

Autoencoder: reconstruction (L1 or MSE), PatchGAN hinge losses, the adaptive adversarial weight
and an optional LPIPS term (only with weights already on disk). Diffusion: binary cross-entropy
against ``z_t XOR z_0`` from the logits, mean over bits, in nats.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["reconstruction_loss", "hinge_d_loss", "hinge_g_loss", "adaptive_weight",
           "flip_bce_loss", "code_entropy", "LPIPSLoss", "lpips_weight_files", "load_lpips",
           "REC_LOSSES"]

REC_LOSSES = ("l1", "mse")


def reconstruction_loss(x_rec: torch.Tensor, x: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    """Mean absolute (``l1``) or squared (``mse``) error, computed in float32."""
    x_rec, x = x_rec.float(), x.float()
    if kind == "l1":
        return (x_rec - x).abs().mean()
    if kind == "mse":
        return F.mse_loss(x_rec, x)
    raise ValueError(f"unknown reconstruction loss {kind!r}; choose one of {REC_LOSSES}")


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss ``mean(relu(1 - real)) + mean(relu(1 + fake))``."""
    return F.relu(1.0 - logits_real.float()).mean() + F.relu(1.0 + logits_fake.float()).mean()


def hinge_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Generator (autoencoder) adversarial loss ``-mean(fake)``."""
    return -logits_fake.float().mean()


def adaptive_weight(rec_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor,
                    *, scale: float = 1.0, max_weight: float = 1.0) -> torch.Tensor:
    """``||d rec/d W|| / (||d g/d W|| + 1e-4)`` at ``W = last_layer``, clamped to
    [0, max_weight] and detached.

    Both losses must still have their graphs (they are kept: ``retain_graph=True``). ``scale`` is a
    mixed-precision loss scale: the gradients are taken of the scaled losses (no fp16 underflow)
    and divided by it again.
    """
    g_rec = torch.autograd.grad(rec_loss * scale, last_layer, retain_graph=True)[0]
    g_adv = torch.autograd.grad(g_loss * scale, last_layer, retain_graph=True)[0]
    n_rec = g_rec.float().norm() / scale
    n_adv = g_adv.float().norm() / scale
    w = n_rec / (n_adv + 1e-4)
    return torch.clamp(w, 0.0, max_weight).detach()


def code_entropy(probs: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Mean binary entropy (nats) of the encoder's bit probabilities: ln 2 when every bit is a
    coin flip, 0 when the code is deterministic. A penalty on it (``entropy_weight``) makes the
    stochastic code ``z ~ Bernoulli(p)`` nearly a function of the image, which the diffusion model
    can then learn: bits with p near 1/2 are noise it cannot predict, so its flip probabilities
    stay at the prior."""
    p = probs.float().clamp(eps, 1 - eps)
    return -(p * torch.log(p) + (1 - p) * torch.log1p(-p)).mean()


def flip_bce_loss(logits: torch.Tensor, z_t: torch.Tensor, z0: torch.Tensor) -> torch.Tensor:
    """BCE between ``sigmoid(logits)`` and the flip indicator ``z_t XOR z_0``, mean over bits (nats)."""
    target = (z_t != z0).to(torch.float32)
    return F.binary_cross_entropy_with_logits(logits.float(), target)


# ----------------------------------------------------------------------------- LPIPS (optional)

# torchvision's file names of the ImageNet backbones that lpips loads through torch.hub
_BACKBONES = {"vgg": "vgg16-397923af.pth", "alex": "alexnet-owt-7be5be79.pth",
              "squeeze": "squeezenet1_1-b8a52dc0.pth"}


def lpips_weight_files(net: str = "vgg") -> list[Path] | None:
    """The files LPIPS needs (its linear heads, the torchvision backbone), or None without ``lpips``."""
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        return None
    pkg = Path(list(spec.submodule_search_locations)[0])
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    return [pkg / "weights" / "v0.1" / f"{net}.pth", hub / _BACKBONES[net]]


class LPIPSLoss(nn.Module):
    """LPIPS on images in [0, 1] with any channel count: each channel is compared as a grey RGB
    image (scaled to [-1, 1]) and the distances are averaged. The network is frozen."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> "LPIPSLoss":  # the perceptual network stays in eval mode
        return self

    def forward(self, x_rec: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        a = (x_rec.reshape(b * c, 1, h, w) * 2 - 1).expand(-1, 3, -1, -1)
        r = (x.reshape(b * c, 1, h, w) * 2 - 1).expand(-1, 3, -1, -1)
        return self.net(a, r).float().mean()


def load_lpips(mode: str | bool = "auto", net: str = "vgg") -> LPIPSLoss | None:
    """The perceptual loss when ``lpips`` and its weights are on disk, else None (``auto``, with a
    message) or an error (``on``/True). ``off``/False returns None. Never downloads anything."""
    mode = {True: "on", False: "off", None: "off"}.get(mode, mode)  # type: ignore[arg-type]
    if mode == "off":
        return None
    if mode not in ("auto", "on"):
        raise ValueError(f"lpips must be off, auto or on, got {mode!r}")
    if net not in _BACKBONES:
        raise ValueError(f"unknown LPIPS network {net!r}; choose one of {sorted(_BACKBONES)}")
    files = lpips_weight_files(net)
    if files is None:
        msg = "LPIPS is not installed (no `lpips` package); continuing without the perceptual term"
        missing: list[Path] = []
    else:
        missing = [f for f in files if not f.is_file()]
        msg = (f"LPIPS weights not found at {', '.join(map(str, missing))}; continuing without "
               "the perceptual term")
    if files is None or missing:
        if mode == "on":
            raise FileNotFoundError(msg.split("; continuing")[0] + " (the perceptual loss was "
                                    "requested; nothing is downloaded: put the files there first)")
        print(msg, file=sys.stderr)
        return None
    try:  # the files are there, so lpips/torchvision read them instead of downloading
        import lpips  # type: ignore[import-not-found]

        net_module = lpips.LPIPS(net=net, pretrained=True, verbose=False)
    except Exception as err:  # e.g. torchvision missing or an unreadable file
        msg = f"LPIPS could not be built ({type(err).__name__}: {err})"
        if mode == "on":
            raise ValueError(msg) from None
        print(f"{msg}; continuing without the perceptual term", file=sys.stderr)
        return None
    return LPIPSLoss(net_module)
