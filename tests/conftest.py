"""Shared fixtures: the devices to test on."""

import pytest
from inputs import CUDA_READY

DEVICES = ["cpu"] + (["cuda"] if CUDA_READY else [])


@pytest.fixture(params=DEVICES)
def device(request):
    """Every device with a usable backend: 'cpu', and 'cuda' when a GPU is present."""
    return request.param
