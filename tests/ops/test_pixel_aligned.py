"""sample_pixel_aligned (CPU and CUDA kernels) against the grid_sample reference."""

import pytest
import torch
from inputs import CUDA_READY, random_inputs

from get3dhuman.ops import OFFICIAL_DEPTH_SCALE, reference_sample_pixel_aligned, sample_pixel_aligned

op = torch.ops.get3dhuman.pixel_aligned_sample


def test_official_depth_scale():
    assert OFFICIAL_DEPTH_SCALE == pytest.approx(1.28)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_forward_matches_reference(device, dtype, tol):
    features, points, calib = random_inputs(batch=3, channels=6, height=11, width=8, count=500, dtype=dtype, device=device)
    out = sample_pixel_aligned(features, points, calib, 0.7)
    expected = reference_sample_pixel_aligned(features, points, calib, 0.7)
    assert out.shape == (3, 7, 500)
    assert (out - expected).abs().max().item() <= tol
    # Some points project outside the image: zero padding must be exercised.
    assert (expected[:, :-1].abs().sum(1) == 0).any()


def test_points_on_and_beyond_the_border(device):
    height, width = 5, 4
    features = torch.randn(1, 3, height, width, device=device)
    calib = torch.eye(4, device=device).unsqueeze(0)
    # ndc -1 and 1 are the first and last pixel centres (align_corners=True); pixel centres,
    # half-way points, and points just and far outside.
    coords = torch.tensor([-1.0, -0.5, 0.0, 1 / 3, 1.0, 1.0 + 1e-4, 1.2, -1.2, 5.0, -1e20, 1e20])
    xs, ys = torch.meshgrid(coords, coords, indexing="ij")
    points = torch.stack([xs.flatten(), ys.flatten(), torch.linspace(-1, 1, xs.numel())], -1).unsqueeze(0).to(device)
    out = sample_pixel_aligned(features, points, calib)
    expected = reference_sample_pixel_aligned(features, points, calib)
    assert (out - expected).abs().max().item() <= 1e-5
    corner = sample_pixel_aligned(features, torch.tensor([[[1.0, 1.0, 0.0]]], device=device), calib)
    assert torch.allclose(corner[0, :3, 0], features[0, :, -1, -1])


def test_non_finite_points_sample_zero(device):
    features = torch.randn(1, 2, 4, 4, device=device)
    points = torch.tensor([[[float("nan"), 0.0, 0.0], [0.0, float("inf"), 0.0]]], device=device)
    out = sample_pixel_aligned(features, points, torch.eye(4, device=device).unsqueeze(0))
    assert torch.equal(out[0, :2], torch.zeros(2, 2, device=device))


def test_bias_and_depth_weight_are_fused(device):
    features, points, calib = random_inputs(channels=4, device=device)
    bias = torch.randn(4, device=device)
    depth_weight = torch.randn(4, device=device)
    out = op(features, points, calib, 1.5, bias, depth_weight)
    plain = reference_sample_pixel_aligned(features, points, calib, 1.5).transpose(1, 2)
    depth = plain[..., -1:]
    expected = torch.cat([plain[..., :-1] + bias + depth * depth_weight, depth], -1)
    assert (out - expected).abs().max().item() <= 1e-5


def test_batch_uses_each_calibration(device):
    features, points, calib = random_inputs(batch=2, device=device)
    features = features[:1].expand(2, -1, -1, -1).contiguous()
    points = points[:1].expand(2, -1, -1).contiguous()
    out = sample_pixel_aligned(features, points, calib)
    assert not torch.allclose(out[0], out[1])
    for b in range(2):
        single = sample_pixel_aligned(features[b : b + 1], points[b : b + 1], calib[b : b + 1])
        assert torch.equal(out[b], single[0])


def test_non_contiguous_inputs(device):
    features, points, calib = random_inputs(batch=2, channels=6, count=300, device=device)
    strided_features = torch.stack([features, -features], 2).flatten(1, 2)[:, ::2]  # channel stride 2
    strided_points = points.transpose(1, 2).contiguous().transpose(1, 2)
    strided_calib = calib.transpose(1, 2).contiguous().transpose(1, 2)
    channels_last = features.contiguous(memory_format=torch.channels_last)
    expected = reference_sample_pixel_aligned(features, points, calib)
    for args in [(strided_features, strided_points, strided_calib), (channels_last, points, calib)]:
        assert not all(t.is_contiguous() for t in args)
        assert (sample_pixel_aligned(*args) - expected).abs().max().item() <= 1e-5


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reduced_precision(device, dtype):
    features, points, calib = random_inputs(dtype=torch.float32, device=device)
    out = sample_pixel_aligned(features.to(dtype), points.to(dtype), calib.to(dtype))
    expected = reference_sample_pixel_aligned(features, points, calib)
    assert out.dtype == dtype
    assert (out.float() - expected).abs().max().item() <= 0.05


def _grads(fn, features, points, calib, grad_out):
    features, points, calib = (t.detach().requires_grad_() for t in (features, points, calib))
    (fn(features, points, calib, 0.9) * grad_out).sum().backward()
    return features.grad, points.grad, calib.grad


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-4), (torch.float64, 1e-10)])
def test_backward_matches_reference(device, dtype, tol):
    features, points, calib = random_inputs(batch=2, channels=5, count=400, dtype=dtype, device=device)
    grad_out = torch.randn(2, 6, 400, dtype=dtype, device=device)
    ours = _grads(sample_pixel_aligned, features, points, calib, grad_out)
    expected = _grads(reference_sample_pixel_aligned, features, points, calib, grad_out)
    for name, a, b in zip(("features", "points", "calib"), ours, expected):
        assert (a - b).abs().max().item() <= tol * max(1.0, b.abs().max().item()), name


