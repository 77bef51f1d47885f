"""Triton kernels of get3dhuman, installed as the subpackage ``get3dhuman.kernels``.

Triton is optional at run time: every Triton kernel has a C++/CUDA or pure-torch counterpart,
and backend selection asks `triton_version()` before choosing a Triton kernel.
"""

from __future__ import annotations

import importlib


def triton_version() -> str | None:
    """The version of the importable Triton, or None when Triton cannot be imported."""
    try:
        triton = importlib.import_module("triton")
    except ImportError:
        return None
    return getattr(triton, "__version__", "unknown")
