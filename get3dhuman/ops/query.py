"""Fused decoded queries: implicit decoder outputs at points, chunk by chunk.

`query_field` evaluates ``decoder(sample_pixel_aligned(features, points, calib))`` without
ever holding the [B, C, N] sampled tensor (or any [B, width, N] activation) for all N: points
are processed in chunks, point-major, and concatenations are replaced by split GEMMs.

Two exact variants:
- 'direct': sample the C feature channels per point, then run every layer as GEMMs.
- 'projected': bilinear sampling is linear, so the decoder's input-reading layers (layer 0
  and the re-concatenation layers) are applied to the feature map once, as a 1x1 projection
  to K channels; each point then samples the projected map with bias and depth term fused
  into the gather, and only the layers' hidden-input parts remain as GEMMs. It trades
  per-point multiply-adds (C*K) for a one-off B*H*W*C*K projection and a K-channel gather.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from get3dhuman.nn.implicit import ImplicitDecoder
from get3dhuman.ops.pixel_aligned import OFFICIAL_DEPTH_SCALE, check_sample_inputs, reference_sample_pixel_aligned

VARIANTS = ("auto", "direct", "projected")
# Points per chunk: activations of a chunk stay in cache-sized buffers on the CPU; GPUs need
# larger chunks to fill the device.
DEFAULT_CHUNK = {"cpu": 4096, "cuda": 262144}


class ProjectedInputs(NamedTuple):
    """A feature map with the decoder's input-reading layers applied (see module docstring).

    features: [B, K, H, W] channels-last, K = the summed widths of the input-reading layers.
    bias: [K] those layers' biases. depth_weight: [K] their weights on the depth feature.
    """

    features: torch.Tensor
    bias: torch.Tensor
    depth_weight: torch.Tensor


def project_inputs(decoder: ImplicitDecoder, features: torch.Tensor) -> ProjectedInputs:
    """Applies `decoder`'s input-reading layers to `features` [B, C, H, W] (C = in_channels - 1).

    Reuse the result across `query_field(..., projected=...)` calls on the same feature map.
    """
    _check_decoder(decoder, features)
    layers = decoder.input_layers()
    weights = torch.cat([decoder.input_weight(i) for i in layers])  # [K, C + 1]
    bias = torch.cat([decoder.filters[i].bias for i in layers])
    batch, channels, height, width = features.shape
    pixels = features.permute(0, 2, 3, 1).reshape(batch * height * width, channels)
    projected = (pixels @ weights[:, :channels].T).view(batch, height, width, -1).permute(0, 3, 1, 2)
    return ProjectedInputs(projected, bias, weights[:, channels].contiguous())


def _check_decoder(decoder, features) -> None:
    if not isinstance(decoder, ImplicitDecoder):
        raise TypeError(f"decoder must be a get3dhuman.nn.ImplicitDecoder, got {type(decoder).__name__}")
    if isinstance(features, torch.Tensor) and features.dim() == 4 and features.shape[1] + 1 != decoder.in_channels:
        raise ValueError(
            f"features must have C = decoder.in_channels - 1 = {decoder.in_channels - 1} channels, "
            f"got shape {tuple(features.shape)}"
        )
    weight = decoder.filters[0].weight
    if isinstance(features, torch.Tensor) and (weight.dtype != features.dtype or weight.device != features.device):
        raise ValueError(
            f"decoder parameters ({weight.dtype}, {weight.device}) must match features "
            f"({features.dtype}, {features.device}): move the decoder with .to()"
        )


def choose_variant(features: torch.Tensor, num_points: int) -> str:
    """The 'auto' rule: project when the per-point savings (N * C * K multiply-adds) outweigh the
    one-off projection (H * W * C * K), i.e. when there are more points than pixels per image."""
    return "projected" if num_points >= features.shape[2] * features.shape[3] else "direct"


def pixel_order(features: torch.Tensor, points: torch.Tensor, calib: torch.Tensor) -> torch.Tensor:
    """[B, N] permutation that visits points in image-row order of their projection, so
    consecutive gathers hit the same cache lines of the (channels-last) map."""
    height, width = features.shape[2:]
    ndc = points @ calib[:, :2, :3].transpose(1, 2) + calib[:, :2, 3].unsqueeze(1)  # [B, N, 2]
    x = ((ndc[..., 0] + 1) * ((width - 1) / 2)).clamp(-1, width).floor()
    y = ((ndc[..., 1] + 1) * ((height - 1) / 2)).clamp(-1, height).floor()
    # NaN points sort last; clamp keeps keys of far-away points small.
    return torch.argsort(torch.nan_to_num((y + 1) * (width + 2) + (x + 1), nan=float(width + 2) ** 2 * 4), dim=1)


def _run_chunk(decoder, sampled, projected_layout):
    """Runs the decoder on one chunk of point-major samples [M, width] -> [M, out_channels].

    projected_layout: None for 'direct' samples (the decoder input, C + 1 wide); for
    'projected' samples, {layer: column offset} of each input-reading layer's pre-activation.
    """
    y = sampled
    for i, layer in enumerate(decoder.filters):
        if projected_layout is not None and i in projected_layout:
            start = projected_layout[i]
            pre = sampled[:, start : start + layer.out_channels]
            if i > 0:
                pre = torch.addmm(pre, y, decoder.hidden_weight(i).T)
        elif i in decoder.concat_layers:  # direct: split the concatenation into two GEMMs
            pre = torch.addmm(layer.bias, y, decoder.hidden_weight(i).T)
            pre = pre.addmm_(sampled, decoder.input_weight(i).T)
        else:
            pre = torch.addmm(layer.bias, y, layer.weight[:, :, 0].T)
        y = decoder.activation(i, pre)
    return y


def query_field(
    decoder: ImplicitDecoder,
    features: torch.Tensor,
    points: torch.Tensor,
    calib: torch.Tensor,
    depth_scale: float = OFFICIAL_DEPTH_SCALE,
    *,
    variant: str = "auto",
    chunk_size: int | None = None,
    projected: ProjectedInputs | None = None,
    sort_points: bool | None = None,
) -> torch.Tensor:
    """Decoder output (occupancy, colour, ...) at points, fused and chunked.

    Args:
        decoder: an ImplicitDecoder with in_channels = C + 1.
        features: [B, C, H, W] pixel-aligned feature map.
        points: [B, N, 3]. calib: [B, 4, 4]. depth_scale: as in sample_pixel_aligned.
        variant: 'direct', 'projected' or 'auto' (see choose_variant).
        chunk_size: points per chunk (default per device type, DEFAULT_CHUNK).
        projected: a precomputed project_inputs(decoder, features) for the 'projected' variant.
        sort_points: evaluate points in image-row order (see pixel_order) and restore the
            given order at the end; worth it for scattered points. None: sort on the CPU
            when there are several chunks (GPU gathers are far less sensitive to order).

    Returns:
        [B, out_channels, N], equal (up to rounding) to
        ``decoder(reference_sample_pixel_aligned(features, points, calib, depth_scale))``.
        Differentiable with respect to features, points, calib and the decoder's parameters.
    """
    _check_decoder(decoder, features)
    check_sample_inputs(features, points, calib, depth_scale)
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if chunk_size is None:
        chunk_size = DEFAULT_CHUNK.get(features.device.type, DEFAULT_CHUNK["cuda"])
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    batch, num_points = points.shape[:2]
    if variant == "auto":
        variant = "projected" if projected is not None else choose_variant(features, num_points)

    if projected is not None and variant != "projected":
        raise ValueError(f"projected inputs are only used by variant='projected', got variant={variant!r}")

    layout = None
    if variant == "projected":
        widths = [decoder.filters[i].out_channels for i in decoder.input_layers()]
        projected = projected if projected is not None else project_inputs(decoder, features)
        expected = (features.shape[0], sum(widths), *features.shape[2:])
        if not isinstance(projected, ProjectedInputs) or tuple(projected.features.shape) != expected:
            raise ValueError(f"projected must be project_inputs(decoder, features) with features {list(expected)}")
        offsets = [sum(widths[:j]) for j in range(len(widths))]
        layout = dict(zip(decoder.input_layers(), offsets))
        source, bias, depth_weight = projected
    else:
        source, bias, depth_weight = features, None, None

    if sort_points is None:
        sort_points = features.device.type == "cpu" and num_points > 2 * chunk_size
    order = pixel_order(features, points, calib) if sort_points else None
    if order is not None:
        points = torch.gather(points, 1, order.unsqueeze(-1).expand(-1, -1, 3))

    # Inference writes each chunk into one preallocated output: collecting small chunk results
    # between large freed buffers fragments the CPU heap (peak RSS grew with N). Under
    # autograd, chunks are concatenated instead, whose backward is a cheap split.
    out = None if torch.is_grad_enabled() else features.new_empty(batch, num_points, decoder.out_channels)
    chunks = []
    for start in range(0, num_points, chunk_size):
        chunk = points[:, start : start + chunk_size]
        sampled = torch.ops.get3dhuman.pixel_aligned_sample(source, chunk, calib, float(depth_scale), bias, depth_weight)
        result = _run_chunk(decoder, sampled.flatten(0, 1), layout).view(batch, chunk.shape[1], -1)
        if out is None:
            chunks.append(result)
        elif order is None:
            out[:, start : start + chunk.shape[1]] = result
        else:
            out.scatter_(1, order[:, start : start + chunk.shape[1]].unsqueeze(-1).expand_as(result), result)
    if out is None:
        out = torch.cat(chunks, 1) if chunks else features.new_empty(batch, 0, decoder.out_channels)
        if order is not None:
            out = torch.zeros_like(out).scatter(1, order.unsqueeze(-1).expand_as(out), out)
    return out.transpose(1, 2)


def reference_query_field(
    decoder: ImplicitDecoder,
    features: torch.Tensor,
    points: torch.Tensor,
    calib: torch.Tensor,
    depth_scale: float = OFFICIAL_DEPTH_SCALE,
) -> torch.Tensor:
    """Pure-torch oracle of `query_field`: grid_sample then the Conv1d decoder, all N at once."""
    return decoder(reference_sample_pixel_aligned(features, points, calib, depth_scale))
