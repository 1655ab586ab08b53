"""Bad checkpoints and paths end in one clear line (found by a user audit)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from napari_berdiff.core.models.autoencoder import BinaryAutoencoder
from napari_berdiff.core.models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from napari_berdiff.core.models.configs import get_preset


def _berdiff(*args):
    return subprocess.run([sys.executable, "-m", "napari_berdiff.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def test_weights_that_do_not_fit_their_config_are_one_line(tmp_path):
    ae_cfg, _ = get_preset("tiny", 1)
    path = save_checkpoint(tmp_path / "ae.pt", autoencoder=BinaryAutoencoder(ae_cfg))
    obj = torch.load(path, weights_only=True)
    obj["autoencoder"]["config"] = dict(obj["autoencoder"]["config"], nf=int(obj["autoencoder"]["config"]["nf"]) * 2)
    torch.save(obj, tmp_path / "bad.pt")
    ck = load_checkpoint(tmp_path / "bad.pt")
    with pytest.raises(CheckpointError) as err:
        ck.build_autoencoder()
    msg = str(err.value)
    assert "\n" not in msg and "do not fit its config" in msg and "more mismatches" in msg


def test_folders_given_as_checkpoints_or_export_targets(tmp_path):
    proc = _berdiff("inspect", tmp_path)
    assert proc.returncode == 2 and "is a folder" in proc.stderr and "Traceback" not in proc.stderr
    ae_cfg, _ = get_preset("tiny", 1)
    src = save_checkpoint(tmp_path / "ae.pt", autoencoder=BinaryAutoencoder(ae_cfg))
    out = tmp_path / "out"
    out.mkdir()
    proc = _berdiff("export", src, out, "--overwrite")
    assert proc.returncode == 2 and "is a folder" in proc.stderr and "Traceback" not in proc.stderr
    assert list(out.iterdir()) == []


def test_a_corrupt_image_names_the_file_and_the_way_on(tmp_path):
    import numpy as np
    from PIL import Image

    normal = tmp_path / "src" / "NORMAL"
    normal.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((40, 50), 60 * i, np.uint8)).save(normal / f"NORMAL-{i}-1.jpeg")
    (normal / "NORMAL-9-1.jpeg").write_text("not an image")
    proc = _berdiff("prepare-oct", tmp_path / "src", tmp_path / "prep", "--image-size", 32)
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip().splitlines()[-1]  # after the progress bar: one line
    assert err.startswith("berdiff prepare-oct: error:")
    assert "NORMAL-9-1.jpeg" in err and "--skip-bad" in err and "pip install" not in err
    assert not (tmp_path / "prep").exists()
