"""What this installation can do: `build_info()` (`get3dhuman info`)."""

from __future__ import annotations

import importlib.metadata
import os

import torch

from get3dhuman._ext import compiled_backends
from get3dhuman.kernels import triton_version
from get3dhuman.nn import generator, refiner
from get3dhuman.ops.query import backend_report


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
    cuda_available = torch.cuda.is_available()
    return {
        "version": importlib.metadata.version("get3dhuman"),
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


def describe(info: dict) -> str:
    """`build_info()`'s dict as the lines `get3dhuman info` prints."""
    info = dict(info)
    backends = info.pop("query_backends")
    width = max(len(key) for key in info)
    lines = []
    for key, value in info.items():
        if isinstance(value, list):
            value = ", ".join(value) if value else "-"
        lines.append(f"{key:<{width}}  {'-' if value is None else value}")
    lines.append(f"query backends: {' > '.join(backends['order'])} (GET3DHUMAN_QUERY_BACKEND: {backends['override']})")
    for device, chosen in backends["chosen"].items():
        lines.append(f"  {device}: inference -> {chosen['inference']}, training -> {chosen['training']}")
        lines += [f"    {name} skipped: {reason}" for name, reason in chosen["skipped_for_inference"].items()]
    return "\n".join(lines)
