"""Stage 1: train the binarizing autoencoder on healthy images (docs/method.md §7).

Writes ``out_dir/autoencoder.pt`` (EMA weights, config, ``meta`` with the training record);
losses, optimiser and EMA are listed in docs/design-notes.md ("Training internals").
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from napari_berdiff.core.models.autoencoder import BinaryAutoencoder
from napari_berdiff.core.models.configs import AutoencoderConfig, get_preset

from .discriminator import PatchDiscriminator
from .distributed import DistInfo, wrap_ddp
from .ema import EMA
from .loop import TrainState, TrainTask, run_training
from .settings import AutoencoderTraining
from .train_state import configure_cuda, resolve_amp, seed_everything
from .losses import (adaptive_weight, code_entropy, hinge_d_loss, hinge_g_loss, load_lpips,
                     reconstruction_loss)
from .content_mix import content_mix as mix_content
from .stage_common import (check_dataset, fixed_batch, loop_options, probe_dataset, start_stage,
                           training_record)
from .trainlog import save_image_grid

__all__ = ["train_autoencoder", "AutoencoderTask"]


class _DiscPair(nn.Module):
    """Real and fake through the discriminator in one forward (one DDP forward per backward)."""

    def __init__(self, disc: nn.Module) -> None:
        super().__init__()
        self.disc = disc

    def forward(self, real: torch.Tensor, fake: torch.Tensor):
        return self.disc(real), self.disc(fake)


class AutoencoderTask(TrainTask):
    stage = "autoencoder"
    final_name = "autoencoder.pt"

    def __init__(self, cfg: AutoencoderConfig, info: DistInfo, *, amp, lr: float, ema: float,
                 rec_loss: str, gan_start: int, disc_weight: float, disc_lr: float,
                 lpips, lpips_weight: float, meta: dict, samples: torch.Tensor,
                 entropy_weight: float = 0.0, content_mix: float = 0.0) -> None:
        self.cfg, self.info, self.amp = cfg, info, amp
        self.entropy_weight = float(entropy_weight)
        self.content_mix = float(content_mix)
        self.rec_loss, self.gan_start, self.disc_weight = rec_loss, int(gan_start), float(disc_weight)
        self.lpips, self.lpips_weight = lpips, float(lpips_weight)
        self.meta, self.samples = meta, samples
        dev = info.device
        self.ae = BinaryAutoencoder(cfg).to(dev)
        self.ae_ddp = wrap_ddp(self.ae, info)
        models: dict[str, nn.Module] = {"autoencoder": self.ae}
        opts = {"autoencoder": torch.optim.Adam(self.ae.parameters(), lr=lr)}
        scalers = {"autoencoder": amp.scaler()}
        self.disc = None
        if self.disc_weight > 0:
            self.disc = PatchDiscriminator(cfg.in_channels, cfg.disc_channels).to(dev)
            self.disc_pair = wrap_ddp(_DiscPair(self.disc), info)
            models["discriminator"] = self.disc
            opts["discriminator"] = torch.optim.Adam(self.disc.parameters(), lr=disc_lr)
            scalers["discriminator"] = amp.scaler()
        if self.lpips is not None:
            self.lpips.to(dev)
        self.state = TrainState(models, opts, {"autoencoder": EMA(self.ae, ema)}, scalers)

    def train_step(self, x: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        st = self.state
        opt, scaler = st.optimizers["autoencoder"], st.scalers["autoencoder"]
        use_gan = self.disc is not None and step >= self.gan_start
        if self.content_mix > 0:  # the target is the mixed image itself (identity)
            x = mix_content(x, self.content_mix)
        with self.amp.autocast():
            x_rec, probs, _bits = self.ae_ddp(x)
        nll = reconstruction_loss(x_rec, x, self.rec_loss)
        out = {"rec": nll.detach()}
        if self.lpips is not None:
            with self.amp.autocast():
                p = self.lpips(x_rec, x)
            nll = nll + self.lpips_weight * p
            out["lpips"] = p.detach()
        h = code_entropy(probs)
        out["code_entropy"] = h.detach()
        if self.entropy_weight > 0:
            nll = nll + self.entropy_weight * h
        loss = nll
        if use_gan:
            self.disc.requires_grad_(False)  # the generator step leaves the discriminator alone
            try:
                with self.amp.autocast():
                    g = hinge_g_loss(self.disc(x_rec))
                scale = float(scaler.get_scale()) if scaler.is_enabled() else 1.0
                w = adaptive_weight(nll, g, self.ae.last_layer_weight, scale=scale) * self.disc_weight
            finally:
                self.disc.requires_grad_(True)
            loss = nll + w * g
            out.update(g=g.detach(), d_weight=w)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        if use_gan:
            opt_d, scaler_d = st.optimizers["discriminator"], st.scalers["discriminator"]
            with self.amp.autocast():
                real, fake = self.disc_pair(x, x_rec.detach())
            d = hinge_d_loss(real, fake)
            opt_d.zero_grad(set_to_none=True)
            scaler_d.scale(d).backward()
            scaler_d.step(opt_d)
            scaler_d.update()
            out.update(d=d.detach(), logit_real=real.detach().float().mean(),
                       logit_fake=fake.detach().float().mean())
        st.emas["autoencoder"].update(self.ae)
        out["loss"] = loss.detach()
        out["bits_p"] = probs.detach().float().mean()
        return out

    def export(self, ema_states: Mapping[str, dict]) -> dict:
        meta = dict(self.meta)
        meta["training"] = dict(meta.get("training", {}), steps=self.state.step)
        meta["trained_with"] = meta["training"].get("trained_with", "")
        return {"autoencoder": ema_states["autoencoder"]["shadow"], "ae_config": self.cfg,
                "meta": meta}

    def check_resume(self, ckpt: Mapping) -> None:
        saved = ckpt.get("autoencoder", {}).get("config")
        if saved != self.cfg.to_dict():
            raise ValueError(f"the checkpoint's autoencoder config {saved} differs from this run's "
                             f"{self.cfg.to_dict()}; use another --out or the same config")

    @torch.no_grad()
    def write_samples(self, path: Path, step: int) -> None:
        model = self.state.emas["autoencoder"].shadow
        x = self.samples
        g = torch.Generator(device=x.device).manual_seed(0)
        probs = model.encode(x)
        rec = model.decode(model.sample_bits(probs, generator=g)).clamp(0, 1).float()
        mse = ((rec - x) ** 2).flatten(1).mean(1).clamp_min(1e-12)
        psnr = float((10 * torch.log10(x.flatten(1).amax(1).clamp_min(1e-6) ** 2 / mse)).mean())
        save_image_grid([("input", x), ("EMA recon", rec), ("|diff|", (rec - x).abs())], path,
                        title=f"step {step}  PSNR {psnr:.2f} dB")


def train_autoencoder(dataset, out_dir: str | Path, settings: AutoencoderTraining | None = None,
                      *, config: AutoencoderConfig | None = None, in_channels: int | None = None,
                      meta: Mapping[str, Any] | None = None,
                      on_end: Callable[[TrainTask], None] | None = None, **changes) -> Path:
    """Train the autoencoder on ``dataset`` ((C, S, S) float images in [0, 1], or tuples/dicts
    whose first item is one); returns the path of ``out_dir/autoencoder.pt``.

    ``settings`` (:class:`~src_training.train.settings.AutoencoderTraining`, its defaults when
    None) with the fields named in ``changes`` replaced. ``config`` overrides ``settings.preset``;
    ``in_channels`` defaults to the dataset's. ``gan_start`` is the 1-based step of the first
    adversarial update; ``disc_weight=0`` trains without a discriminator. ``lpips``: ``off`` |
    ``auto`` (use it when its weights are on disk) | ``on`` (error without them).
    ``entropy_weight``: factor on the mean binary entropy of the code
    (:func:`~src_training.train.losses.code_entropy`; 0 = docs/method.md §7 exactly): it pushes the bit
    probabilities to 0 or 1 so that the diffusion model gets a learnable code. ``content_mix``:
    probability that a training image carries a pasted region of another healthy image with new
    contrast (:func:`~src_training.train.content_mix.content_mix`; 0 = docs/method.md §7 exactly): it teaches
    the autoencoder to reproduce content it has not seen, such as anomalies. Under ``torchrun``
    each process trains on its shard (DDP; ``batch_size`` is per process); call it the same way.
    Raises :class:`~src_training.train.train_state.TrainingInterrupted` after saving when stopped
    by Ctrl-C/SIGTERM.
    """
    s = replace(settings or AutoencoderTraining(), **changes)
    info = start_stage(s)
    preset = s.preset
    probed = probe_dataset(dataset)
    config, preset = _config_for(config, preset, in_channels, probed)
    what = f"the '{preset}' autoencoder config" if preset else "the autoencoder config"
    check_dataset(dataset, config.in_channels, config.image_size, what, probed)
    _check_settings(s)
    opts = loop_options(s, out_dir, on_end)
    amp_cfg = resolve_amp(s.amp, info.device)
    configure_cuda(info.device)
    perceptual = load_lpips(s.lpips)
    disc_lr = s.disc_lr or s.lr
    out_meta = _autoencoder_meta(s, meta, preset, dataset, info, amp_cfg.name, disc_lr,
                                 lpips=perceptual is not None)
    samples = fixed_batch(dataset, 4, info.device)
    seed_everything(s.seed)  # identical initial weights on every rank
    task = AutoencoderTask(config, info, amp=amp_cfg, lr=s.lr, ema=s.ema, rec_loss=s.rec_loss,
                           gan_start=s.gan_start, disc_weight=s.disc_weight, disc_lr=disc_lr,
                           lpips=perceptual, lpips_weight=s.lpips_weight, meta=out_meta,
                           samples=samples, entropy_weight=s.entropy_weight,
                           content_mix=s.content_mix)
    return run_training(task, dataset, opts)


def _config_for(config: AutoencoderConfig | None, preset: str, in_channels: int | None,
                probed) -> tuple[AutoencoderConfig, str | None]:
    """``(config, preset)``: the one given (preset None; ``in_channels`` must agree with it) or
    the preset's for ``in_channels`` (default: the dataset's, ``probed[0]``)."""
    if config is None:
        config, _ = get_preset(preset, in_channels or probed[0])
        return config, preset
    if in_channels is not None and int(in_channels) != config.in_channels:
        raise ValueError(f"in_channels={in_channels} contradicts the config's "
                         f"{config.in_channels}")
    return config, None


def _autoencoder_meta(s: AutoencoderTraining, meta, preset, dataset, info: DistInfo, amp_name: str,
                      disc_lr: float, lpips: bool) -> dict:
    """The checkpoint's meta: the caller's ``meta`` and this stage's ``training`` record."""
    hyper = dict(batch_size=s.batch_size, lr=s.lr, ema=s.ema, rec_loss=s.rec_loss,
                 gan_start=s.gan_start, disc_weight=s.disc_weight, disc_lr=disc_lr,
                 lpips=lpips, entropy_weight=float(s.entropy_weight),
                 content_mix=float(s.content_mix), seed=s.seed, amp=amp_name,
                 device=str(info.device))
    out_meta = dict(meta or {})
    out_meta["training"] = training_record("autoencoder", steps=s.steps, preset=preset,
                                           dataset=dataset, world_size=info.world_size, **hyper)
    return out_meta


def _check_settings(s: AutoencoderTraining) -> None:
    """Refuse settings the autoencoder stage cannot train with (one-line ValueError)."""
    if s.entropy_weight < 0:
        raise ValueError(f"entropy_weight must be >= 0, got {s.entropy_weight}")
    if not 0.0 <= s.content_mix <= 1.0:
        raise ValueError(f"content_mix must be a probability in [0, 1], got {s.content_mix}")
    if s.rec_loss not in ("l1", "mse"):
        raise ValueError(f"rec_loss must be l1 or mse, got {s.rec_loss!r}")
