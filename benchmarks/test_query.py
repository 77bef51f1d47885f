"""Pixel-aligned decoded queries at official sizes: the grid_sample + Conv1d reference (the
authors' way) against both fused query_field variants, for the shape and texture decoders."""

import statistics

import pytest
import torch
from bench_settings import DEVICES, FEATURE_SIZE, POINT_COUNTS

from get3dhuman.benchmark import IMPLEMENTATIONS, peak_memory, query_case, run_query


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("count", POINT_COUNTS, ids=lambda n: f"N=2^{n.bit_length() - 1}")
@pytest.mark.parametrize("decoder_name", ["shape", "texture"])
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_query(benchmark, record, implementation, decoder_name, count, device):
    case = query_case(decoder_name, count, device, FEATURE_SIZE)

    def query(case):
        with torch.no_grad():
            out = run_query(implementation, *case)
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    name = f"{decoder_name} N=2^{count.bit_length() - 1} {device}"
    benchmark.group = name
    rounds = 3 if count <= 1 << 16 or device == "cuda" else 2
    benchmark.pedantic(query, args=(case,), rounds=rounds, iterations=1, warmup_rounds=1 if device == "cuda" else 0)
    del case  # free the inputs before the peak-memory measurement
    memory = peak_memory(implementation, decoder_name, count, device, FEATURE_SIZE)
    benchmark.extra_info["peak_bytes"] = memory["peak_bytes"]
    if benchmark.stats is not None:  # None under --benchmark-disable
        record(name, implementation, statistics.median(benchmark.stats.stats.data), memory["peak_bytes"])
