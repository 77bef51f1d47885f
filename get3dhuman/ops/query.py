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

Backends, in the order 'auto' tries them (BACKENDS); each says why it does not apply to given
inputs (backend_unavailable_reason), and `backend=` or the environment variable
GET3DHUMAN_QUERY_BACKEND picks one:
- 'cuda': the extension's CUDA sampling kernel, chunked, with the GEMMs in cuBLAS.
- 'triton': the whole query in one Triton kernel (get3dhuman.kernels.decoded_query);
  inference only (no backward); CPU tensors only under the Triton interpreter
  (TRITON_INTERPRET=1), and then only when asked for by name.
- 'cpu': the extension's C++ sampling kernel, chunked, with the GEMMs in torch.
- 'reference': reference_query_field (grid_sample + Conv1d over all N at once).
The CUDA kernel comes before Triton because it is the path verified on a GPU so far; the
order is to be revisited with GPU measurements (BENCHMARKS.md).
"""

from __future__ import annotations

import os
import typing
from typing import NamedTuple

import torch

from get3dhuman._checks import check_int
from get3dhuman._ext import compiled_backends
from get3dhuman.kernels import device_unavailable_reason as triton_device_reason
from get3dhuman.ops.backends import choose_backend
from get3dhuman.ops.decoder import LEAKY_SLOPE, DecoderWeights, decoder_weights
from get3dhuman.ops.pixel_aligned import (
    OFFICIAL_DEPTH_SCALE,
    check_sample_inputs,
    reference_sample_pixel_aligned,
)

VARIANTS = ("auto", "direct", "projected")
BACKENDS = ("cuda", "triton", "cpu", "reference")
BACKEND_ENV = "GET3DHUMAN_QUERY_BACKEND"
_TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# Dtypes the decoder's matrix products of the 'cpu' and 'cuda' backends can run in (`compute_dtype`).
COMPUTE_DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)
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


def project_inputs(decoder, features: torch.Tensor) -> ProjectedInputs:
    """Applies `decoder`'s (an ImplicitDecoder's or DecoderWeights') input-reading layers to
    `features` [B, C, H, W] (C = in_channels - 1), in the features' dtype (the decoder's
    parameters are cast to it).

    Reuse the result across `query_field(..., projected=...)` calls on the same feature map.
    """
    decoder = decoder_weights(decoder)
    _check_decoder(decoder, features)
    layers = decoder.input_layers()
    weights = torch.cat([decoder.input_weight(i) for i in layers]).to(features.dtype)  # [K, C + 1]
    bias = torch.cat([decoder.biases[i] for i in layers]).to(features.dtype)
    batch, channels, height, width = features.shape
    pixels = features.permute(0, 2, 3, 1).reshape(batch * height * width, channels)
    projected = (pixels @ weights[:, :channels].T).view(batch, height, width, -1).permute(0, 3, 1, 2)
    return ProjectedInputs(projected, bias, weights[:, channels].contiguous())


def _check_decoder(decoder: DecoderWeights, features) -> None:
    if isinstance(features, torch.Tensor) and features.dim() == 4 and features.shape[1] + 1 != decoder.in_channels:
        raise ValueError(
            f"features must have C = decoder.in_channels - 1 = {decoder.in_channels - 1} channels, "
            f"got shape {tuple(features.shape)}"
        )
    weight = decoder.weights[0]
    if isinstance(features, torch.Tensor) and weight.device != features.device:
        raise ValueError(
            f"decoder parameters must be on the device of features ({features.device}), got {weight.device}: "
            "move the decoder with .to()"
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


# Read once: torch.compile traces query_field and cannot trace the dispatcher queries behind it.
_COMPILED_BACKENDS = tuple(compiled_backends())


def backend_unavailable_reason(
    backend: str,
    decoder,
    features: torch.Tensor,
    points: torch.Tensor,
    calib: torch.Tensor,
    explicit: bool = True,
    compute_dtype: torch.dtype | None = None,
) -> str | None:
    """Why `backend` cannot evaluate query_field on these inputs (with `compute_dtype`, as
    query_field takes it), or None when it can.

    explicit: the backend was asked for by name; 'auto' (explicit=False) also skips the
    Triton interpreter, which exists for tests, not for speed.
    """
    decoder = decoder_weights(decoder)
    device = features.device.type
    if backend in ("reference", "triton"):
        if compute_dtype not in (None, features.dtype):
            return f"it computes in the features' dtype ({features.dtype}), not compute_dtype {compute_dtype}"
        weight_dtype = decoder.weights[0].dtype
        if weight_dtype != features.dtype:
            return f"it takes a decoder in the features' dtype ({features.dtype}), not {weight_dtype}"
    if backend == "reference":
        return None
    if backend in ("cuda", "cpu"):
        if device != backend:
            return f"the inputs are on {features.device}, not {backend}"
        return None if backend in _COMPILED_BACKENDS else f"the extension was built without {backend.upper()} kernels"
    if backend != "triton":
        raise ValueError(f"backend must be 'auto' or one of {BACKENDS}, got {backend!r}")
    reason = triton_device_reason(features, explicit)
    if reason is not None:
        return reason
    if features.dtype not in _TRITON_DTYPES:
        return f"the Triton kernel takes float16, bfloat16 or float32, not {features.dtype}"
    if torch.is_grad_enabled() and any(
        t.requires_grad for t in (features, points, calib, *decoder.tensors())
    ):
        return "the Triton kernel has no backward: gradients are required (use torch.no_grad() for inference)"
    return None


def select_backend(
    decoder,
    features: torch.Tensor,
    points: torch.Tensor,
    calib: torch.Tensor,
    backend: str | None = None,
    compute_dtype: torch.dtype | None = None,
) -> tuple[str, dict[str, str]]:
    """The backend query_field uses, and why each backend tried before it was skipped.

    backend: a name from BACKENDS, 'auto', or None (the environment variable
    GET3DHUMAN_QUERY_BACKEND, else 'auto'). A backend asked for by name that cannot run these
    inputs (with `compute_dtype`) raises ValueError with the reason.
    """
    requested = backend if backend is not None else (os.environ.get(BACKEND_ENV) or "auto")
    return choose_backend(requested, BACKENDS, lambda name, explicit: backend_unavailable_reason(
        name, decoder, features, points, calib, explicit, compute_dtype),
        "backend" if backend is not None else BACKEND_ENV)


def backend_report() -> dict:
    """For build_info(): the backend order, the GET3DHUMAN_QUERY_BACKEND override (or 'auto'),
    and the backend chosen for inference and for training queries on each device type here."""
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    chosen = {}
    for device in devices:
        weights = (torch.zeros(16, 3, 1, device=device), torch.zeros(1, 16, 1, device=device))
        decoder = DecoderWeights(weights, tuple(w[:, 0, 0] for w in weights), (3, 16, 1), (), "sigmoid")
        inputs = (torch.zeros(1, 2, 1, 1, device=device), torch.zeros(1, 1, 3, device=device), torch.eye(4, device=device)[None])
        with torch.no_grad():
            inference, skipped = select_backend(decoder, *inputs, backend="auto")
        training, _ = select_backend(decoder, *inputs, backend="auto")
        chosen[device] = {"inference": inference, "training": training, "skipped_for_inference": skipped}
    return {"order": list(BACKENDS), "override": os.environ.get(BACKEND_ENV) or "auto", "chosen": chosen}


class _LayerWeights(NamedTuple):
    """The GEMM operands one decoder layer needs, in the compute dtype and transposed for `x @ W`
    (None where the layer needs no such operand): the bias and whole weight of a plain layer, the
    part reading the previous layer, and the part reading the sampled features of a 'direct'
    re-concatenation layer."""

    bias: torch.Tensor | None
    full: torch.Tensor | None
    hidden: torch.Tensor | None
    input: torch.Tensor | None


def _gemm_weights(decoder: DecoderWeights, dtype: torch.dtype, projected_layout: dict | None) -> list[_LayerWeights]:
    """The operands of every layer in `dtype`, cast once per query (views when it is the weights'
    own); projected_layout as for `_run_chunk`."""
    weights = []
    for i, (weight, bias) in enumerate(zip(decoder.weights, decoder.biases)):
        projected = projected_layout is not None and i in projected_layout
        split = not projected and i in decoder.concat_layers
        plain = not projected and not split
        weights.append(_LayerWeights(
            bias.to(dtype) if not projected else None,
            weight[:, :, 0].T.to(dtype) if plain else None,
            decoder.hidden_weight(i).T.to(dtype) if i > 0 and not plain else None,
            decoder.input_weight(i).T.to(dtype) if split else None))
    return weights


def _run_chunk(decoder: DecoderWeights, sampled, projected_layout, weights: list[_LayerWeights], compute_dtype: torch.dtype):
    """Runs the decoder on one chunk of point-major samples [M, width] -> [M, out_channels], the
    matrix products in `compute_dtype` (operands `_gemm_weights`), the output in the dtype of `sampled`.

    projected_layout: None for 'direct' samples (the decoder input, C + 1 wide); for
    'projected' samples, {layer: column offset} of each input-reading layer's pre-activation.
    """
    # Without autograd every pre-activation is a buffer of its own (layer 0's a slice of
    # `samples` no later layer reads), so the activations run in place.
    inplace = not torch.is_grad_enabled()
    samples = sampled.to(compute_dtype)
    y = samples
    last = decoder.num_layers - 1
    for i, w in enumerate(weights):
        if projected_layout is not None and i in projected_layout:
            start = projected_layout[i]
            pre = samples[:, start : start + decoder.channels[i + 1]]
            if i > 0:
                pre = torch.addmm(pre, y, w.hidden)
        elif i in decoder.concat_layers:  # direct: split the concatenation into two GEMMs
            pre = torch.addmm(w.bias, y, w.hidden).addmm_(samples, w.input)
        else:
            pre = torch.addmm(w.bias, y, w.full)
        if i == last:  # the output activation in the output dtype
            pre = pre.to(sampled.dtype)
        y = decoder.activation(i, pre, inplace)
    return y


def query_field(
    decoder,
    features: torch.Tensor,
    points: torch.Tensor,
    calib: torch.Tensor,
    depth_scale: float = OFFICIAL_DEPTH_SCALE,
    *,
    variant: str = "auto",
    chunk_size: int | None = None,
    projected: ProjectedInputs | None = None,
    sort_points: bool | None = None,
    backend: str | None = None,
    compute_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Decoder output (occupancy, colour, ...) at points, fused and chunked.

    Args:
        decoder: an ImplicitDecoder (or its DecoderWeights) with in_channels = C + 1.
        features: [B, C, H, W] pixel-aligned feature map.
        points: [B, N, 3]. calib: [B, 4, 4]. depth_scale: as in sample_pixel_aligned.
        variant: 'direct', 'projected' or 'auto' (see choose_variant).
        chunk_size: points per chunk (default per device type, DEFAULT_CHUNK).
        projected: a precomputed project_inputs(decoder, features) for the 'projected' variant.
        sort_points: evaluate points in image-row order (see pixel_order) and restore the
            given order at the end; worth it for scattered points. None: sort on the CPU
            when there are several chunks (GPU gathers are far less sensitive to order).
        backend: 'auto', a name from BACKENDS, or None for the GET3DHUMAN_QUERY_BACKEND
            environment variable (default 'auto'); see select_backend. chunk_size and
            sort_points apply to 'cpu' and 'cuda'; 'reference' ignores variant.
        compute_dtype: dtype of the decoder's matrix products on the 'cpu' and 'cuda' backends
            (one of COMPUTE_DTYPES; None: the features' dtype; autocast is ignored), with the
            sampling and the output in the features' dtype. The decoder's parameters are cast
            to it, so the decoder may have another dtype than the features (a bfloat16 decoder
            with float32 features and points). torch.bfloat16 trades about 1e-2 of error in
            the outputs for speed where the hardware has bf16 matrix units (CPUs with
            AVX512-BF16 or AMX, GPUs); BENCHMARKS.md has figures. Other backends take only the
            features' dtype, for the products and the decoder.

    Returns:
        [B, out_channels, N], equal (up to rounding) to
        ``decoder(reference_sample_pixel_aligned(features, points, calib, depth_scale))``.
        Differentiable with respect to features, points, calib and the decoder's parameters.
    """
    decoder = decoder_weights(decoder)
    _check_decoder(decoder, features)
    check_sample_inputs(features, points, calib, depth_scale)
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if chunk_size is None:
        chunk_size = DEFAULT_CHUNK.get(features.device.type, DEFAULT_CHUNK["cuda"])
    chunk_size = check_int(chunk_size, "chunk_size", 1)
    num_points = points.shape[1]
    if variant == "auto":
        variant = "projected" if projected is not None else choose_variant(features, num_points)

    if projected is not None and variant != "projected":
        raise ValueError(f"projected inputs are only used by variant='projected', got variant={variant!r}")
    if compute_dtype is not None and compute_dtype not in COMPUTE_DTYPES:
        raise ValueError(f"compute_dtype must be None or one of {', '.join(map(str, COMPUTE_DTYPES))}, "
                         f"got {compute_dtype!r}")
    backend, _ = select_backend(decoder, features, points, calib, backend, compute_dtype)
    compute_dtype = features.dtype if compute_dtype is None else compute_dtype
    # compute_dtype alone sets the products' precision: autocast would also narrow the
    # projection, whose map must stay in the dtype of the points it is sampled at.
    with torch.autocast(features.device.type, enabled=False):
        if backend == "reference":
            return reference_query_field(decoder, features, points, calib, depth_scale)
        return _fused_query(decoder, features, points, calib, depth_scale, variant, chunk_size, projected,
                            sort_points, backend, compute_dtype)


