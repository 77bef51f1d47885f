"""Loads the compiled extension (get3dhuman._C) and reports what was built."""

from __future__ import annotations

import importlib
import os

import torch

# Every op registered by csrc/registration.cpp; build_info() reports the backends of each.
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


def build_info() -> dict:
    """What this installation can do.

    Returns a dict with: ``version`` (get3dhuman), ``torch``, ``torch_cuda`` (the CUDA version
    torch was built with, or None), ``compiled_backends`` (subset of ['cpu', 'cuda']),
    ``cuda_available`` (a usable GPU is present), ``devices`` (GPU names), ``triton`` (the
    importable Triton version, or None), ``query_backends`` (the backend order of
    get3dhuman.ops.query_field, the GET3DHUMAN_QUERY_BACKEND override, and the backend it picks
    for inference and for training on each device type here; see ops.query.backend_report),
    ``default_weights`` and ``default_refiner_weights`` (the files `Generator.from_pretrained()`
    and `Refiner.from_pretrained()` load, or None where this installation ships none), and
    ``cpu_bf16`` (the CPU's bfloat16 matrix instructions torch's kernels use, of 'avx512_bf16'
    and 'amx': where there are some, `compute_dtype=torch.bfloat16` / `--compute-dtype
    bfloat16` speeds up the decoders; None where this torch cannot tell).
    """
    from get3dhuman import __version__
    from get3dhuman.kernels import triton_version
    from get3dhuman.nn import generator, refiner
    from get3dhuman.ops.query import backend_report

    cuda_available = torch.cuda.is_available()
    return {
        "version": __version__,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "compiled_backends": compiled_backends(),
        "cuda_available": cuda_available,
        "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if cuda_available
        else [],
        "triton": triton_version(),
        "query_backends": backend_report(),
        "default_weights": _shipped(generator.DEFAULT_WEIGHTS),
        "default_refiner_weights": _shipped(refiner.DEFAULT_WEIGHTS),
        "cpu_bf16": _cpu_bf16(),
    }


def _cpu_bf16() -> list[str] | None:
    """build_info()'s `cpu_bf16`."""
    probes = {"avx512_bf16": getattr(torch.cpu, "_is_avx512_bf16_supported", None),
              "amx": getattr(torch.cpu, "_is_amx_tile_supported", None)}  # private: absent from some versions
    if any(probe is None for probe in probes.values()):
        return None
    return [name for name, probe in probes.items() if probe()]


def _shipped(path: str) -> str | None:
    """`path` where the file exists, else None."""
    return path if os.path.exists(path) else None
