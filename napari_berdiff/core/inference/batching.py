"""How many slices and thresholds to run per network call: memory-based batch planning, and the
detection of empty slices (no network work needed).

:func:`plan_batches` sizes each call from the memory available on the device and a conservative
per-trajectory estimate from the model configs (docs/design-notes.md, "Batch planning").
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import numpy as np
import torch

from ..models.configs import AutoencoderConfig, UNetConfig

__all__ = ["available_memory", "unet_bytes_per_trajectory", "sampler_bytes_per_trajectory",
           "autoencoder_bytes_per_image", "BatchPlan", "plan_batches", "empty_slices",
           "CPU_MAX_TRAJECTORIES", "CUDA_MAX_TRAJECTORIES"]

CPU_MAX_TRAJECTORIES = 64
CUDA_MAX_TRAJECTORIES = 2048
CPU_SAFETY = 0.5
CUDA_SAFETY = 0.8
_F32 = 4
WORK_FACTOR = 8  # live tensors of the widest block, in units of (in + out channels) x pixels


# -- memory available --------------------------------------------------------------------
def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


_CGROUP_FILES = (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),  # v2
                 ("/sys/fs/cgroup/memory/memory.limit_in_bytes",  # v1
                  "/sys/fs/cgroup/memory/memory.usage_in_bytes"))


def _read(path: str) -> str:
    with open(path) as fh:  # closed at once (no ResourceWarning, e.g. as a napari toast)
        return fh.read().strip()


def _cgroup_available() -> int | None:
    """Room left under a container's memory limit (cgroup v2 or v1), or None without a limit."""
    for limit_f, usage_f in _CGROUP_FILES:
        try:
            limit = _read(limit_f)
            if limit == "max" or int(limit) >= 1 << 60:
                return None
            return max(0, int(limit) - int(_read(usage_f)))
        except (OSError, ValueError):
            continue
    return None


def available_memory(device: torch.device | str = "cpu") -> int:
    """Bytes this process could still allocate on ``device``.

    CPU (and MPS, which shares it): the smaller of ``MemAvailable`` (``/proc/meminfo``, else
    ``os.sysconf``) and the room under a cgroup memory limit; 4 GiB when neither can be read.
    CUDA: free device memory (``torch.cuda.mem_get_info``) plus memory torch's caching
    allocator has reserved but not handed out.
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        idx = dev.index if dev.index is not None else torch.cuda.current_device()
        free, _total = torch.cuda.mem_get_info(idx)
        cached = torch.cuda.memory_reserved(idx) - torch.cuda.memory_allocated(idx)
        return int(free + max(0, cached))
    values = [v for v in (_meminfo_available(), _cgroup_available()) if v is not None]
    return int(min(values)) if values else 4 << 30


# -- per-trajectory estimates ----------------------------------------------------------------
def unet_bytes_per_trajectory(cfg: UNetConfig, dtype_bytes: int = _F32) -> int:
    """Conservative bytes of U-Net activations per trajectory for one forward pass (see the
    module docstring for the rule)."""
    mc, r = cfg.model_channels, cfg.latent_size
    skips = [mc * r * r]  # the input conv's output
    work = (cfg.latent_channels + mc) * r * r
    attn = 0
    ch = mc
    last = len(cfg.channel_mult) - 1
    for level, mult in enumerate(cfg.channel_mult):
        for _ in range(cfg.num_res_blocks):
            work = max(work, (ch + mc * mult) * r * r)
            ch = mc * mult
            if r in cfg.attention_resolutions:
                attn = max(attn, cfg.num_heads * (r * r) ** 2 + 4 * ch * r * r)
            skips.append(ch * r * r)
        if level != last:
            r //= 2
            skips.append(ch * r * r)
    if cfg.mid_attention:
        attn = max(attn, cfg.num_heads * (r * r) ** 2 + 4 * ch * r * r)
    skip_ch = [s for s in skips]
    for level, mult in reversed(list(enumerate(cfg.channel_mult))):
        res_px = cfg.latent_size // 2 ** level
        for _ in range(cfg.num_res_blocks + 1):
            s = skip_ch.pop()
            cin = ch + s // (res_px * res_px)
            work = max(work, (cin + mc * mult) * res_px * res_px)
            ch = mc * mult
    elems = sum(skips) + WORK_FACTOR * work + attn
    return int(elems * dtype_bytes)


def sampler_bytes_per_trajectory(cfg: UNetConfig, dtype_bytes: int = _F32) -> int:
    """The sampler's own state per trajectory: ten latent-sized tensors."""
    return int(10 * cfg.latent_channels * cfg.latent_size ** 2 * dtype_bytes)


