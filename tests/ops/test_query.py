"""query_field (both fused variants) against the grid_sample + Conv1d reference."""

import pytest
import torch
from inputs import random_inputs

from get3dhuman.benchmark import peak_memory
from get3dhuman.nn import ImplicitDecoder
from get3dhuman.ops import (
    backend_unavailable_reason,
    choose_variant,
    pixel_order,
    project_inputs,
    query_field,
    reference_query_field,
    select_backend,
)

DECODERS = {
    "shape": ImplicitDecoder.official_shape,
    "texture": ImplicitDecoder.official_texture,
    "small": lambda: ImplicitDecoder([9, 16, 12, 8, 2], concat_layers=(1, 3), last_op="tanh"),
    "one layer": lambda: ImplicitDecoder([9, 4]),
    "two layers": lambda: ImplicitDecoder([9, 6, 3], last_op=None),
}


def _setup(name, device, count=700, dtype=torch.float32, batch=2, size=12):
    torch.manual_seed(0)
    decoder = DECODERS[name]().to(device=device, dtype=dtype)
    features, points, calib = random_inputs(
        batch=batch, channels=decoder.in_channels - 1, height=size, width=size + 3, count=count, dtype=dtype, device=device
    )
    return decoder, features, points, calib


@pytest.mark.parametrize("name", list(DECODERS))
@pytest.mark.parametrize("variant", ["direct", "projected"])
@pytest.mark.parametrize("sort_points", [False, True])
def test_forward_matches_reference(device, name, variant, sort_points):
    decoder, features, points, calib = _setup(name, device)
    with torch.no_grad():
        expected = reference_query_field(decoder, features, points, calib)
        # A chunk size that leaves a remainder exercises the chunk boundaries.
        out = query_field(decoder, features, points, calib, variant=variant, chunk_size=256, sort_points=sort_points)
    assert out.shape == (2, decoder.out_channels, 700)
    assert (out - expected).abs().max().item() <= 1e-4


def test_precomputed_projection_is_reused(device):
    decoder, features, points, calib = _setup("shape", device)
    with torch.no_grad():
        projected = project_inputs(decoder, features)
        assert projected.features.shape == (2, 512 + 256 + 128, 12, 15)
        out = query_field(decoder, features, points, calib, projected=projected)
        expected = reference_query_field(decoder, features, points, calib)
    assert (out - expected).abs().max().item() <= 1e-4


@pytest.mark.parametrize("name", list(DECODERS))
@pytest.mark.parametrize("variant", ["direct", "projected"])
def test_inference_in_place_equals_the_autograd_path_and_keeps_the_inputs(device, name, variant):
    # Without autograd the activations overwrite their pre-activations (layer 0's is a slice
    # of the sampled features): the values must be the autograd path's bits, inputs untouched.
    decoder, features, points, calib = _setup(name, device, count=300)
    projected = project_inputs(decoder, features) if variant == "projected" else None
    kept = [t.detach().clone() for t in (features, points, calib, *(projected or ()))]
    # The device's compiled backend both times ('auto' may take Triton for inference on a GPU).
    options = {"variant": variant, "projected": projected, "chunk_size": 128, "backend": device}
    with_grad = query_field(decoder, features.requires_grad_(), points, calib, **options)
    with torch.no_grad():
        without = query_field(decoder, features, points, calib, **options)
    assert torch.equal(without, with_grad.detach())
    for before, after in zip(kept, (features, points, calib, *(projected or ()))):
        assert torch.equal(before, after)


