"""One batch of a detection run: encode the slices, run the masked sampler for every threshold,
decode, and write reconstructions, anomaly maps and masked fractions into the run's arrays."""

from __future__ import annotations

import time
from typing import Generator

import numpy as np
import torch

from . import preprocess
from .accel import autocast, input_layout
from .detect_run import DetectRun
from .result import Progress
from ..diffusion.sampler import SamplerStep, masked_sampler, relay


def run_chunk(det, run: DetectRun, sel: np.ndarray, deterministic_encoding: bool,
              deterministic_last_step: bool) -> Generator[Progress, None, None]:
    """Encode, sample and decode the slices ``sel`` for every threshold (one batch) with the
    detector ``det``; yields a :class:`Progress` per sampler step."""
    K = len(run.thresholds)
    seeds = [run.seeds[i] for i in sel]
    z = encode(det, run.x[sel], run.geom, seeds, deterministic_encoding, run.plan.ae_images)
    gen = masked_sampler(det._flip_model, z, det.schedule, run.L, run.thresholds,
                         steps=run.steps, seeds=seeds,
                         deterministic_last_step=deterministic_last_step)
    span, positions = (int(sel[0]), int(sel[-1]) + 1), tuple(int(i) for i in sel)

    def tick(step: SamplerStep) -> Progress:
        if run.hist is not None:
            m = step.mask.float().mean(dim=1).reshape(len(sel), K, *step.mask.shape[-2:])
            run.hist[step.index][:, sel] = m.transpose(0, 1).cpu().numpy()
        run.done += 1
        return Progress(run.done, run.total, elapsed=time.perf_counter() - run.t_start,
                        images=span, slices=positions, step=step)

    out = yield from relay(gen, tick)
    run.frac[:, sel] = out.masked_fraction.reshape(len(sel), K).T.cpu().numpy()
    decode_into(det, out.z0, run.x, sel, K, run.geom, run.plan.ae_images, run.recon, run.amap)


def encode(det, xs: np.ndarray, geom, seeds: list[int], deterministic: bool,
           per_call: int) -> torch.Tensor:
    """Binary codes (n, C, h, w) of slices ``xs``, encoded ``per_call`` images at a time; the
    Bernoulli draws use one generator per image seed (independent of the batching)."""
    codes = []
    with torch.inference_mode():
        for a in range(0, len(xs), per_call):
            xb = preprocess.to_model(torch.from_numpy(xs[a:a + per_call]).to(det.device), geom)
            # float32 even under amp: one call per slice, and the codes stay exact
            probs = det.autoencoder.encode(input_layout(xb, det.channels_last)).float().contiguous()
            if deterministic:
                codes.append((probs > 0.5).float())
            else:
                u = torch.stack([torch.rand(probs.shape[1:], device=det.device,
                                            generator=_gen(s, det.device))
                                 for s in seeds[a:a + per_call]])
                codes.append((u < probs).float())
    return torch.cat(codes)


def decode_into(det, z0: torch.Tensor, x: np.ndarray, sel: np.ndarray, K: int, geom,
                per_call: int, recon: np.ndarray, amap: np.ndarray) -> None:
    """Decode the codes ``z0`` (trajectory ``b * K + k`` for slice ``sel[b]``) a few slices at
    a time and write reconstructions and squared-error maps into ``recon`` / ``amap``."""
    C, H, W = x.shape[1:]
    per = max(1, per_call // K)
    with torch.inference_mode():
        for a in range(0, len(sel), per):
            part = sel[a:a + per]
            nb = len(part)
            with autocast(det.device, det.amp_dtype):
                rec = det.autoencoder.decode(input_layout(z0[a * K:(a + nb) * K],
                                                          det.channels_last))
            rec = preprocess.from_model(rec.float().clamp_(0, 1), geom).clamp_(0, 1)
            xin = torch.from_numpy(x[part]).to(det.device).repeat_interleave(K, dim=0)
            err = ((xin - rec) ** 2).sum(dim=1)
            recon[:, part] = rec.reshape(nb, K, C, H, W).transpose(0, 1).cpu().numpy()
            amap[:, part] = err.reshape(nb, K, H, W).transpose(0, 1).cpu().numpy()


def _gen(seed: int, device) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g
