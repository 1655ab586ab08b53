"""Shared pytest fixtures."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """One torch thread for the test: on a 2-core shared machine, two OpenMP threads competing with
    other work run several times slower than one."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def ckpt4(tmp_path_factory):
    """A tiny random 4-channel (BraTS-style) model for the plugin tests."""
    from _plugin_helpers import tiny_checkpoint

    return tiny_checkpoint(tmp_path_factory.mktemp("models") / "tiny4.pt", channels=4)


@pytest.fixture(scope="module")
def ckpt1(tmp_path_factory):
    """A tiny random 1-channel (OCT-style, resize mode) model for the plugin tests."""
    from _plugin_helpers import tiny_checkpoint

    return tiny_checkpoint(tmp_path_factory.mktemp("models") / "tiny1.pt", channels=1, mode="resize")
