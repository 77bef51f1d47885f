"""Triton kernels of get3dhuman, installed as the subpackage ``get3dhuman.kernels``.

Triton is optional at run time: every Triton kernel has a C++/CUDA or pure-torch counterpart,
and backend selection asks `device_unavailable_reason` before choosing a Triton kernel.
"""

from __future__ import annotations

import importlib
import importlib.util
import os

import torch

# Read once: torch.compile traces the backend choice and cannot trace the import machinery.
_INSTALLED = importlib.util.find_spec("triton") is not None


def triton_version() -> str | None:
    """The version of the importable Triton, or None when Triton cannot be imported."""
    try:
        triton = importlib.import_module("triton")
    except ImportError:
        return None
    return getattr(triton, "__version__", "unknown")


def interpreted() -> bool:
    """Whether Triton kernels run in the Triton interpreter (TRITON_INTERPRET=1), which takes CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def device_unavailable_reason(tensor: torch.Tensor, explicit: bool = True) -> str | None:
    """Why Triton kernels cannot run on `tensor`'s device here, or None when they can.

    explicit: a Triton kernel was asked for by name. Without that, CPU tensors are refused
    even under the interpreter, which exists for tests, not for speed.
    """
    if not _INSTALLED:
        return "Triton is not installed"
    if tensor.device.type == "cpu":
        if not interpreted():
            return "Triton runs CPU tensors only in its interpreter (TRITON_INTERPRET=1)"
        if not explicit:
            return "the Triton interpreter is for tests: ask for backend='triton' by name"
    elif tensor.device.type != "cuda":
        return f"Triton kernels run on CUDA devices, not {tensor.device}"
    return None
