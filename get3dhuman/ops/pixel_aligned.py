"""Pixel-aligned sampling (the PIFu formulation) as a custom op with a pure-torch reference.

A point p is projected orthographically by a calibration matrix: ndc = calib[:3, :3] @ p +
calib[:3, 3] (the 4th row is ignored). The feature map is sampled bilinearly at ndc.xy with
grid_sample's conventions (align_corners=True, zero padding: corners outside the map count
as zero), and the depth feature ndc.z * depth_scale is appended.

The op `torch.ops.get3dhuman.pixel_aligned_sample` returns point-major [B, N, C + 1] samples
(contiguous per point, as the fused decoders consume them); `sample_pixel_aligned` returns the
channel-major [B, C + 1, N] view that Conv1d decoders expect.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from get3dhuman._checks import is_finite_number

# The authors' depth feature: z_ndc * (512 // 2) / 200.
OFFICIAL_DEPTH_SCALE = (512 // 2) / 200

_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_sample_inputs(features, points, calib, depth_scale, bias=None, depth_weight=None) -> None:
    """Validates the arguments of pixel-aligned sampling; raises TypeError/ValueError naming
    the argument and what was expected."""
    for name, value in (("features", features), ("points", points), ("calib", calib)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if features.dim() != 4:
        raise ValueError(f"features must be [B, C, H, W], got shape {tuple(features.shape)}")
    if features.dtype not in _DTYPES:
        raise TypeError(f"features must be float16, bfloat16, float32 or float64, got {features.dtype}")
    batch, channels, height, width = features.shape
    if height < 1 or width < 1:
        raise ValueError(f"features must have a non-empty image, got shape {tuple(features.shape)}")
    if points.dim() != 3 or points.shape[0] != batch or points.shape[2] != 3:
        raise ValueError(f"points must be [B, N, 3] with B = {batch}, got shape {tuple(points.shape)}")
    if calib.shape != (batch, 4, 4):
        raise ValueError(f"calib must be [B, 4, 4] with B = {batch}, got shape {tuple(calib.shape)}")
    optional = (("bias", bias), ("depth_weight", depth_weight))
    for name, value in optional:
        if value is not None and (not isinstance(value, torch.Tensor) or value.shape != (channels,)):
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"{name} must be a [C] = [{channels}] tensor, got {shape}")
    if (bias is None) != (depth_weight is None):
        raise ValueError("bias and depth_weight must be given together")
    for name, value in (("points", points), ("calib", calib), *optional):
        if value is None:
            continue
        if value.dtype != features.dtype:
            raise TypeError(f"{name} must have the dtype of features ({features.dtype}), got {value.dtype}")
        if value.device != features.device:
            raise ValueError(f"{name} must be on the device of features ({features.device}), got {value.device}")
    if not is_finite_number(depth_scale):
        raise ValueError(f"depth_scale must be a finite float, got {depth_scale!r}")


@torch.library.register_fake("get3dhuman::pixel_aligned_sample")
def _sample_fake(features, points, calib, depth_scale, bias=None, depth_weight=None):
    check_sample_inputs(features, points, calib, depth_scale, bias, depth_weight)
    return features.new_empty(features.shape[0], points.shape[1], features.shape[1] + 1)


@torch.library.register_fake("get3dhuman::pixel_aligned_sample_backward")
def _sample_backward_fake(grad_out, features, points, calib, features_requires_grad):
    grad_features = torch.empty_like(features, memory_format=torch.channels_last) if features_requires_grad else None
    return grad_features, points.new_empty(points.shape[0], points.shape[1], 2)


def _setup_sample_context(ctx, inputs, output):
    features, points, calib, depth_scale, bias, depth_weight = inputs
    ctx.save_for_backward(features, points, calib, depth_weight)
    ctx.depth_scale = depth_scale


def _sample_backward(ctx, grad):
    features, points, calib, depth_weight = ctx.saved_tensors
    # Defaulted arguments that were not passed are missing from needs_input_grad.
    needs = tuple(ctx.needs_input_grad) + (False,) * (6 - len(ctx.needs_input_grad))
    features_grad, points_grad, calib_grad, _, bias_grad, depth_weight_grad = needs
    channels = features.shape[1]
    grad_features, grad_uv = torch.ops.get3dhuman.pixel_aligned_sample_backward(
        grad, features, points, calib, features_grad
    )
    grad_sampled = grad[..., :channels]
    # The depth feature enters the last column and, through depth_weight, every channel.
    grad_depth = grad[..., channels]
    if depth_weight is not None:
        grad_depth = grad_depth + grad_sampled @ depth_weight
    grad_ndc = torch.cat([grad_uv, (grad_depth * ctx.depth_scale).unsqueeze(-1)], -1)  # [B, N, 3]
    grad_points = grad_ndc @ calib[:, :3, :3] if points_grad else None
    grad_calib = None
    if calib_grad:
        affine = torch.cat([grad_ndc.transpose(1, 2) @ points, grad_ndc.sum(1).unsqueeze(-1)], -1)
        grad_calib = F.pad(affine, (0, 0, 0, 1))  # the 4th row is unused
    grad_bias = grad_sampled.sum((0, 1)) if bias_grad else None
    grad_depth_weight = None
    if depth_weight_grad:
        depth = (points @ calib[:, 2, :3].unsqueeze(-1)).squeeze(-1) + calib[:, 2, 3:]
        grad_depth_weight = torch.einsum("bnk,bn->k", grad_sampled, depth * ctx.depth_scale)
    return grad_features, grad_points, grad_calib, None, grad_bias, grad_depth_weight


torch.library.register_autograd(
    "get3dhuman::pixel_aligned_sample", _sample_backward, setup_context=_setup_sample_context
)


def sample_pixel_aligned(
    features: torch.Tensor,
    points: torch.Tensor,
    calib: torch.Tensor,
    depth_scale: float = OFFICIAL_DEPTH_SCALE,
) -> torch.Tensor:
    """Samples a feature map at projected points and appends the depth feature.

    Args:
        features: [B, C, H, W] feature map (any memory format; channels-last is fastest).
        points: [B, N, 3] points.
        calib: [B, 4, 4] orthographic calibration (rows 0-2 used).
        depth_scale: factor of the depth feature z_ndc * depth_scale.

    Returns:
        [B, C + 1, N]: the bilinear samples, then the depth feature (a transposed view of
        point-major storage). Differentiable with respect to features, points and calib.
    """
    check_sample_inputs(features, points, calib, depth_scale)
    return torch.ops.get3dhuman.pixel_aligned_sample(features, points, calib, float(depth_scale)).transpose(1, 2)


def reference_sample_pixel_aligned(
    features: torch.Tensor,
    points: torch.Tensor,
    calib: torch.Tensor,
    depth_scale: float = OFFICIAL_DEPTH_SCALE,
) -> torch.Tensor:
    """Pure-torch oracle of `sample_pixel_aligned` (grid_sample, the authors' way): [B, C + 1, N]."""
    check_sample_inputs(features, points, calib, depth_scale)
    ndc = torch.baddbmm(calib[:, :3, 3:], calib[:, :3, :3], points.transpose(1, 2))  # [B, 3, N]
    grid = ndc[:, :2].transpose(1, 2).unsqueeze(2)  # [B, N, 1, 2]
    sampled = F.grid_sample(features, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return torch.cat([sampled[..., 0], ndc[:, 2:] * float(depth_scale)], 1)
