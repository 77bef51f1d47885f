"""Fused StyleGAN2 layer helpers in Triton.

- bias_act_kernel: x + bias (over dim 1), leaky ReLU (optional), times gain, clamped, in one
  pass over memory instead of four; the same kernel in DERIVATIVE mode gives the gradient
  grad * d(bias_act)/dx, recomputed from x (so the gradient of the gradient, which R1 needs,
  is the same kernel again).
- modulate_kernel: StyleGAN2 weight modulation and demodulation, w[b, o] = weight[o] *
  styles[b] scaled to unit norm, in two passes over each output row instead of four tensors.

Launchers take contiguous tensors and do no checking (get3dhuman.ops.stylegan2 does).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

ACTIVATIONS = {"linear": 0, "lrelu": 1}
BLOCK = 1024
ROW_BLOCK = 512


def _compute_type(dtype: torch.dtype):
    """Arithmetic in fp32 (fp64 for fp64 tensors, so that gradcheck can test the kernels)."""
    return tl.float64 if dtype == torch.float64 else tl.float32


@triton.jit
def bias_act_kernel(
    x_ptr, bias_ptr, grad_ptr, out_ptr, numel, channels, inner, gain, clamp,
    ACTIVATION: tl.constexpr, SLOPE: tl.constexpr, DERIVATIVE: tl.constexpr, COMPUTE: tl.constexpr, BLOCK: tl.constexpr,
):
    """x [outer, channels, inner] flat. Forward: out = clamp((act(x + bias)) * gain).
    DERIVATIVE: out = grad * d out / d x, with torch's conventions (leaky ReLU slope at 0,
    clamp passing the gradient where the value lies within [-clamp, clamp]).
    COMPUTE: the arithmetic type (fp32, or fp64 for fp64 tensors)."""
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < numel
    channel = (offsets // inner) % channels
    pre = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(COMPUTE)
    pre += tl.load(bias_ptr + channel, mask=mask, other=0.0).to(COMPUTE)
    value = pre
    if ACTIVATION == 1:
        value = tl.where(pre > 0, pre, pre * SLOPE)
    value = value * gain
    if DERIVATIVE:
        slope = gain
        if ACTIVATION == 1:
            slope = tl.where(pre > 0, gain, gain * SLOPE)
        inside = (value >= -clamp) & (value <= clamp)
        grad = tl.load(grad_ptr + offsets, mask=mask, other=0.0).to(COMPUTE)
        result = tl.where(inside, grad * slope, 0.0)
    else:
        result = tl.minimum(tl.maximum(value, -clamp), clamp)
    tl.store(out_ptr + offsets, result.to(out_ptr.dtype.element_ty), mask=mask)


def bias_act(x: torch.Tensor, bias: torch.Tensor, activation: str, slope: float, gain: float, clamp: float, grad: torch.Tensor | None = None) -> torch.Tensor:
    """Runs bias_act_kernel on contiguous x [B, C, ...] and bias [C]: the forward value, or with
    `grad` (shaped like x) the gradient with respect to x. clamp: inf for none."""
    out = torch.empty_like(x)
    numel = x.numel()
    if numel == 0:
        return out
    inner = x[0, 0].numel() if x.dim() > 2 else 1
    bias_act_kernel[(triton.cdiv(numel, BLOCK),)](
        x, bias, x if grad is None else grad, out, numel, x.shape[1], inner, float(gain), float(clamp),
        ACTIVATION=ACTIVATIONS[activation], SLOPE=slope, DERIVATIVE=grad is not None, COMPUTE=_compute_type(x.dtype),
        BLOCK=BLOCK,
    )
    return out


@triton.jit
def modulate_kernel(
    weight_ptr, styles_ptr, out_ptr, out_channels, in_channels, taps, epsilon,
    DEMODULATE: tl.constexpr, COMPUTE: tl.constexpr, ROW_BLOCK: tl.constexpr,
):
    """weight [O, I * taps], styles [B, I] -> out [B, O, I * taps]: one program per (o, b) row.
    out = weight[o] * styles[b] (per input channel), divided by its norm when DEMODULATE.
    The row loops are `while` loops: Triton 3.6's interpreter (TRITON_INTERPRET=1) cannot
    iterate `range` to a runtime bound, and compiled they are the same loop."""
    row = tl.program_id(0)
    batch = tl.program_id(1).to(tl.int64)
    length = in_channels * taps
    weight_row = weight_ptr + row.to(tl.int64) * length
    styles = styles_ptr + batch * in_channels
    scale = 1.0
    if DEMODULATE:
        squares = tl.zeros((ROW_BLOCK,), COMPUTE)
        start = 0
        while start < length:
            columns = start + tl.arange(0, ROW_BLOCK)
            mask = columns < length
            w = tl.load(weight_row + columns, mask=mask, other=0.0).to(COMPUTE)
            w *= tl.load(styles + columns // taps, mask=mask, other=0.0).to(COMPUTE)
            squares += w * w
            start += ROW_BLOCK
        scale = 1.0 / tl.sqrt(tl.sum(squares) + epsilon)
    out_row = out_ptr + (batch * out_channels + row) * length
    start = 0
    while start < length:
        columns = start + tl.arange(0, ROW_BLOCK)
        mask = columns < length
        w = tl.load(weight_row + columns, mask=mask, other=0.0).to(COMPUTE)
        w *= tl.load(styles + columns // taps, mask=mask, other=0.0).to(COMPUTE)
        tl.store(out_row + columns, (w * scale).to(out_ptr.dtype.element_ty), mask=mask)
        start += ROW_BLOCK


def modulate(weight: torch.Tensor, styles: torch.Tensor, demodulate: bool, epsilon: float) -> torch.Tensor:
    """Runs modulate_kernel: weight [O, I, kh, kw], styles [B, I] (contiguous) -> [B, O, I, kh, kw]."""
    out_channels, in_channels = weight.shape[:2]
    batch = styles.shape[0]
    out = weight.new_empty(batch, *weight.shape)
    if out.numel() == 0:
        return out
    taps = weight[0, 0].numel()
    modulate_kernel[(out_channels, batch)](
        weight, styles, out, out_channels, in_channels, taps, float(epsilon), DEMODULATE=demodulate, COMPUTE=_compute_type(weight.dtype),
        ROW_BLOCK=ROW_BLOCK,
    )
    return out
