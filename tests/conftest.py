"""Shared fixtures: the devices to test on. Without a GPU, Triton kernels run in the Triton
interpreter (TRITON_INTERPRET=1, read when a kernel module is imported)."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
from inputs import CUDA_READY

DEVICES = ["cpu"] + (["cuda"] if CUDA_READY else [])


@pytest.fixture(params=DEVICES)
def device(request):
    """Every device with a usable backend: 'cpu', and 'cuda' when a GPU is present."""
    return request.param