@pytest.mark.parametrize("name", ["shape", "texture", "small"])
@pytest.mark.parametrize("variant", ["direct", "projected"])
def test_compute_dtype_of_the_matrix_products(device, name, variant):
    # float32 features with float64 products: the float64 reference's values to the float32
    # sampling's rounding; with bfloat16 products within bf16 rounding (8 bits of mantissa) of
    # them (here at most 3.4e-3, 6.3e-4 on average).
    decoder, features, points, calib = _setup(name, device)
    with torch.no_grad():
        exact = reference_query_field(decoder.double(), features.double(), points.double(), calib.double())
        decoder.float()
        options = {"variant": variant, "chunk_size": 256, "backend": device}
        wide = query_field(decoder, features, points, calib, compute_dtype=torch.float64, **options)
        narrow = query_field(decoder, features, points, calib, compute_dtype=torch.bfloat16, **options)
        again = query_field(decoder, features, points, calib, compute_dtype=torch.bfloat16, **options)
        default = query_field(decoder, features, points, calib, **options)
    assert wide.dtype == narrow.dtype == torch.float32
    assert (wide - exact).abs().max().item() <= 1e-5
    assert 1e-4 < (narrow - exact).abs().max().item() <= 1e-2  # bf16 rounding shows, and stays small
    assert (narrow - exact).abs().mean().item() <= 2e-3
    assert torch.equal(narrow, again)  # deterministic in every dtype
    assert torch.equal(default, query_field(decoder, features, points, calib, compute_dtype=torch.float32, **options))


@pytest.mark.parametrize("variant", ["direct", "projected"])
def test_a_decoder_in_another_dtype_than_the_features(device, variant):
    # The decoder's parameters are cast to compute_dtype: a float32 decoder queried with
    # float64 inputs computes in float64 (the float64 reference of the same weights), and a
    # bfloat16 decoder with float32 inputs gives the bits of a float32 decoder holding its values.
    decoder, features, points, calib = _setup("shape", device)
    options = {"variant": variant, "chunk_size": 256, "backend": device}
    with torch.no_grad():
        wide_inputs = (features.double(), points.double(), calib.double())
        expected = reference_query_field(decoder.double(), *wide_inputs)  # float32 values, exact in float64
        decoder.float()
        wide = query_field(decoder, *wide_inputs, **options)
        assert wide.dtype == torch.float64 and (wide - expected).abs().max().item() <= 1e-10
        rounded = decoder.bfloat16().float()  # float32 parameters holding bfloat16 values
        narrow_decoder = ImplicitDecoder.official_shape().to(device).bfloat16()
        narrow_decoder.load_state_dict(rounded.state_dict())
        narrow = query_field(narrow_decoder, features, points, calib, compute_dtype=torch.bfloat16, **options)
        same = query_field(rounded, features, points, calib, compute_dtype=torch.bfloat16, **options)
    assert narrow.dtype == torch.float32 and torch.equal(narrow, same)
    assert "not torch.bfloat16" in backend_unavailable_reason("triton", narrow_decoder, features, points, calib)
    assert select_backend(narrow_decoder, features, points, calib, "auto")[0] == device


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_autocast_does_not_change_a_query(backend):
    # Its precision is compute_dtype's alone: under autocast the same bits as without.
    decoder, features, points, calib = _setup("small", "cpu")
    with torch.no_grad():
        expected = query_field(decoder, features, points, calib, backend=backend, variant="projected")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = query_field(decoder, features, points, calib, backend=backend, variant="projected")
    assert out.dtype == torch.float32 and torch.equal(out, expected)


def test_compute_dtype_keeps_gradients(device):
    decoder, features, points, calib = _setup("small", device, count=300)
    grads = []
    for dtype in (torch.float32, torch.bfloat16):
        decoder.zero_grad()
        f = features.clone().requires_grad_()
        out = query_field(decoder, f, points, calib, variant="projected", compute_dtype=dtype, backend=device)
        out.sum().backward()
        grads.append([f.grad] + [param.grad.clone() for param in decoder.parameters()])
    for wide, narrow in zip(*grads):
        assert narrow.dtype == torch.float32
        assert (narrow - wide).abs().max().item() <= 0.05 * wide.abs().max().item()


def test_sorted_point_order_gives_the_same_values_and_gradients(device):
    decoder, features, points, calib = _setup("small", device, count=500, dtype=torch.float64)
    points[0, 7] = float("nan")  # non-finite points keep their place too
    results = []
    for sort in (False, True):
        f, p = features.clone().requires_grad_(), points.clone().requires_grad_()
        out = query_field(decoder, f, p, calib, chunk_size=64, sort_points=sort)
        out.nan_to_num().square().sum().backward()
        results.append((out, f.grad, p.grad))
    for unsorted, sorted_ in zip(*results):
        torch.testing.assert_close(sorted_, unsorted, equal_nan=True)


