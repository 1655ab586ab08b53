"""Stage 2: train the Bernoulli diffusion U-Net in the frozen autoencoder's binary latent space.

Each step follows docs/method.md §4. Writes ``out_dir/model.pt`` with both networks, the schedule
and the autoencoder's ``meta`` that the detector reads (docs/design-notes.md, "Training internals").
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from napari_berdiff.core.models.checkpoint import Checkpoint, load_checkpoint
from napari_berdiff.core.models.configs import PRESETS, UNetConfig, get_preset
from napari_berdiff.core.diffusion.sampler import masked_sampler, run_sampler
from napari_berdiff.core.diffusion.schedule import BernoulliSchedule
from napari_berdiff.core.models.unet import BernoulliUNet

from .code_cache import CodeCache, cache_bytes, describe, should_cache
from .corruption import Corruption, corrupt_codes, corrupt_images
from .distributed import DistInfo, wrap_ddp
from .ema import EMA
from .loop import TrainState, TrainTask, run_training
from .settings import DiffusionTraining
from .train_state import configure_cuda, resolve_amp, seed_everything
from .losses import flip_bce_loss
from .stage_common import check_dataset, fixed_batch, loop_options, start_stage, training_record
from .trainlog import save_image_grid

__all__ = ["train_diffusion", "DiffusionTask", "unet_config_for"]


def unet_config_for(ck: Checkpoint, preset: str | None = None,
                    unet_config: UNetConfig | None = None) -> tuple[UNetConfig, str | None]:
    """The U-Net config for the autoencoder in ``ck``: given, from ``preset``, or the preset whose
    autoencoder the checkpoint's matches. Its latent must match the autoencoder's."""
    ae = ck.ae_config
    if unet_config is None and preset is None:
        for name in PRESETS:
            if get_preset(name, ae.in_channels)[0] == ae:
                preset = name
                break
        else:
            raise ValueError("the autoencoder matches no preset; choose the U-Net with --config")
    if unet_config is None:
        unet_config = get_preset(preset, ae.in_channels)[1]  # type: ignore[arg-type]
    if (unet_config.latent_channels, unet_config.latent_size) != (ae.latent_channels, ae.latent_size):
        raise ValueError(
            f"the U-Net config ({unet_config.latent_channels}x{unet_config.latent_size}x"
            f"{unet_config.latent_size}) does not match the autoencoder's latent "
            f"({ae.latent_channels}x{ae.latent_size}x{ae.latent_size})")
    return unet_config, preset


class DiffusionTask(TrainTask):
    stage = "diffusion"
    final_name = "model.pt"

    def __init__(self, ck: Checkpoint, cfg: UNetConfig, schedule: BernoulliSchedule,
                 info: DistInfo, *, amp, lr: float, weight_decay: float, ema: float, meta: dict,
                 samples: torch.Tensor, sample_L: int, t_max: int | None = None,
                 corruption: Corruption | None = None) -> None:
        self.ck, self.cfg, self.schedule, self.info, self.amp = ck, cfg, schedule, info, amp
        self.corruption = corruption or Corruption()
        self.codes_cached = False  # True: batches are the encoder's probabilities (CodeCache)
        self.t_max = int(t_max or schedule.T)
        self.meta, self.samples, self.sample_L = meta, samples, int(sample_L)
        dev = info.device
        self.ae = ck.build_autoencoder(dev).requires_grad_(False)  # eval mode, frozen
        self.unet = BernoulliUNet(cfg).to(dev)
        self.unet_ddp = wrap_ddp(self.unet, info)
        opt = torch.optim.AdamW(self.unet.parameters(), lr=lr, weight_decay=weight_decay)
        self.state = TrainState({"unet": self.unet}, {"unet": opt}, {"unet": EMA(self.unet, ema)},
                                {"unet": amp.scaler()})

    @torch.no_grad()
    def noisy_pair(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(z0, z_t, t)`` for a batch: the clean stochastic code, the noised code the U-Net
        sees and the (1-based) steps. The target is ``z_t XOR z0``; with a structured corruption
        (:mod:`src_training.train.corruption`) ``z_t`` is noised from the corrupted code, so the
        corrupted bits count as flips."""
        cor = self.corruption
        if cor.active and cor.kind == "image":  # images, never cached codes (see train_diffusion)
            probs, mixed = self.encode(x).float(), self.encode(corrupt_images(x, cor)).float()
            u = torch.rand_like(probs)  # the same draws: the codes differ where the encoder does
            z0, src = (u < probs).float(), (u < mixed).float()
        else:
            probs = x if self.codes_cached else self.encode(x)
            z0 = torch.bernoulli(probs.float())  # fresh stochastic code every step
            src = corrupt_codes(z0, cor)
        t = torch.randint(1, self.t_max + 1, (x.shape[0],), device=x.device)
        return z0, self.schedule.q_sample(src, t), t

    def train_step(self, x: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        opt, scaler = self.state.optimizers["unet"], self.state.scalers["unet"]
        z0, z_t, t = self.noisy_pair(x)
        with self.amp.autocast():
            logits = self.unet_ddp(z_t, t)
        loss = flip_bce_loss(logits, z_t, z0)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        self.state.emas["unet"].update(self.unet)
        return {"bce": loss.detach()}

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen encoder's bit probabilities of a batch of images (under the run's amp)."""
        with self.amp.autocast():
            return self.ae.encode(x)

    def export(self, ema_states: Mapping[str, dict]) -> dict:
        meta = dict(self.meta)
        meta["training"] = dict(meta.get("training", {}), steps=self.state.step)
        meta["trained_with"] = meta["training"].get("trained_with", "")
        return {"autoencoder": self.ck.ae_state, "ae_config": self.ck.ae_config,
                "unet": ema_states["unet"]["shadow"], "unet_config": self.cfg,
                "schedule": self.schedule, "meta": meta}

    def check_resume(self, ckpt: Mapping) -> None:
        saved = ckpt.get("unet", {}).get("config")
        if saved != self.cfg.to_dict():
            raise ValueError(f"the checkpoint's U-Net config {saved} differs from this run's "
                             f"{self.cfg.to_dict()}; use another --out or the same config")
        saved_cor = Corruption.from_dict(
            ckpt.get("meta", {}).get("training", {}).get("corruption"))
        if saved_cor != self.corruption:
            raise ValueError(f"the checkpoint to resume was trained with corruption "
                             f"[{saved_cor.describe()}], this run asks for "
                             f"[{self.corruption.describe()}]; use the same --corruption options "
                             f"or another --out (and --init to start from its weights)")
        if ckpt.get("schedule") != self.schedule.to_dict():
            raise ValueError(f"the checkpoint's schedule {ckpt.get('schedule')} differs from "
                             f"{self.schedule.to_dict()}")
        ae = ckpt.get("autoencoder", {}).get("state_dict", {})
        same = set(ae) == set(self.ck.ae_state) and all(
            torch.equal(ae[k], self.ck.ae_state[k]) for k in ae)
        if not same:
            raise ValueError(f"the checkpoint to resume was trained on another autoencoder than "
                             f"{self.ck.path}; use another --out (or that autoencoder)")

    @torch.no_grad()
    def write_samples(self, path: Path, step: int) -> None:
        unet = self.state.emas["unet"].shadow
        x = self.samples
        g = torch.Generator(device=x.device).manual_seed(0)
        z = self.ae.sample_bits(self.ae.encode(x), generator=g)
        L = min(self.sample_L, self.schedule.T)
        out = run_sampler(masked_sampler(lambda zt, t: torch.sigmoid(unet(zt, t)), z, self.schedule,
                                         L, [0.0, 0.5], steps=min(L, 25), seeds=0))
        dec = lambda c: self.ae.decode(c).clamp(0, 1).float()  # noqa: E731
        zs = out.z0.view(x.shape[0], 2, *z.shape[1:])
        ae_only, unmasked, masked = dec(z), dec(zs[:, 0]), dec(zs[:, 1])
        frac = out.masked_fraction.view(-1, 2)[:, 1].mean()
        save_image_grid([("input", x), ("AE only", ae_only), (f"unmasked L={L}", unmasked),
                         ("masked P=0.5", masked), ("(x-rec)^2", (x - masked) ** 2)], path,
                        title=f"step {step}  masked fraction {float(frac):.3f}")


def train_diffusion(dataset, ae_checkpoint: str | Path, out_dir: str | Path,
                    settings: DiffusionTraining | None = None, *,
                    unet_config: UNetConfig | None = None,
                    schedule: BernoulliSchedule | None = None,
                    meta: Mapping[str, Any] | None = None,
                    meta_defaults: Mapping[str, Any] | None = None,
                    on_end: Callable[[TrainTask], None] | None = None, **changes) -> Path:
    """Train the diffusion U-Net on the codes of the frozen autoencoder in ``ae_checkpoint``;
    returns the path of ``out_dir/model.pt`` (autoencoder + U-Net + schedule + meta).

    ``settings`` (:class:`~src_training.train.settings.DiffusionTraining`, its defaults when None)
    with the fields named in ``changes`` replaced. The U-Net config is ``unet_config``, else
    ``settings.preset``'s, else that of the preset whose autoencoder matches the checkpoint's.
    ``meta`` entries are added to (and override) the ones carried over from the autoencoder
    checkpoint; ``meta_defaults`` fill in only what that meta lacks (the CLI passes the prepared
    data's channel names and preprocessing there). ``sample_L`` is the noise level of the sample
    grids. ``init_unet``: a diffusion checkpoint whose U-Net weights start the run (fine-tuning on
    a further-trained autoencoder; same U-Net config; ignored when the run resumes from
    ``out_dir/last.pt``). ``t_max``: train on steps t in 1..t_max only (default T): the detector
    never samples above its L, so a model meant for L <= 400 spends its whole budget there;
    recorded as ``meta["max_L"]``, which the detector and the widget respect. ``cache_codes``
    ("auto", "on", "off"): encode the training images once and draw each step's code from the
    stored probabilities (:mod:`src_training.train.code_cache`; the same distribution as encoding
    every batch, about twice as fast on the CPU); "auto" caches when the codes fit in a quarter
    of the available memory. ``corruption``: structured corruption of a share of the clean codes
    (:mod:`src_training.train.corruption`; default i.i.d. noise only, the paper; the ``image``
    kind encodes every batch, so it never caches codes). The other settings are those of
    :func:`~src_training.train.train_autoencoder.train_autoencoder`.
    """
    s = replace(settings or DiffusionTraining(), **changes)
    info = start_stage(s)
    ck = _autoencoder_checkpoint(ae_checkpoint)
    cfg, preset = unet_config_for(ck, s.preset, unet_config)
    check_dataset(dataset, ck.ae_config.in_channels, ck.ae_config.image_size,
                  f"the autoencoder in {ae_checkpoint}")
    schedule = schedule or BernoulliSchedule()
    opts = loop_options(s, out_dir, on_end)
    amp_cfg = resolve_amp(s.amp, info.device)
    configure_cuda(info.device)
    t_max = _checked_t_max(s.t_max, schedule)
    corruption = s.corruption or Corruption()
    init = _init_checkpoint(s.init_unet, cfg) if s.init_unet is not None else None
    out_meta = _diffusion_meta(ck, s, preset, dataset, info, amp_cfg.name, t_max, meta,
                               meta_defaults, init)
    cache_codes = "off" if corruption.active and corruption.kind == "image" else s.cache_codes
    samples = fixed_batch(dataset, 4, info.device)
    seed_everything(s.seed)  # identical initial weights on every rank
    task = DiffusionTask(ck, cfg, schedule, info, amp=amp_cfg, lr=s.lr,
                         weight_decay=s.weight_decay, ema=s.ema, meta=out_meta, samples=samples,
                         sample_L=min(s.sample_L, t_max), t_max=s.t_max, corruption=corruption)
    if init is not None:  # a resumed run's last.pt replaces these weights again
        _start_from(task, init)
    dataset = _maybe_cache(task, dataset, cache_codes, s.batch_size, info)
    return run_training(task, dataset, opts)


def _autoencoder_checkpoint(path: str | Path) -> Checkpoint:
    """The checkpoint at ``path``, refused when it holds no autoencoder."""
    ck = load_checkpoint(path)
    if ck.ae_config is None:
        raise ValueError(f"{path} holds no autoencoder")
    return ck


def _checked_t_max(t_max: int | None, schedule: BernoulliSchedule) -> int:
    """The largest training step: ``t_max`` (checked to lie in 1..T) or the schedule's T."""
    if t_max is not None and not 1 <= int(t_max) <= schedule.T:
        raise ValueError(f"t_max must be in 1..{schedule.T}, got {t_max}")
    return int(t_max or schedule.T)


def _diffusion_meta(ck: Checkpoint, s: DiffusionTraining, preset, dataset, info: DistInfo,
                    amp_name: str, t_max: int, meta, meta_defaults,
                    init: Checkpoint | None = None) -> dict:
    """The released model's meta: the autoencoder's (its training record moved aside), the
    caller's ``meta`` on top, ``meta_defaults`` below, and this stage's ``training`` record
    (naming the checkpoint ``init`` whose U-Net starts the run, if any)."""
    out_meta = dict(meta_defaults or {})
    out_meta.update({k: v for k, v in ck.meta.items() if k not in ("training", "trained_with")})
    if "training" in ck.meta:
        out_meta["autoencoder_training"] = ck.meta["training"]
    out_meta.update(dict(meta or {}))
    out_meta["autoencoder_checkpoint"] = str(ck.path)
    out_meta["autoencoder_sha256"] = ck.sha256
    corruption = s.corruption or Corruption()
    out_meta["training"] = training_record(
        "diffusion", steps=s.steps, preset=preset, dataset=dataset, world_size=info.world_size,
        batch_size=s.batch_size, lr=s.lr, weight_decay=s.weight_decay, ema=s.ema, seed=s.seed,
        amp=amp_name, device=str(info.device))
    out_meta["training"].update(t_max=t_max, corruption=corruption.to_dict(),
                                corruption_description=corruption.describe())
    if init is not None:
        out_meta["training"].update(init_unet=str(init.path), init_unet_sha256=init.sha256)
    out_meta["max_L"] = t_max
    return out_meta


def _maybe_cache(task: DiffusionTask, dataset, mode: str, batch_size: int, info: DistInfo):
    """The dataset of cached codes when ``mode`` and the memory allow it, else ``dataset``."""
    ae = task.ck.ae_config
    n_bytes = cache_bytes(len(dataset), (ae.latent_channels, ae.latent_size, ae.latent_size),
                          bool(getattr(dataset, "hflip", False)))
    use, why = should_cache(mode, n_bytes)
    if not use:
        if info.is_main and mode != "off":
            print(why, file=sys.stderr)
        return dataset

    cache = CodeCache(dataset, task.encode, info.device, batch_size=max(batch_size, 16))
    task.codes_cached = True
    task.meta["training"]["code_cache"] = True
    if info.is_main:
        print(f"{why}; encoded the training set once: {describe(cache)}", file=sys.stderr)
    return cache


def _init_checkpoint(path: str | Path, cfg: UNetConfig) -> Checkpoint:
    """The diffusion checkpoint at ``path``, checked to hold a U-Net of config ``cfg``."""
    init = load_checkpoint(path)
    if init.unet_state is None or init.unet_config is None:
        raise ValueError(f"{path} holds no diffusion U-Net to start from")
    if init.unet_config != cfg:
        raise ValueError(f"the U-Net in {path} has another config ({init.unet_config.to_dict()}) "
                         f"than this run's ({cfg.to_dict()})")
    return init


def _start_from(task: "DiffusionTask", init: Checkpoint) -> None:
    """Load the U-Net weights of ``init`` into the task's U-Net and its EMA."""
    task.unet.load_state_dict(init.unet_state)
    task.state.emas["unet"].shadow.load_state_dict(init.unet_state)
