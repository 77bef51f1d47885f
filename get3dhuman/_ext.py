"""Loads the compiled extension (get3dhuman._C) and says which backends it was built with."""

from __future__ import annotations

import importlib
import os

import torch

# Every op registered by csrc/registration.cpp; compiled_backends() checks each.
OPS = ("pixel_aligned_sample", "pixel_aligned_sample_backward")
_BACKENDS = ("CPU", "CUDA")


def load_extension() -> None:
    """Imports get3dhuman._C, which registers the torch.ops.get3dhuman operators.

    Raises ImportError with the likely cause when the extension is missing (a source checkout
    on sys.path instead of the installed package, or an install that skipped the build).
    """
    try:
        importlib.import_module("get3dhuman._C")
    except ImportError as error:
        package_dir = os.path.dirname(os.path.abspath(__file__))
        raise ImportError(
            f"get3dhuman's compiled extension (get3dhuman._C) could not be loaded from {package_dir}: "
            f"{error}. Install the package with `pip install --no-build-isolation .` (torch first) "
            "and import it from outside the source tree (pytest uses --import-mode=importlib)."
        ) from error


def compiled_backends() -> list[str]:
    """Backends ('cpu', 'cuda') for which every op of the extension has a kernel."""
    load_extension()
    has_kernel = torch._C._dispatch_has_kernel_for_dispatch_key
    return [
        backend.lower()
        for backend in _BACKENDS
        if all(has_kernel(f"get3dhuman::{op}", backend) for op in OPS)
    ]
