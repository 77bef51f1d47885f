"""StyleGAN2 layer helpers: fused bias + activation + gain + clamp, and weight
modulation/demodulation, with Triton kernels (get3dhuman.kernels.stylegan2) and pure-torch
references.

Backends: 'triton' (CUDA tensors with Triton installed; CPU tensors only under the Triton
interpreter and only when asked for by name) and 'reference'. 'auto' takes Triton where it
applies. Both are differentiable; the fused bias_act's gradient is the same kernel in derivative
mode, itself differentiable, so R1 (a gradient of a gradient) runs through it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from get3dhuman.kernels import device_unavailable_reason as triton_device_reason
from get3dhuman.ops.backends import choose_backend

LRELU_SLOPE = 0.2
STYLEGAN_BACKENDS = ("triton", "reference")
_ACTIVATIONS = ("linear", "lrelu")
_TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
DEMODULATION_EPSILON = 1e-8


def _triton_reason(tensor: torch.Tensor, explicit: bool) -> str | None:
    """Why the Triton helpers cannot take `tensor`, or None."""
    reason = triton_device_reason(tensor, explicit)
    if reason is None and tensor.dtype not in _TRITON_DTYPES:
        reason = f"Triton helpers take floating tensors, not {tensor.dtype}"
    return reason


def _choose(backend: str, tensor: torch.Tensor) -> str:
    """The helpers' backend for `tensor`: 'triton' where it applies (named: where it can run)."""
    return choose_backend(backend, STYLEGAN_BACKENDS, lambda name, explicit: _triton_reason(tensor, explicit)
                          if name == "triton" else None)[0]


# --- bias + activation + gain + clamp -------------------------------------------------------


@torch.library.custom_op("get3dhuman::bias_act_triton", mutates_args=())
def _bias_act_triton(x: torch.Tensor, bias: torch.Tensor, activation: str, gain: float, clamp: float) -> torch.Tensor:
    from get3dhuman.kernels.stylegan2 import bias_act

    return bias_act(x.contiguous(), bias.contiguous(), activation, LRELU_SLOPE, gain, clamp)


@torch.library.custom_op("get3dhuman::bias_act_grad_triton", mutates_args=())
def _bias_act_grad_triton(
    grad: torch.Tensor, x: torch.Tensor, bias: torch.Tensor, activation: str, gain: float, clamp: float
) -> torch.Tensor:
    from get3dhuman.kernels.stylegan2 import bias_act

    return bias_act(x.contiguous(), bias.contiguous(), activation, LRELU_SLOPE, gain, clamp, grad=grad.contiguous())


@_bias_act_triton.register_fake
def _bias_act_fake(x, bias, activation, gain, clamp):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@_bias_act_grad_triton.register_fake
def _bias_act_grad_fake(grad, x, bias, activation, gain, clamp):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _save_bias_act(ctx, inputs, output):
    ctx.save_for_backward(inputs[0], inputs[1])
    ctx.settings = inputs[2:]


def _bias_act_backward(ctx, grad):
    x, bias = ctx.saved_tensors
    grad_x = _bias_act_grad_triton(grad, x, bias, *ctx.settings)
    grad_bias = grad_x.sum([d for d in range(grad_x.dim()) if d != 1]) if ctx.needs_input_grad[1] else None
    return grad_x, grad_bias, None, None, None


def _save_bias_act_grad(ctx, inputs, output):
    ctx.save_for_backward(inputs[1], inputs[2])
    ctx.settings = inputs[3:]


def _bias_act_grad_backward(ctx, grad_grad):
    # The derivative is piecewise constant in x: only the incoming gradient carries one.
    x, bias = ctx.saved_tensors
    return _bias_act_grad_triton(grad_grad, x, bias, *ctx.settings), None, None, None, None, None


_bias_act_triton.register_autograd(_bias_act_backward, setup_context=_save_bias_act)
_bias_act_grad_triton.register_autograd(_bias_act_grad_backward, setup_context=_save_bias_act_grad)


def reference_bias_act(x, bias, activation="linear", gain=1.0, clamp=None):
    """x + bias (over dim 1), then leaky ReLU (slope 0.2) for 'lrelu', times gain, clamped to +-clamp."""
    x = x + bias.reshape(1, -1, *([1] * (x.dim() - 2)))
    if activation == "lrelu":
        x = F.leaky_relu(x, LRELU_SLOPE)
    x = x * gain
    return x if clamp is None else x.clamp(-clamp, clamp)