def autoencoder_bytes_per_image(cfg: AutoencoderConfig, dtype_bytes: int = _F32) -> int:
    """Conservative bytes of encoder or decoder activations per image (the larger of the two;
    they run in separate sub-batches)."""
    work, attn = 0, 0
    res = cfg.image_size
    ch = cfg.nf
    work = (cfg.in_channels + cfg.nf) * res * res
    for i, mult in enumerate(cfg.ch_mult):
        out = cfg.nf * mult
        work = max(work, (ch + out) * res * res)
        ch = out
        if res in cfg.attn_resolutions:
            attn = max(attn, (res * res) ** 2 + 4 * ch * res * res)
        if i != len(cfg.ch_mult) - 1:
            res //= 2
    work = max(work, (ch + cfg.z_channels) * res * res)
    if cfg.mid_attention:
        attn = max(attn, (res * res) ** 2 + 4 * ch * res * res)
    # input, output and the model-space copies of one image
    io = 4 * cfg.in_channels * cfg.image_size ** 2
    return int((WORK_FACTOR * work + attn + io) * dtype_bytes)


# -- the plan -------------------------------------------------------------------------------
@dataclass
class BatchPlan:
    """Trajectories per sampler call and images per autoencoder call, and why."""

    trajectories: int  # slices x thresholds per network call
    ae_images: int  # images per encoder / decoder call
    source: str  # "auto" or "user"
    available_bytes: int | None = None
    budget_bytes: int | None = None
    per_trajectory_bytes: int | None = None
    per_ae_image_bytes: int | None = None

    def slices_per_call(self, K: int) -> int:
        """Slices per sampler call for a sweep of ``K`` thresholds (at least 1)."""
        return max(1, self.trajectories // max(1, int(K)))

    def as_dict(self) -> dict:
        return asdict(self)


def plan_batches(ae_cfg: AutoencoderConfig, unet_cfg: UNetConfig, device, batch_size="auto", *,
                 safety: float | None = None, max_trajectories: int | None = None,
                 available: int | None = None) -> BatchPlan:
    """Plan the batch sizes for inference on ``device``.

    ``batch_size``: ``"auto"`` (or None) chooses from memory; an int is used as given for the
    sampler (trajectories = slices x thresholds per call) while the autoencoder sub-batches still
    follow the memory estimate (capped at that int). ``safety`` is the fraction of the available
    memory to use (default 0.5 on the CPU, 0.8 on CUDA); ``max_trajectories`` caps the automatic
    choice (default :data:`CPU_MAX_TRAJECTORIES` / :data:`CUDA_MAX_TRAJECTORIES`); ``available``
    overrides the measured free memory (for tests).
    """
    dev = torch.device(device)
    on_cuda = dev.type == "cuda"
    if safety is None:
        safety = CUDA_SAFETY if on_cuda else CPU_SAFETY
    if max_trajectories is None:
        max_trajectories = CUDA_MAX_TRAJECTORIES if on_cuda else CPU_MAX_TRAJECTORIES
    avail = available_memory(dev) if available is None else int(available)
    budget = int(avail * float(safety))
    per_traj = unet_bytes_per_trajectory(unet_cfg) + sampler_bytes_per_trajectory(unet_cfg)
    per_img = autoencoder_bytes_per_image(ae_cfg)
    ae_n = max(1, min(budget // per_img, max_trajectories))
    if batch_size in (None, "auto"):
        traj = max(1, min(budget // per_traj, max_trajectories))
        source = "auto"
    else:
        try:
            traj = int(batch_size)
        except (TypeError, ValueError):
            raise ValueError(f"batch_size must be 'auto' or a positive int, got {batch_size!r}") from None
        if traj < 1:
            raise ValueError(f"batch_size must be 'auto' or a positive int, got {batch_size!r}")
        ae_n = max(1, min(ae_n, traj))
        source = "user"
    return BatchPlan(int(traj), int(ae_n), source, avail, budget, per_traj, per_img)


def parse_batch_size(value) -> int | str:
    """``"auto"`` or a positive int from a CLI string / int / None (None -> ``"auto"``)."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return "auto"
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"batch size must be 'auto' or a positive integer, got {value!r}") from None
    if n < 1:
        raise ValueError(f"batch size must be 'auto' or a positive integer, got {value!r}")
    return n


# -- empty slices ---------------------------------------------------------------------------
def empty_slices(x: np.ndarray, tol: float = 0.0) -> np.ndarray:
    """Boolean (N,) for a stack (N, C, H, W): True where every channel of the slice is constant
    (max - min <= ``tol``), e.g. all-zero slices outside the brain. Such slices carry no
    structure to detect anomalies in; the detector skips them."""
    x = np.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"expected (N, C, H, W), got shape {x.shape}")
    if x.shape[0] == 0:
        return np.zeros(0, bool)
    flat = x.reshape(x.shape[0], x.shape[1], -1)
    spread = flat.max(axis=2) - flat.min(axis=2)
    return np.all(spread <= tol, axis=1)
