"""Shared pytest settings."""
import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    "The test models are tiny: one torch thread is as fast, and far faster when test processes share the cores."
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