def test_pixel_order_visits_rows_in_order():
    features = torch.zeros(1, 1, 4, 5)
    points = torch.tensor([[[0.9, 0.9, 0], [-1, -1, 0], [0.9, -1, 0], [-1, 0.9, 0]]])
    order = pixel_order(features, points, torch.eye(4).unsqueeze(0))
    assert order.tolist() == [[1, 2, 3, 0]]


def test_auto_variant_rule():
    features = torch.zeros(1, 4, 8, 8)
    assert choose_variant(features, 63) == "direct"
    assert choose_variant(features, 64) == "projected"


@pytest.mark.parametrize("variant", ["direct", "projected"])
def test_backward_matches_reference(device, variant):
    decoder, features, points, calib = _setup("small", device, count=300, dtype=torch.float64)
    grads = []
    for fn in (lambda *a: query_field(*a, variant=variant, chunk_size=128), reference_query_field):
        decoder.zero_grad()
        f, p, c = (t.clone().requires_grad_() for t in (features, points, calib))
        fn(decoder, f, p, c).square().sum().backward()
        grads.append([f.grad, p.grad, c.grad] + [param.grad.clone() for param in decoder.parameters()])
    for ours, expected in zip(*grads):
        assert (ours - expected).abs().max().item() <= 1e-9


def test_gradcheck_float64():
    decoder, features, points, calib = _setup("small", "cpu", count=10, dtype=torch.float64, batch=1, size=5)
    inputs = [t.requires_grad_() for t in (features, points * 0.8, calib)]
    for variant in ("direct", "projected"):
        assert torch.autograd.gradcheck(lambda f, p, c: query_field(decoder, f, p, c, variant=variant, chunk_size=4), inputs)


