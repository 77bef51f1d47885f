"""Benchmark sizes and devices.

`pytest benchmarks --benchmark-only` runs the official sizes. GET3DHUMAN_BENCH_QUICK=1 shrinks
every size so that CI can check that the benchmarks still run (`--benchmark-disable`).
GET3DHUMAN_VIRTUAL_CUDA=1 runs them on the tests' simulated CUDA device (conftest.py), and with
TRITON_INTERPRET=1 too the Triton rows shrink further (INTERPRETED), to what its interpreter
runs in seconds.
"""

import os

import torch

import get3dhuman

QUICK = os.environ.get("GET3DHUMAN_BENCH_QUICK") == "1"
INTERPRETED = os.environ.get("GET3DHUMAN_VIRTUAL_CUDA") == "1" and os.environ.get("TRITON_INTERPRET") == "1"
FEATURE_SIZE = 16 if QUICK else 128  # the feature volume is 256 x 128 x 128 at official sizes
POINT_COUNTS = [1 << 10, 1 << 12] if QUICK else [1 << 16, 1 << 20]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() and "cuda" in get3dhuman.build_info()["compiled_backends"] else [])


def median_seconds(benchmark) -> float:
    """The median of a pytest-benchmark run (NaN with --benchmark-disable, which keeps no stats)."""
    return benchmark.stats.stats.median if benchmark.stats else float("nan")
