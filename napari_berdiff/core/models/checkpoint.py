"""One-file checkpoints: model configs + weights (+ optional training state), loaded safely.

Loading always uses ``torch.load(..., weights_only=True)``; saving writes a temporary file and
renames it. The dict layout is in docs/design-notes.md ("Checkpoint format").
"""

from __future__ import annotations

import hashlib
import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..io.atomic import atomic_file

FORMAT = "napari-berdiff"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, of unknown origin, or not matching the data."""


@dataclass
class Checkpoint:
    """The parts of a loaded checkpoint; models are rebuilt on demand by :meth:`build`."""

    path: Path | None
    ae_config: Any = None
    ae_state: dict | None = None
    unet_config: Any = None
    unet_state: dict | None = None
    schedule: dict = field(default_factory=lambda: {"T": 1000, "beta_start": 1e-4, "beta_end": 0.02})
    meta: dict = field(default_factory=dict)
    training_state: dict | None = None
    sha256: str = ""

    @property
    def short_hash(self) -> str:
        return self.sha256[:12]

    @property
    def in_channels(self) -> int | None:
        return None if self.ae_config is None else int(self.ae_config.in_channels)

    def build_autoencoder(self, device: str | torch.device = "cpu"):
        from .autoencoder import BinaryAutoencoder

        if self.ae_config is None:
            raise CheckpointError(f"{self._name()} holds no autoencoder")
        model = BinaryAutoencoder(self.ae_config)
        _load_state(model, self.ae_state, "autoencoder", self._name())
        return model.to(device).eval()

    def build_unet(self, device: str | torch.device = "cpu"):
        from .unet import BernoulliUNet

        if self.unet_config is None:
            raise CheckpointError(f"{self._name()} holds no diffusion U-Net")
        model = BernoulliUNet(self.unet_config)
        _load_state(model, self.unet_state, "unet", self._name())
        return model.to(device).eval()

    def build_schedule(self):
        from ..diffusion.schedule import BernoulliSchedule

        return BernoulliSchedule.from_dict(self.schedule)

    def check_channels(self, n_channels: int, what: str = "the input") -> None:
        """Raise a clear error when the data's channel count does not match the autoencoder's."""
        if self.in_channels is not None and int(n_channels) != self.in_channels:
            names = self.meta.get("channel_names")
            hint = f" ({', '.join(names)})" if names else ""
            raise CheckpointError(
                f"{what} has {n_channels} channel(s) but the model in {self._name()} expects "
                f"{self.in_channels}{hint}"
            )

    def _name(self) -> str:
        return f"checkpoint '{self.path}'" if self.path else "the checkpoint"


def _load_state(model: torch.nn.Module, state: dict | None, what: str, name: str) -> None:
    if state is None:
        raise CheckpointError(f"{name} has a {what} config but no weights")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:  # torch lists every tensor (hundreds of lines): name a few
        lines = [ln.strip() for ln in str(err).splitlines()[1:] if ln.strip()]
        n = len(lines)
        first = lines[0].rstrip(".") if lines else str(err).splitlines()[0]
        more = f" (and {n - 1} more mismatches)" if n > 1 else ""
        raise CheckpointError(f"{name}: the {what} weights do not fit its config: {first}{more}") from None


def save_checkpoint(
    path: str | os.PathLike,
    *,
    autoencoder=None,
    unet=None,
    ae_config=None,
    unet_config=None,
    schedule=None,
    meta: dict | None = None,
    training_state: dict | None = None,
    overwrite: bool = True,
) -> Path:
    """Write one checkpoint file atomically. Models may be modules (their ``.config`` is used) or
    state dicts together with ``ae_config`` / ``unet_config``."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; refusing to overwrite it")
    obj: dict[str, Any] = {"format": FORMAT, "version": VERSION}
    for key, model, cfg in (("autoencoder", autoencoder, ae_config), ("unet", unet, unet_config)):
        if model is None:
            continue
        if isinstance(model, torch.nn.Module):
            cfg = cfg if cfg is not None else model.config
            model = model.state_dict()
        if cfg is None:
            raise ValueError(f"saving a {key} state dict needs its config")
        obj[key] = {"config": cfg.to_dict(), "state_dict": {k: v.detach().cpu() for k, v in model.items()}}
    if "autoencoder" not in obj and "unet" not in obj:
        raise ValueError("a checkpoint needs an autoencoder, a U-Net or both")
    if schedule is not None:
        obj["schedule"] = schedule.to_dict() if hasattr(schedule, "to_dict") else dict(schedule)
    obj["meta"] = dict(meta or {})
    if training_state is not None:
        obj["training_state"] = training_state
    atomic_torch_save(obj, path)
    return path


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the target folder, fsync, then rename over ``path``."""
    with atomic_file(path) as fh:
        torch.save(obj, fh)


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _plain(text: str, limit: int = 200) -> str:
    """One line without terminal colour codes (torch's pickle errors carry ANSI escapes)."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", text).strip()
    return text if len(text) <= limit else text[:limit - 3] + "..."


_TORCH_LEGACY_MAGIC = b"\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"


def _pickle_kind(path: Path) -> str | None:
    """What a non-zip file is when it is a pickle (protocol 2+): an old-format PyTorch file
    (``torch.save(..., _use_new_zipfile_serialization=False)``) or a plain Python pickle."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
    except OSError:
        return None
    if len(head) < 3 or head[0] != 0x80 or not 2 <= head[1] <= 5:
        return None
    if head[2:2 + len(_TORCH_LEGACY_MAGIC)] == _TORCH_LEGACY_MAGIC:
        return "an old-format (non-zip) PyTorch pickle"
    return "a Python pickle"


def load_raw(path: str | os.PathLike) -> dict:
    """``torch.load(weights_only=True)`` with clear errors for missing, corrupt or unsafe files."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    if not zipfile.is_zipfile(path):
        kind = _pickle_kind(path)
        if kind:
            raise CheckpointError(
                f"refusing to load {path}: it is {kind}, and unpickling it could run arbitrary "
                "code; only zip-format checkpoints are read (weights_only). Re-save it from a "
                "trusted copy with a current torch.save, or train / export it with berdiff")
        raise CheckpointError(f"cannot read checkpoint {path}: not a PyTorch checkpoint file "
                              f"(corrupt, truncated, or another format)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"refusing to load {path}: it is not a plain napari-berdiff checkpoint (it would run "
            f"code or holds objects of unknown origin; only tensors and plain containers are "
            f"accepted). Details: {_plain(str(err).splitlines()[0])}"
        ) from None
    except Exception as err:  # zip/EOF/format errors from a corrupt or foreign file
        raise CheckpointError(f"cannot read checkpoint {path}: {type(err).__name__}: {err}") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a napari-berdiff checkpoint (no 'format: {FORMAT}' entry); "
            f"train one with `berdiff train-ae` / `berdiff train-diffusion`"
        )
    if int(obj.get("version", -1)) > VERSION:
        raise CheckpointError(f"{path} has checkpoint version {obj.get('version')}; this napari-berdiff reads <= {VERSION}")
    return obj


def weights_sha256(ck: Checkpoint) -> str:
    """A hash of a checkpoint's network weights only (names, dtypes, shapes, bytes): rewriting
    its meta (e.g. ``berdiff calibrate``) does not change it, retraining or exporting does."""
    h = hashlib.sha256()
    for part in (ck.ae_state or {}, ck.unet_state or {}):
        for k in sorted(part):
            t = part[k].detach().cpu().contiguous()
            h.update(f"{k}:{t.dtype}:{tuple(t.shape)};".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Load a checkpoint file into a :class:`Checkpoint` (configs parsed, weights on the CPU)."""
    from .configs import AutoencoderConfig, UNetConfig

    path = Path(path)
    obj = load_raw(path)
    ck = Checkpoint(path=path, meta=dict(obj.get("meta", {})), training_state=obj.get("training_state"))
    if "schedule" in obj:
        ck.schedule = dict(obj["schedule"])
    try:
        if "autoencoder" in obj:
            ck.ae_config = AutoencoderConfig.from_dict(obj["autoencoder"]["config"])
            ck.ae_state = obj["autoencoder"]["state_dict"]
        if "unet" in obj:
            ck.unet_config = UNetConfig.from_dict(obj["unet"]["config"])
            ck.unet_state = obj["unet"]["state_dict"]
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: malformed model entry: {err}") from None
    if ck.ae_config is None and ck.unet_config is None:
        raise CheckpointError(f"{path} holds neither an autoencoder nor a U-Net")
    ck.sha256 = file_sha256(path)
    return ck
