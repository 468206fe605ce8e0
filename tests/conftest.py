import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic_threads():
    # the same op sequence on the same thread count gives the same rounding; tests compare runs within a process
    torch.manual_seed(0)
    yield
