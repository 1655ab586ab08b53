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