def bias_act(
    x: torch.Tensor,
    bias: torch.Tensor,
    activation: str = "linear",
    gain: float = 1.0,
    clamp: float | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """StyleGAN2's bias_act: x [B, C, ...] + bias [C] over dim 1, then 'linear' or 'lrelu'
    (slope 0.2), times `gain`, clamped to [-clamp, clamp] when clamp is given. Same shape and
    dtype as x; bias must have x's dtype, or under torch.autocast any (it is cast to x's).
    backend: 'auto', 'triton' or 'reference' (module docstring)."""
    if not isinstance(x, torch.Tensor) or x.dim() < 2:
        raise ValueError(f"x must be a [B, C, ...] tensor, got {getattr(x, 'shape', type(x).__name__)}")
    if not isinstance(bias, torch.Tensor) or bias.shape != (x.shape[1],):
        raise ValueError(f"bias must be [C] = [{x.shape[1]}], got {getattr(bias, 'shape', type(bias).__name__)}")
    if torch.is_autocast_enabled(x.device.type):  # as a convolution's bias under autocast
        bias = bias.to(x.dtype)
    if bias.dtype != x.dtype or bias.device != x.device:
        raise ValueError(f"bias must match x ({x.dtype}, {x.device}), got ({bias.dtype}, {bias.device})")
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {_ACTIVATIONS}, got {activation!r}")
    if clamp is not None and not clamp >= 0:
        raise ValueError(f"clamp must be None or >= 0, got {clamp!r}")
    if _choose(backend, x) == "reference":
        return reference_bias_act(x, bias, activation, gain, clamp)
    return _bias_act_triton(x, bias, activation, float(gain), math.inf if clamp is None else float(clamp))


# --- modulation / demodulation --------------------------------------------------------------


@torch.library.custom_op("get3dhuman::modulate_weights_triton", mutates_args=())
def _modulate_triton(weight: torch.Tensor, styles: torch.Tensor, demodulate: bool) -> torch.Tensor:
    from get3dhuman.kernels.stylegan2 import modulate

    return modulate(weight.contiguous(), styles.contiguous(), demodulate, DEMODULATION_EPSILON)


@_modulate_triton.register_fake
def _modulate_fake(weight, styles, demodulate):
    return weight.new_empty(styles.shape[0], *weight.shape)


def _save_modulate(ctx, inputs, output):
    ctx.save_for_backward(inputs[0], inputs[1])
    ctx.demodulate = inputs[2]


def _modulate_backward(ctx, grad):
    """Analytic gradient, recomputed from the inputs with torch ops (so it is differentiable too):
    for out = w * d with d = (|w|^2 + eps)^-1/2, grad_w = d * (grad - out * <grad, out>)."""
    weight, styles = ctx.saved_tensors
    modulated = weight.unsqueeze(0) * styles.reshape(*styles.shape, 1, 1).unsqueeze(1)
    if ctx.demodulate:
        scale = (modulated.square().sum([2, 3, 4], keepdim=True) + DEMODULATION_EPSILON).rsqrt()
        out = modulated * scale
        grad = scale * (grad - out * (grad * out).sum([2, 3, 4], keepdim=True))
    grad_weight = (grad * styles.reshape(*styles.shape, 1, 1).unsqueeze(1)).sum(0) if ctx.needs_input_grad[0] else None
    grad_styles = (grad * weight.unsqueeze(0)).sum([1, 3, 4]) if ctx.needs_input_grad[1] else None
    return grad_weight, grad_styles, None


_modulate_triton.register_autograd(_modulate_backward, setup_context=_save_modulate)


def reference_modulate_weights(weight: torch.Tensor, styles: torch.Tensor, demodulate: bool = True) -> torch.Tensor:
    """Pure-torch oracle of modulate_weights."""
    w = weight.unsqueeze(0) * styles.reshape(styles.shape[0], 1, -1, 1, 1)
    if demodulate:
        w = w * (w.square().sum([2, 3, 4], keepdim=True) + DEMODULATION_EPSILON).rsqrt()
    return w


def modulate_weights(weight: torch.Tensor, styles: torch.Tensor, demodulate: bool = True, backend: str = "auto") -> torch.Tensor:
    """StyleGAN2 weight modulation: weight [O, I, kh, kw], styles [B, I] -> [B, O, I, kh, kw],
    each sample's weight scaled by its styles over input channels and, when `demodulate`,
    divided by its norm per output channel (plus 1e-8 under the root), in weight's dtype.
    styles must have weight's dtype, or under torch.autocast any (they are cast to weight's).
    backend: 'auto', 'triton' or 'reference' (module docstring)."""
    if not isinstance(weight, torch.Tensor) or weight.dim() != 4:
        raise ValueError(f"weight must be [O, I, kh, kw], got {getattr(weight, 'shape', type(weight).__name__)}")
    if not isinstance(styles, torch.Tensor) or styles.dim() != 2 or styles.shape[1] != weight.shape[1]:
        shape = getattr(styles, "shape", type(styles).__name__)
        raise ValueError(f"styles must be [B, I] with I = {weight.shape[1]}, got {shape}")
    if torch.is_autocast_enabled(weight.device.type):  # the modulation and its norm stay in the weight's dtype
        styles = styles.to(weight.dtype)
    if styles.dtype != weight.dtype or styles.device != weight.device:
        raise ValueError(f"styles must match weight ({weight.dtype}, {weight.device}), got ({styles.dtype}, {styles.device})")
    if _choose(backend, weight) == "reference":
        return reference_modulate_weights(weight, styles, demodulate)
    return _modulate_triton(weight, styles, bool(demodulate))
