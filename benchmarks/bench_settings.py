"""Benchmark sizes and devices.

`pytest benchmarks --benchmark-only` runs the official sizes. GET3DHUMAN_BENCH_QUICK=1 shrinks
every size so that CI can check that the benchmarks still run (`--benchmark-disable`).
"""

import os

import torch

import get3dhuman

QUICK = os.environ.get("GET3DHUMAN_BENCH_QUICK") == "1"
FEATURE_SIZE = 16 if QUICK else 128  # the feature volume is 256 x 128 x 128 at official sizes
POINT_COUNTS = [1 << 10, 1 << 12] if QUICK else [1 << 16, 1 << 20]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() and "cuda" in get3dhuman.build_info()["compiled_backends"] else [])


def median_seconds(benchmark) -> float:
    """The median of a pytest-benchmark run (NaN with --benchmark-disable, which keeps no stats)."""
    return benchmark.stats.stats.median if benchmark.stats else float("nan")
