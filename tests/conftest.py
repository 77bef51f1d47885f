"""Shared fixtures: the devices to test on."""

import pytest
import torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request):
    """Every device with a usable backend: 'cpu', and 'cuda' when a GPU is present."""
    return request.param
