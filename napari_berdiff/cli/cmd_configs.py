"""``berdiff configs``: the model configurations with their parameter counts."""

from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("configs", help="list the model configurations (paper, small, tiny) with parameter counts")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def preset_table() -> list[dict]:
    """One row per preset: sizes and exact parameter counts of both networks."""
    import torch

    from ..core.models.autoencoder import BinaryAutoencoder
    from ..core.models.configs import PRESETS, get_preset
    from ..core.models.nn_utils import count_parameters
    from ..core.models.unet import BernoulliUNet

    rows = []
    with torch.device("meta"):  # count parameters without allocating the weights
        for name, preset in PRESETS.items():
            ae1, unet = get_preset(name, 1)
            ae4, _ = get_preset(name, 4)
            rows.append({
                "name": name,
                "image": f"{ae1.image_size}x{ae1.image_size}",
                "latent": f"{ae1.latent_channels}x{ae1.latent_size}x{ae1.latent_size} bits",
                "ae_params_c1": count_parameters(BinaryAutoencoder(ae1)),
                "ae_params_c4": count_parameters(BinaryAutoencoder(ae4)),
                "unet_params": count_parameters(BernoulliUNet(unet)),
                "description": preset.description,
            })
    return rows


def run(args) -> int:
    rows = preset_table()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    head = f"{'config':<8} {'image':<9} {'latent':<18} {'AE (c=1)':>11} {'AE (c=4)':>11} {'U-Net':>12}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['name']:<8} {r['image']:<9} {r['latent']:<18} {r['ae_params_c1']:>11,} "
              f"{r['ae_params_c4']:>11,} {r['unet_params']:>12,}")
    print()
    for r in rows:
        print(f"{r['name']}: {r['description']}")
    return 0