def _fused_query(decoder, features, points, calib, depth_scale, variant, chunk_size, projected, sort_points,
                 backend, compute_dtype) -> torch.Tensor:
    """query_field's 'cpu', 'cuda' and 'triton' backends, on checked inputs: [B, out_channels, N]."""
    batch, num_points = points.shape[:2]
    layout = None
    if variant == "projected":
        widths = [decoder.channels[i + 1] for i in decoder.input_layers()]
        projected = projected if projected is not None else project_inputs(decoder, features)
        expected = (features.shape[0], sum(widths), *features.shape[2:])
        if not isinstance(projected, ProjectedInputs) or tuple(projected.features.shape) != expected:
            raise ValueError(f"projected must be project_inputs(decoder, features) with features {list(expected)}")
        offsets = [sum(widths[:j]) for j in range(len(widths))]
        layout = dict(zip(decoder.input_layers(), offsets))
        source, bias, depth_weight = projected
    else:
        source, bias, depth_weight = features, None, None

    if backend == "triton":
        return _triton_query(decoder, source, points, calib, depth_scale, variant == "projected")

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
    weights = _gemm_weights(decoder, compute_dtype, layout)
    for start in range(0, num_points, chunk_size):
        chunk = points[:, start : start + chunk_size]
        sampled = torch.ops.get3dhuman.pixel_aligned_sample(source, chunk, calib, float(depth_scale), bias, depth_weight)
        result = _run_chunk(decoder, sampled.flatten(0, 1), layout, weights, compute_dtype)
        result = result.view(batch, chunk.shape[1], -1)
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


