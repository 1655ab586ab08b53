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

    info.update(_calibration(ck))
    print(json.dumps(info, indent=2, default=str))
    return 0


def _calibration(ck) -> dict:
    """The calibration summarised (its curve is long), or a word that there is none."""
    from ..core.inference.calibration import CALIBRATION_KEY, Calibration
    from ..core.models.checkpoint import weights_sha256

    if ck.unet_config is None or ck.ae_config is None:
        return {}
    try:
        cal = Calibration.from_meta(ck.meta)
    except ValueError as err:
        return {"calibration": f"unusable: {err}"}
    if cal is None:
        return {"calibration": "none: berdiff detect falls back to the paper rule; add one with "
                               "`berdiff calibrate MODEL PREPARED_DIR --out FILE`"}
    ck.meta[CALIBRATION_KEY] = "(summarised under 'calibration')"
    out = cal.summary()
    want = cal.source.get("weights_sha256")
    if want:
        out["weights_match"] = (weights_sha256(ck) == want or
                                "NO: these weights differ from those calibrated (retrained or "
                                "exported since?); recalibrate")
    return {"calibration": out}
