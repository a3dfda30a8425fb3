"""Shared pytest fixtures: generic only (a seeded generator, one CPU thread)."""
import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tests share a small CPU with other jobs: keep torch on one thread."""
    torch.set_num_threads(1)
    yield


@pytest.fixture
def gen():
    """A CPU ``torch.Generator`` seeded with 0, fresh for every test."""
    return torch.Generator().manual_seed(0)
