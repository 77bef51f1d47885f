"""The Triton decoded query (get3dhuman.kernels.decoded_query) against the grid_sample + Conv1d
reference, and the backend selection of query_field.

Without a GPU the kernel runs in the Triton interpreter (conftest sets TRITON_INTERPRET=1) on
CPU tensors; with one, on CUDA tensors. Tolerances (absolute, on sigmoid/tanh outputs, against
the fp32 reference evaluated on the same rounded inputs and weights): fp32 1e-4, fp16 2e-3,
bf16 1.6e-2 (about 4x the largest error seen; bf16 keeps 8 mantissa bits).
"""

import copy

import pytest
import torch
from inputs import compile_without_interpreter, random_inputs, triton_test_device

import get3dhuman
from get3dhuman.nn import ImplicitDecoder
from get3dhuman.nn.generator import PRESETS
from get3dhuman.ops import (
    BACKEND_ENV,
    backend_unavailable_reason,
    project_inputs,
    query_field,
    reference_query_field,
    select_backend,
)

DEVICE = triton_test_device()

TOLERANCE = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}

DECODERS = {
    "official shape": ImplicitDecoder.official_shape,
    "official texture": ImplicitDecoder.official_texture,
    "small shape": lambda: ImplicitDecoder([129, *PRESETS["small"].shape_hidden, 1], PRESETS["small"].shape_concat),
    "small texture": lambda: ImplicitDecoder([257, *PRESETS["small"].texture_hidden, 3], PRESETS["small"].texture_concat),
    "tiny shape": lambda: ImplicitDecoder([129, *PRESETS["tiny"].shape_hidden, 1], PRESETS["tiny"].shape_concat),
    # Widths that are no power of two, a concatenation into the last layer, tanh.
    "ragged widths": lambda: ImplicitDecoder([11, 40, 24, 20, 5], concat_layers=(1, 3), last_op="tanh"),
    "one layer": lambda: ImplicitDecoder([7, 3], last_op=None),
}


def _inputs(make_decoder, count, batch=2, seed=0):
    """A decoder from `make_decoder` with seeded weights, and deterministic inputs; callers pick
    counts that are no multiple of the kernel's block size."""
    torch.manual_seed(seed)
    decoder = make_decoder().to(device=DEVICE)
    features, points, calib = random_inputs(
        batch=batch, channels=decoder.in_channels - 1, height=6, width=9, count=count, device=DEVICE, seed=seed
    )
    return decoder, features, points, calib


def _rounded(decoder, features, points, calib, dtype):
    """The inputs and a decoder copy in `dtype`, and the fp32 reference on those rounded values."""
    low = copy.deepcopy(decoder).to(dtype)
    inputs = [t.to(dtype) for t in (features, points, calib)]
    reference = reference_query_field(copy.deepcopy(low).float(), *[t.float() for t in inputs])
    return low, inputs, reference


@pytest.mark.parametrize("name", list(DECODERS))
@pytest.mark.parametrize("variant", ["direct", "projected"])
def test_matches_reference_fp32(name, variant):
    decoder, features, points, calib = _inputs(DECODERS[name], count=77)
    with torch.no_grad():
        out = query_field(decoder, features, points, calib, variant=variant, backend="triton")
        reference = reference_query_field(decoder, features, points, calib)
    assert out.shape == reference.shape
    assert (out - reference).abs().max() <= TOLERANCE[torch.float32]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("variant", ["direct", "projected"])
def test_half_precision_within_documented_tolerance(dtype, variant):
    decoder, features, points, calib = _inputs(DECODERS["small shape"], count=130)
    decoder, inputs, reference = _rounded(decoder, features * 0.5, points, calib, dtype)
    with torch.no_grad():
        out = query_field(decoder, *inputs, variant=variant, backend="triton")
    assert out.dtype == dtype
    assert (out.float() - reference).abs().max() <= TOLERANCE[dtype]


def test_points_outside_and_on_the_border_of_the_image():
    """Corners outside the image count as zero; points on the border sample it exactly."""
    decoder, features, _, calib = _inputs(DECODERS["ragged widths"], count=1, batch=1)
    calib = torch.eye(4, device=DEVICE)[None]
    edges = torch.tensor([-1.0, 1.0, -1.0 - 1e-7, 1.0 + 1e-7, -1.3, 1.3, 0.0, 37.0, -1e6])
    grid = torch.cartesian_prod(edges, edges)
    points = torch.cat([grid, torch.linspace(-1, 1, len(grid))[:, None]], 1)[None].to(DEVICE)
    with torch.no_grad():
        for variant in ("direct", "projected"):
            out = query_field(decoder, features, points, calib, variant=variant, backend="triton")
            reference = reference_query_field(decoder, features, points, calib)
            assert (out - reference).abs().max() <= TOLERANCE[torch.float32]


