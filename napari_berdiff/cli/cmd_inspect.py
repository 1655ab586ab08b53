"""``berdiff inspect CHECKPOINT``: what a checkpoint holds (configs, hash, metadata)."""

from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("inspect", help="show what a checkpoint file holds (safe: nothing is executed)")
    p.add_argument("checkpoint", help="a napari-berdiff checkpoint (.pt)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..core.models.checkpoint import load_checkpoint

    ck = load_checkpoint(args.checkpoint)
    info = {
        "path": str(ck.path),
        "sha256": ck.sha256,
        "autoencoder": ck.ae_config.to_dict() if ck.ae_config else None,
        "unet": ck.unet_config.to_dict() if ck.unet_config else None,
        "schedule": ck.schedule,
        "meta": ck.meta,
        "has_training_state": ck.training_state is not None,
    }
    cor = (ck.meta.get("training") or {}).get("corruption_description")
    if ck.unet_config is not None:  # how the U-Net's training codes were corrupted
        info["diffusion_corruption"] = cor or "iid (the paper's i.i.d. bit flips only)"

    print(json.dumps(info, indent=2, default=str))
    return 0
