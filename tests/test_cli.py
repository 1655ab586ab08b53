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


def test_configs_lists_every_preset_with_exact_parameter_counts():
    out = berdiff("configs").stdout
    assert "36,034,432" in out and "4,103,716" in out and "4,101,985" in out
    rows = json.loads(berdiff("configs", "--json").stdout)
    paper = next(r for r in rows if r["name"] == "paper")
    assert (paper["ae_params_c4"], paper["ae_params_c1"], paper["unet_params"]) == (4103716, 4101985, 36034432)
    assert {r["name"] for r in rows} >= {"paper", "small", "tiny"}


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
