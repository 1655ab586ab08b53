"""The berdiff command line as a user calls it."""

import json
import subprocess
import sys


from napari_berdiff.core.models.autoencoder import BinaryAutoencoder
from napari_berdiff.core.models.checkpoint import save_checkpoint
from napari_berdiff.core.models.configs import get_preset


def berdiff(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "napari_berdiff.cli", *args], capture_output=True, text=True, timeout=120)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_configs_lists_every_preset_with_its_parameter_counts():
    # the counts themselves are checked once, in test_networks.test_parameter_counts
    from napari_berdiff.core.models.configs import PRESETS
    from napari_berdiff.core.models.nn_utils import count_parameters
    from napari_berdiff.core.models.unet import BernoulliUNet

    out = berdiff("configs").stdout
    rows = {r["name"]: r for r in json.loads(berdiff("configs", "--json").stdout)}
    assert set(rows) == set(PRESETS) >= {"paper", "small", "tiny"}
    for name in ("paper", "tiny"):
        (ae1, unet), (ae4, _) = get_preset(name, 1), get_preset(name, 4)
        want = (count_parameters(BinaryAutoencoder(ae4)), count_parameters(BinaryAutoencoder(ae1)),
                count_parameters(BernoulliUNet(unet)))
        row = rows[name]
        assert (row["ae_params_c4"], row["ae_params_c1"], row["unet_params"]) == want
        assert all(f"{n:,}" in out for n in want)


def test_inspect_shows_a_checkpoint_and_refuses_bad_files(tmp_path):
    ae_cfg, _ = get_preset("tiny", 1)
    path = save_checkpoint(tmp_path / "ae.pt", autoencoder=BinaryAutoencoder(ae_cfg), meta={"name": "x"})
    info = json.loads(berdiff("inspect", str(path)).stdout)
    assert info["autoencoder"]["in_channels"] == 1 and info["unet"] is None and info["meta"] == {"name": "x"}
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    proc = berdiff("inspect", str(bad), check=False)
    assert proc.returncode == 2 and "cannot read checkpoint" in proc.stderr and "Traceback" not in proc.stderr
    proc = berdiff("inspect", str(tmp_path / "none.pt"), check=False)
    assert proc.returncode == 2 and "not found" in proc.stderr


def test_unknown_command_is_a_usage_error():
    proc = berdiff("frobnicate", check=False)
    assert proc.returncode == 2 and "invalid choice" in proc.stderr
