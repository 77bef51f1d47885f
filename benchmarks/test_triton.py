"""The Triton kernels on a GPU, against the reference and the CUDA C++ path in the same run.

- The shape-decoder query at official sizes (features 256 x 128 x 128) for 2^22 points:
  grid_sample + Conv1d in fp32 (the reference), query_field's CUDA backend (direct and
  projected), and the Triton kernel (direct and projected; fp32, fp16, bf16). Each result is
  checked against the reference within the tolerances of tests/ops/test_triton_query.py.
- StyleGAN2 helpers at the synthesis network's 512-channel sizes: fused bias_act and weight
  modulation against their torch references.

Needs a CUDA device (the Triton interpreter measures nothing): skipped without one. CI
dry-runs these rows on the tests' simulated device with TRITON_INTERPRET=1, at sizes the
interpreter runs in seconds (bench_settings.INTERPRETED).
"""

import copy
import statistics

import pytest
import torch
from bench_settings import FEATURE_SIZE, INTERPRETED, QUICK

from get3dhuman.benchmark import query_case
from get3dhuman.ops import (
    bias_act,
    modulate_weights,
    query_field,
    reference_bias_act,
    reference_modulate_weights,
    reference_query_field,
)

if not torch.cuda.is_available():
    pytest.skip("the Triton benchmarks need a CUDA device", allow_module_level=True)
pytest.importorskip("triton")

COUNT = 1 << 8 if INTERPRETED else 1 << 12 if QUICK else 1 << 22
BIAS_ACT_SIDE = 16 if INTERPRETED else 64 if QUICK else 256  # of [8, 512, side, side] activations
MODULATION_SIZE = (4, 64) if INTERPRETED else (32, 512)  # (styles, channels) of [channels, channels, 3, 3] weights
TOLERANCE = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
QUERIES = {
    "reference": (torch.float32, None, None),
    "cuda direct": (torch.float32, "cuda", "direct"),
    "cuda projected": (torch.float32, "cuda", "projected"),
    "triton direct": (torch.float32, "triton", "direct"),
    "triton projected": (torch.float32, "triton", "projected"),
    "triton direct fp16": (torch.float16, "triton", "direct"),
    "triton projected fp16": (torch.float16, "triton", "projected"),
    "triton projected bf16": (torch.bfloat16, "triton", "projected"),
}


def _timed(benchmark, function, *args):
    def run():
        out = function(*args)
        torch.cuda.synchronize()
        return out

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    out = benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=1)
    peak = torch.cuda.max_memory_allocated() - before
    seconds = statistics.median(benchmark.stats.stats.data) if benchmark.stats is not None else float("nan")
    return out, seconds, peak


@pytest.fixture(scope="module")
def shape_case():
    decoder, features, points, calib = query_case("shape", COUNT, "cuda", FEATURE_SIZE)
    with torch.no_grad():
        expected = reference_query_field(decoder, features, points, calib)
    return decoder, features, points, calib, expected


@pytest.mark.parametrize("name", list(QUERIES))
def test_shape_query(benchmark, record, shape_case, name):
    decoder, features, points, calib, expected = shape_case
    dtype, backend, variant = QUERIES[name]
    decoder = copy.deepcopy(decoder).to(dtype)
    inputs = [t.to(dtype) for t in (features, points, calib)]
    if backend is None:
        function = reference_query_field
    else:
        def function(*args):
            return query_field(*args, variant=variant, backend=backend)
    case = f"shape N=2^{COUNT.bit_length() - 1} cuda"
    benchmark.group = case
    with torch.no_grad():
        out, seconds, peak = _timed(benchmark, function, decoder, *inputs)
    error = (out.float() - expected).abs().max().item()
    benchmark.extra_info.update(max_abs_error=error, peak_bytes=peak)
    record(case, name, seconds, peak)
    # The error is measured against fp32 inputs, so low precision adds its input rounding.
    assert error <= TOLERANCE[dtype] * (1 if dtype == torch.float32 else 4)


@pytest.mark.parametrize("implementation", ["reference", "triton"])
def test_bias_act(benchmark, record, implementation):
    x = torch.randn(8, 512, BIAS_ACT_SIDE, BIAS_ACT_SIDE, device="cuda", dtype=torch.float16)
    bias = torch.randn(512, device="cuda", dtype=torch.float16)
    function = reference_bias_act if implementation == "reference" else lambda *a: bias_act(*a, backend="triton")
    case = f"bias_act 8x512x{BIAS_ACT_SIDE}^2 fp16 cuda"
    benchmark.group = case
    _, seconds, peak = _timed(benchmark, function, x, bias, "lrelu", 2**0.5, 256.0)
    record(case, implementation, seconds, peak)


@pytest.mark.parametrize("implementation", ["reference", "triton"])
def test_modulation(benchmark, record, implementation):
    batch, channels = MODULATION_SIZE
    weight = torch.randn(channels, channels, 3, 3, device="cuda")
    styles = torch.randn(batch, channels, device="cuda")
    function = reference_modulate_weights if implementation == "reference" else lambda *a: modulate_weights(*a, backend="triton")
    case = f"modulate {batch}x{channels}x{channels}x3x3 cuda"
    benchmark.group = case
    _, seconds, peak = _timed(benchmark, function, weight, styles)
    record(case, implementation, seconds, peak)
