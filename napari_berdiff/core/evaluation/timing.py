"""Time per image and peak memory of the evaluated methods (the paper's time per image)."""

from __future__ import annotations

import resource
import sys
import time

import numpy as np

from .splits import as_float

__all__ = ["time_methods", "rss_mb"]


def rss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024.0 / (1024.0 if sys.platform == "darwin" else 1.0)



def time_methods(detector, split, scored, model, p_of, *, L, steps, seed, n) -> dict[str, dict]:
    """Seconds per image at batch size 1 (encode to decode) and peak memory per model method."""
    import torch

    from ..inference import preprocess

    if n <= 0 or not model:
        return {}
    order = np.concatenate([np.flatnonzero(scored), np.flatnonzero(~scored)])[:n]
    cuda = getattr(detector, "device", None) is not None and detector.device.type == "cuda"
    out = {}
    for m in model:
        if cuda:
            torch.cuda.synchronize(detector.device)
            torch.cuda.reset_peak_memory_stats(detector.device)
        t0 = time.perf_counter()
        for i in order:
            x = as_float(split.images[int(i):int(i) + 1])
            if m == "ae_only":  # the autoencoder alone: encode, (sample the code,) decode
                geom = preprocess.plan(x.shape[-2:], detector.image_size,
                                       detector.preprocess_mode, detector.canvas)
                with torch.inference_mode():
                    xb = preprocess.to_model(torch.from_numpy(x).to(detector.device), geom)
                    prob = detector.autoencoder.encode(xb).float()
                    rec = detector.autoencoder.decode((torch.rand_like(prob) < prob).float())
                    preprocess.from_model(rec.float().clamp(0, 1), geom).cpu()
            else:
                detector.detect(x, L=L, P=[p_of[m]], steps=steps, seed=seed, indices=[int(i)],
                                batch_size=1, normalize="none", skip_empty=False)
        if cuda:
            torch.cuda.synchronize(detector.device)
        sec = (time.perf_counter() - t0) / len(order)
        mem = (torch.cuda.max_memory_allocated(detector.device) / 2**20 if cuda else rss_mb())
        out[m] = {"seconds_per_image": sec, "peak_mem_mb": mem,
                  "mem_kind": "cuda_max_allocated" if cuda else "process_peak_rss"}
    return out