def test_batch_with_different_calibrations_and_non_contiguous_inputs():
    decoder, features, points, calib = _inputs(DECODERS["small shape"], count=50, batch=3)
    features = features.transpose(2, 3).contiguous().transpose(2, 3)  # same values, other strides
    points = points.transpose(1, 2).contiguous().transpose(1, 2)
    assert not features.is_contiguous() and not points.is_contiguous()
    with torch.no_grad():
        out = query_field(decoder, features, points, calib, backend="triton")
    assert (out - reference_query_field(decoder, features, points, calib)).abs().max() <= TOLERANCE[torch.float32]


def test_precomputed_projection_and_empty_queries():
    decoder, features, points, calib = _inputs(DECODERS["tiny shape"], count=40)
    with torch.no_grad():
        projected = project_inputs(decoder, features)
        out = query_field(decoder, features, points, calib, projected=projected, backend="triton")
        assert (out - reference_query_field(decoder, features, points, calib)).abs().max() <= TOLERANCE[torch.float32]
        empty = query_field(decoder, features, points[:, :0], calib, backend="triton")
    assert empty.shape == (2, 1, 0)


def test_torch_compile_fullgraph():
    decoder, features, points, calib = _inputs(DECODERS["tiny shape"], count=33)

    def occupancy(f, p, c):
        return query_field(decoder, f, p, c, variant="projected", backend="triton")[:, 0] * 2 - 1

    compiled = torch.compile(occupancy, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        out = compiled(features, points, calib)
        expected = reference_query_field(decoder, features, points, calib)[:, 0] * 2 - 1
    assert (out - expected).abs().max() <= 2 * TOLERANCE[torch.float32]


def test_backend_selection_says_why_each_backend_is_skipped(monkeypatch):
    monkeypatch.delenv(BACKEND_ENV, raising=False)
    decoder, features, points, calib = _inputs(DECODERS["tiny shape"], count=5)
    with torch.no_grad():
        chosen, skipped = select_backend(decoder, features, points, calib)
        if DEVICE == "cpu":
            assert chosen == "cpu"
            assert "not cuda" in skipped["cuda"]
            assert "ask for backend='triton' by name" in skipped["triton"]
    # Training needs gradients, which the Triton kernel does not give.
    features.requires_grad_(True)
    assert "no backward" in backend_unavailable_reason("triton", decoder, features, points, calib)
    assert select_backend(decoder, features, points, calib)[0] != "triton"
    with pytest.raises(ValueError, match="backend='triton' cannot run these inputs: .*no backward"):
        query_field(decoder, features, points, calib, backend="triton")
    features.requires_grad_(False)
    with torch.no_grad(), pytest.raises(ValueError, match="float16, bfloat16 or float32, not torch.float64"):
        query_field(decoder.double(), features.double(), points.double(), calib.double(), backend="triton")
    with pytest.raises(ValueError, match="backend must be 'auto' or one of"):
        query_field(decoder.float(), features, points, calib, backend="fastest")


def test_environment_variable_overrides_and_the_argument_wins(monkeypatch):
    decoder, features, points, calib = _inputs(DECODERS["tiny shape"], count=5)
    monkeypatch.setenv(BACKEND_ENV, "reference")
    assert select_backend(decoder, features, points, calib)[0] == "reference"
    assert select_backend(decoder, features, points, calib, backend="auto")[0] != "reference"
    monkeypatch.setenv(BACKEND_ENV, "triton")
    with torch.no_grad():
        assert select_backend(decoder, features, points, calib)[0] == "triton"
        out = query_field(decoder, features, points, calib)
    assert (out - reference_query_field(decoder, features, points, calib)).abs().max() <= TOLERANCE[torch.float32]
    monkeypatch.setenv(BACKEND_ENV, "bogus")
    with pytest.raises(ValueError, match=f"{BACKEND_ENV} must be 'auto' or one of"):
        query_field(decoder, features, points, calib)


def test_build_info_reports_the_backends():
    report = get3dhuman.build_info()["query_backends"]
    assert report["order"] == ["cuda", "triton", "cpu", "reference"]
    chosen = report["chosen"][DEVICE]
    assert chosen["training"] in ("cuda", "cpu")
    if DEVICE == "cpu":
        assert chosen["inference"] == "cpu" and set(chosen["skipped_for_inference"]) == {"cuda", "triton"}


@pytest.mark.slow
def test_official_kernels_compile_for_hopper(tmp_path):
    """The real Triton compiler (not the interpreter) builds the official decoders' kernels for
    sm_90 without a GPU; the interpreter accepts code the compiler rejects."""
    script = (
        """
        import torch
        from get3dhuman.kernels.decoded_query import compile_for_gpu
        from get3dhuman.ops.decoder import LEAKY_SLOPE
        for widths, concat, channels in (([512, 256, 128, 1], [1, 2], 256), ([1024, 512, 256, 128, 3], [2, 3], 512)):
            for projected in (False, True):
                for dtype in (torch.float16, torch.bfloat16, torch.float32):
                    kernel = compile_for_gpu(widths, concat, channels, projected, dtype, LEAKY_SLOPE, capability=90)
                    assert kernel.asm["cubin"] and kernel.metadata.shared <= 227 * 1024, kernel.metadata.shared
        print("compiled")
        """
    )
    compile_without_interpreter(script, tmp_path)