@torch.library.custom_op("get3dhuman::decoded_query_triton", mutates_args=())
def _decoded_query_triton(
    source: torch.Tensor,
    points: torch.Tensor,
    calib: torch.Tensor,
    input_weight: torch.Tensor,
    depth_weight: torch.Tensor,
    bias: torch.Tensor,
    hidden: torch.Tensor,
    widths: typing.Sequence[int],  # typing's: torch 2.5's schema inference knows no list[int]
    concat_layers: typing.Sequence[int],
    last_op: int,
    depth_scale: float,
    projected: bool,
) -> torch.Tensor:
    """The Triton kernel as an operator that torch.compile treats as one opaque call: [B, N, out].

    A custom_op rather than torch.library.triton_op: tracing into the kernel (triton_op) reads
    data pointers under the Triton interpreter, so CPU CI could not compile it; the kernel is
    the whole query, so there is nothing around it for inductor to fuse."""
    from get3dhuman.kernels.decoded_query import PackedDecoder, decoded_query

    packed = PackedDecoder(input_weight, depth_weight, bias, hidden, widths, concat_layers, last_op, LEAKY_SLOPE)
    return decoded_query(source, points, calib, packed, depth_scale, projected)


@_decoded_query_triton.register_fake
def _decoded_query_triton_fake(source, points, calib, input_weight, depth_weight, bias, hidden, widths, concat_layers, last_op, depth_scale, projected):
    return source.new_empty(source.shape[0], points.shape[1], widths[-1])


