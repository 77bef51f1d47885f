"""Triton kernels of get3dhuman, installed as the subpackage ``get3dhuman.kernels``.

Triton is optional at run time: every Triton kernel has a C++/CUDA or pure-torch counterpart,
and backend selection asks `device_unavailable_reason` before choosing a Triton kernel, which
refuses a Triton older than `OLDEST_TRITON` (3.4, the one of torch 2.8; older torch then runs
the CUDA kernels).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import re

import torch

# The oldest Triton the kernels pass their tests with (interpreter cases and sm_90 compiles;
# checked with 3.1, 3.2, 3.3.1, 3.4, 3.5.1, 3.6 and 3.8): Triton 3.3 cannot compile
# them (a constexpr tuple is not subscriptable there), 3.2's compiler lacks the entry point the
# check uses, and 3.1's interpreter cannot run them.
OLDEST_TRITON = (3, 4)


def _distribution_version() -> str | None:
    """The installed Triton's version from its package metadata (without importing it), or None."""
    for distribution in ("triton", "pytorch-triton"):  # the second: torch nightlies' build of Triton
        try:
            return importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _unusable_reason(installed: bool, version: str | None) -> str | None:
    """Why a Triton of this `version` ('3.6.0', '3.2.0+git1234'; an unparsable one passes) cannot
    run the kernels, or None."""
    if not installed:
        return "Triton is not installed"
    match = re.match(r"(\d+)\.(\d+)", version or "")
    if match is not None and (int(match[1]), int(match[2])) < OLDEST_TRITON:
        return f"Triton {version} is older than {'.'.join(map(str, OLDEST_TRITON))}, the oldest the kernels are tested with"
    return None


# Read once: torch.compile traces the backend choice and cannot trace the import machinery
# (nor, in torch 2.5, a regular expression).
_INSTALLED = importlib.util.find_spec("triton") is not None
_UNUSABLE_REASON = _unusable_reason(_INSTALLED, _distribution_version() if _INSTALLED else None)


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


def triton_unusable_reason() -> str | None:
    """Why no Triton kernel can run in this installation (Triton missing, or older than
    OLDEST_TRITON), or None."""
    return _UNUSABLE_REASON


def device_unavailable_reason(tensor: torch.Tensor, explicit: bool = True) -> str | None:
    """Why Triton kernels cannot run on `tensor`'s device here, or None when they can.

    explicit: a Triton kernel was asked for by name. Without that, CPU tensors are refused
    even under the interpreter, which exists for tests, not for speed.
    """
    reason = triton_unusable_reason()
    if reason is not None:
        return reason
    if tensor.device.type == "cpu":
        if not interpreted():
            return "Triton runs CPU tensors only in its interpreter (TRITON_INTERPRET=1)"
        if not explicit:
            return "the Triton interpreter is for tests: ask for backend='triton' by name"
    elif tensor.device.type != "cuda":
        return f"Triton kernels run on CUDA devices, not {tensor.device}"
    return None