def test_torch_compile_fullgraph(device):
    decoder, features, points, calib = _setup("shape", device, count=300)

    def occupancy(f, p, c):
        return query_field(decoder, f, p, c, variant="projected", chunk_size=128)

    compiled = torch.compile(occupancy, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        assert (compiled(features, points, calib) - reference_query_field(decoder, features, points, calib)).abs().max() <= 1e-4


def test_empty_and_single_point(device):
    decoder, features, points, calib = _setup("small", device)
    assert query_field(decoder, features, points[:, :0], calib).shape == (2, 2, 0)
    one = query_field(decoder, features, points[:, :1], calib)
    assert torch.allclose(one, reference_query_field(decoder, features, points[:, :1], calib), atol=1e-5)


def test_bad_arguments():
    decoder, features, points, calib = _setup("small", "cpu")
    with pytest.raises(TypeError, match="decoder"):
        query_field(torch.nn.Linear(2, 2), features, points, calib)
    with pytest.raises(ValueError, match="features"):
        query_field(decoder, features[:, :3], points, calib)
    with pytest.raises(ValueError, match=r"^decoder parameters must be on the device of features \(cpu\), got meta"):
        query_field(ImplicitDecoder([9, 4]).to("meta"), features, points, calib)
    with pytest.raises(ValueError, match=r"^backend='reference' cannot run these inputs: it takes a decoder in the "
                       r"features' dtype \(torch.float64\), not torch.float32$"):
        query_field(decoder, features.double(), points.double(), calib.double(), backend="reference")
    with pytest.raises(ValueError, match="variant"):
        query_field(decoder, features, points, calib, variant="fast")
    with pytest.raises(ValueError, match="chunk_size"):
        query_field(decoder, features, points, calib, chunk_size=0)
    with pytest.raises(ValueError, match=r"^compute_dtype must be None or one of torch.float64, .* got torch.int8$"):
        query_field(decoder, features, points, calib, compute_dtype=torch.int8)
    with pytest.raises(ValueError, match=r"^backend='reference' cannot run these inputs: it computes in the features' "
                       r"dtype \(torch.float32\), not compute_dtype torch.bfloat16$"):
        query_field(decoder, features, points, calib, compute_dtype=torch.bfloat16, backend="reference")
    # 'auto' skips the backends that take only the features' dtype
    assert "not compute_dtype torch.bfloat16" in backend_unavailable_reason(
        "triton", decoder, features, points, calib, compute_dtype=torch.bfloat16)
    assert select_backend(decoder, features, points, calib, "auto", torch.bfloat16)[0] == "cpu"
    assert backend_unavailable_reason("reference", decoder, features, points, calib,
                                      compute_dtype=torch.float32) is None  # the features' own
    with pytest.raises(ValueError, match="points"):
        query_field(decoder, features, points[:1], calib)
    projected = project_inputs(decoder, features)
    with pytest.raises(ValueError, match="projected"):
        query_field(decoder, features, points, calib, variant="direct", projected=projected)
    with pytest.raises(ValueError, match="projected"):
        query_field(decoder, features, points, calib, projected=project_inputs(decoder, features[:1]))


@pytest.mark.slow
def test_fused_query_never_holds_all_samples():
    """At official sizes the fused query's extra peak memory is a small fraction of the
    reference's, which holds [B, C, N] samples and activations for every point."""
    count = 1 << 18
    reference = peak_memory("reference", "shape", count)
    fused = peak_memory("projected", "shape", count)
    # The reference holds >= 257 + 512 + 769 floats per point; the fused query a chunk's worth.
    assert reference["peak_bytes"] >= count * 4 * (257 + 512 + 769)
    assert fused["peak_bytes"] * 4 <= reference["peak_bytes"]
    assert fused["checksum"] == pytest.approx(reference["checksum"], rel=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["direct", "projected"])
def test_fused_peak_memory_does_not_grow_with_the_chunk_count(variant):
    """Beyond the O(N) inputs and outputs (points, their sorted copy and order, results: under
    100 bytes per point), peak memory must not grow with N: chunk buffers are reused, not
    piled up. (Collecting chunk results once grew the heap by ~1000 bytes per point.)"""
    small, large = (peak_memory(variant, "shape", count)["peak_bytes"] for count in (1 << 16, 1 << 19))
    assert large - small <= 384 * ((1 << 19) - (1 << 16))


@pytest.mark.slow
def test_torch_compile_inductor_forward_and_backward():
    """The default torch.compile backend (inductor) traces the ops and their autograd."""
    decoder, features, points, calib = _setup("small", "cpu", count=300)
    compiled = torch.compile(
        lambda f, p, c: query_field(decoder, f, p, c, variant="projected", chunk_size=128), fullgraph=True
    )
    f = features.clone().requires_grad_()
    out = compiled(f, points, calib)
    expected_f = features.clone().requires_grad_()
    expected = reference_query_field(decoder, expected_f, points, calib)
    assert (out - expected).abs().max().item() <= 1e-5
    out.square().sum().backward()
    expected.square().sum().backward()
    assert (f.grad - expected_f.grad).abs().max().item() <= 1e-5


def test_triton_older_than_the_tested_ones_is_not_chosen(monkeypatch):
    from get3dhuman import kernels

    oldest = ".".join(map(str, kernels.OLDEST_TRITON))
    assert kernels._unusable_reason(False, None) == "Triton is not installed"
    for version, older in [("3.1.0", True), ("3.0.0+git1234", True), (f"{oldest}.0", False), ("3.10.1", False),
                           ("4.0.0", False), ("unknown", False)]:
        expected = f"Triton {version} is older than {oldest}, the oldest the kernels are tested with"
        assert kernels._unusable_reason(True, version) == (expected if older else None), version
    reason = kernels._unusable_reason(True, "3.1.0")
    monkeypatch.setattr(kernels, "_UNUSABLE_REASON", reason)
    assert kernels.triton_unusable_reason() == reason
    assert kernels.device_unavailable_reason(torch.empty(1, device="meta")) == reason  # checked before the device
    decoder = ImplicitDecoder([7, 8, 1]).eval()
    features, points, calib = random_inputs(batch=1, channels=6, height=4, width=5, count=3)
    with torch.no_grad():
        assert backend_unavailable_reason("triton", decoder, features, points, calib) == reason
        with pytest.raises(ValueError, match="backend='triton' cannot run these inputs: Triton 3.1.0 is older"):
            query_field(decoder, features, points, calib, backend="triton")
