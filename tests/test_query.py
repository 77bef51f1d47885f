"""query_field (both fused variants) against the grid_sample + Conv1d reference."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from inputs import random_inputs

from get3dhuman.nn import ImplicitDecoder
from get3dhuman.ops import choose_variant, project_inputs, query_field, reference_query_field

DECODERS = {
    "shape": ImplicitDecoder.official_shape,
    "texture": ImplicitDecoder.official_texture,
    "small": lambda: ImplicitDecoder([9, 16, 12, 8, 2], concat_layers=(1, 3), last_op="tanh"),
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
def test_forward_matches_reference(device, name, variant):
    decoder, features, points, calib = _setup(name, device)
    with torch.no_grad():
        expected = reference_query_field(decoder, features, points, calib)
        # A chunk size that leaves a remainder exercises the chunk boundaries.
        out = query_field(decoder, features, points, calib, variant=variant, chunk_size=256)
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
    with pytest.raises(ValueError, match="decoder parameters"):
        query_field(decoder, features.double(), points.double(), calib.double())
    with pytest.raises(ValueError, match="variant"):
        query_field(decoder, features, points, calib, variant="fast")
    with pytest.raises(ValueError, match="chunk_size"):
        query_field(decoder, features, points, calib, chunk_size=0)
    with pytest.raises(ValueError, match="points"):
        query_field(decoder, features, points[:1], calib)


_PEAK_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys, torch
    from get3dhuman.nn import ImplicitDecoder
    from get3dhuman.ops import query_field, reference_query_field
    torch.manual_seed(0)
    decoder = ImplicitDecoder.official_shape()
    features = torch.randn(1, 256, 128, 128)
    points = torch.rand(1, int(sys.argv[2]), 3) * 2 - 1
    calib = torch.eye(4).unsqueeze(0)
    fn = reference_query_field if sys.argv[1] == "reference" else query_field
    with torch.no_grad():
        fn(decoder, features, points[:, :4096], calib)  # warm up allocator and thread pools
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out = fn(decoder, features, points, calib)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_kib": after - before, "checksum": float(out.double().sum())}))
    """
)


def peak_memory_kib(which, count, workdir):
    """Extra peak resident memory (KiB) of one query in a fresh process, and its checksum.
    Runs in `workdir` so that the installed package, not the source tree, is imported."""
    result = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT, which, str(count)], capture_output=True, text=True, check=True, cwd=workdir
    )
    return json.loads(result.stdout)


@pytest.mark.slow
def test_fused_query_never_holds_all_samples(tmp_path):
    """At official sizes the fused query's extra peak memory is a small fraction of the
    reference's, which holds [B, C, N] samples and activations for every point."""
    count = 1 << 18
    reference = peak_memory_kib("reference", count, tmp_path)
    fused = peak_memory_kib("fused", count, tmp_path)
    # The reference holds >= 257 + 512 + 769 floats per point; the fused query a chunk's worth.
    assert reference["peak_kib"] * 1024 >= count * 4 * (257 + 512 + 769)
    assert fused["peak_kib"] * 4 <= reference["peak_kib"]
    assert fused["checksum"] == pytest.approx(reference["checksum"], rel=1e-5)