def test_points_only_gradient(device):
    features, points, calib = random_inputs(device=device)
    points.requires_grad_()
    sample_pixel_aligned(features, points, calib).sum().backward()
    expected = points.detach().requires_grad_()
    reference_sample_pixel_aligned(features, expected, calib).sum().backward()
    assert (points.grad - expected.grad).abs().max().item() <= 1e-4


def test_gradcheck_float64(device):
    features, points, calib = random_inputs(batch=2, channels=3, height=4, width=5, count=12, dtype=torch.float64, device=device)
    bias = torch.randn(3, dtype=torch.float64, device=device)
    depth_weight = torch.randn(3, dtype=torch.float64, device=device)
    # Keep points away from cell edges, where bilinear sampling is not differentiable.
    points = points * 0.9
    inputs = [t.requires_grad_() for t in (features, points, calib, bias, depth_weight)]
    assert torch.autograd.gradcheck(lambda f, p, c, b, w: op(f, p, c, 1.3, b, w), inputs)
    assert torch.autograd.gradcheck(lambda f, p, c: op(f, p, c, 1.3), inputs[:3])


def test_backward_is_deterministic_on_cpu():
    features, points, calib = random_inputs(channels=40, count=3000)
    grad = torch.randn(2, 3000, 41)
    first = torch.ops.get3dhuman.pixel_aligned_sample_backward(grad, features, points, calib, True)
    second = torch.ops.get3dhuman.pixel_aligned_sample_backward(grad, features, points, calib, True)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_opcheck(device):
    features, points, calib = random_inputs(batch=2, channels=3, height=4, width=5, count=16, device=device)
    features.requires_grad_()
    points.requires_grad_()
    bias = torch.randn(3, device=device, requires_grad=True)
    depth_weight = torch.randn(3, device=device, requires_grad=True)
    torch.library.opcheck(op, (features, points, calib, 1.28))
    torch.library.opcheck(op, (features, points, calib, 1.28, bias, depth_weight))
    grad = torch.randn(2, 16, 4, device=device)
    for needs_features in (True, False):
        torch.library.opcheck(
            torch.ops.get3dhuman.pixel_aligned_sample_backward,
            (grad, features.detach(), points.detach(), calib, needs_features),
        )


def test_torch_compile_fullgraph(device):
    features, points, calib = random_inputs(device=device)

    def occupancy_like(f, p, c):
        return torch.sigmoid(sample_pixel_aligned(f, p, c).sum(1))

    compiled = torch.compile(occupancy_like, fullgraph=True, backend="aot_eager")
    f = features.clone().requires_grad_()
    out = compiled(f, points, calib)
    expected = occupancy_like(features, points, calib)
    assert (out - expected).abs().max().item() <= 1e-6
    out.sum().backward()
    assert f.grad is not None and f.grad.abs().sum() > 0


def test_empty_point_set(device):
    features, points, calib = random_inputs(count=0, device=device)
    assert sample_pixel_aligned(features, points, calib).shape == (2, 6, 0)


def _mutations():
    yield "features", lambda f, p, c: (f[0], p, c)
    yield "features", lambda f, p, c: (f.to(torch.int32), p, c)
    yield "features", lambda f, p, c: (f[:, :, :0], p, c)
    yield "points", lambda f, p, c: (f, p[..., :2], c)
    yield "points", lambda f, p, c: (f, p[:1], c)
    yield "points", lambda f, p, c: (f, p.double(), c)
    yield "points", lambda f, p, c: (f, p.tolist(), c)
    yield "calib", lambda f, p, c: (f, p, c[:, :3])
    yield "calib", lambda f, p, c: (f, p, c[:1])
    yield "calib", lambda f, p, c: (f, p, c.half())


@pytest.mark.parametrize("name, mutate", list(_mutations()))
def test_bad_input_names_the_argument(name, mutate):
    features, points, calib = random_inputs()
    with pytest.raises((ValueError, TypeError), match=name):
        sample_pixel_aligned(*mutate(features, points, calib))


def test_bad_depth_scale():
    with pytest.raises(ValueError, match="depth_scale"):
        sample_pixel_aligned(*random_inputs(), float("nan"))


def test_direct_op_call_checks_in_cpp():
    """The registered op guards memory safety itself, without the Python wrapper."""
    features, points, calib = random_inputs()
    with pytest.raises(ValueError, match="points"):
        torch.ops.get3dhuman.pixel_aligned_sample.default(features, points[:, :, :2], calib, 1.0, None, None)
    with pytest.raises(ValueError, match="bias"):
        torch.ops.get3dhuman.pixel_aligned_sample.default(features, points, calib, 1.0, torch.zeros(2), torch.zeros(2))


@pytest.mark.skipif(not CUDA_READY, reason="needs a CUDA GPU and the CUDA kernels")
def test_mixed_devices_name_the_argument():
    features, points, calib = random_inputs()
    with pytest.raises(ValueError, match="points"):
        sample_pixel_aligned(features.cuda(), points, calib.cuda())


@pytest.mark.skipif(not CUDA_READY, reason="needs a CUDA GPU and the CUDA kernels")
def test_cuda_matches_cpu():
    features, points, calib = random_inputs(batch=2, channels=64, height=32, width=32, count=5000)
    cpu = sample_pixel_aligned(features, points, calib)
    cuda = sample_pixel_aligned(features.cuda(), points.cuda(), calib.cuda()).cpu()
    assert (cpu - cuda).abs().max().item() <= 1e-5
