"""Sample grids of training runs come from the validation split (healthy and diseased slices)."""

import numpy as np
import torch

from _train_data import make_prepared_dir
from src_training.train.datasets import PreparedDataset
from src_training.prepare.prepared_format import SplitWriter, quantise
from src_training.train.stage_common import fixed_batch


def test_sample_grid_images_come_from_the_validation_split(tmp_path):
    root = make_prepared_dir(tmp_path / "p", n=8, channels=1, size=16)
    ds = PreparedDataset(root)
    train_only = fixed_batch(ds, 4, torch.device("cpu"))
    assert train_only.shape == (4, 1, 16, 16)  # no val split: training images
    w = SplitWriter(root, "val", 1, 16)
    vals = np.linspace(0.1, 0.9, 6, dtype=np.float32)[:, None, None, None] * np.ones((6, 1, 16, 16), np.float32)
    healthy = np.array([True, True, True, False, False, False])
    labels = np.zeros((6, 16, 16), np.uint8)
    labels[~healthy, 4:8, 4:8] = 1
    w.add(quantise(vals), case_id="v", slice_index=np.arange(6), healthy=healthy, labels=labels)
    w.finish()
    batch = fixed_batch(PreparedDataset(root), 4, torch.device("cpu"))
    got = sorted(round(float(v), 2) for v in batch.mean(dim=(1, 2, 3)))
    # two diseased (values 0.58.., 0.9) and two healthy (0.1, 0.42) validation slices
    assert len(got) == 4 and all(any(abs(g - v) < 0.01 for v in vals.ravel()[::256]) for g in got)
    assert sum(g > 0.5 for g in got) == 2