def triton_operands(decoder: DecoderWeights) -> tuple:
    """The decoder arguments of the `get3dhuman::decoded_query_triton` operator (after source,
    points, calib): the input-reading layers' weights stacked ([K, C] features, [K] depth), every
    bias in one buffer, each layer i >= 1's hidden weight transposed and flattened into one
    buffer, the layers' widths, the re-concatenation layers and the kernel's last-op code."""
    from get3dhuman.kernels.decoded_query import LAST_OPS as KERNEL_LAST_OPS

    channels = decoder.in_channels - 1
    inputs = torch.cat([decoder.input_weight(i) for i in decoder.input_layers()]).detach()  # [K, C + 1]
    hidden = [decoder.hidden_weight(i).detach().T.reshape(-1) for i in range(1, decoder.num_layers)]
    return (inputs[:, :channels].contiguous(), inputs[:, channels].contiguous(),
            torch.cat([bias.detach() for bias in decoder.biases]),
            torch.cat(hidden) if hidden else decoder.weights[0].new_empty(0),
            list(decoder.channels[1:]), list(decoder.concat_layers), KERNEL_LAST_OPS[decoder.last_op])


def _triton_query(decoder: DecoderWeights, source, points, calib, depth_scale, projected) -> torch.Tensor:
    """query_field's 'triton' backend: [B, out_channels, N]."""
    out = _decoded_query_triton(source, points, calib, *triton_operands(decoder), float(depth_scale), projected)
    return out.transpose(1, 2)


def reference_query_field(
    decoder,
    features: torch.Tensor,
    points: torch.Tensor,
    calib: torch.Tensor,
    depth_scale: float = OFFICIAL_DEPTH_SCALE,
) -> torch.Tensor:
    """Pure-torch oracle of `query_field`: grid_sample then the Conv1d decoder, all N at once."""
    return decoder_weights(decoder)(reference_sample_pixel_aligned(features, points, calib, depth_scale))
