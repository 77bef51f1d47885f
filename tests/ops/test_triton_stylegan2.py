"""The fused StyleGAN2 helpers (get3dhuman.kernels.stylegan2) against their pure-torch references:
forward, first and second derivatives, float64 gradcheck, torch.compile, bad input.

Without a GPU the kernels run in the Triton interpreter on CPU tensors (conftest). fp16
tolerance: 2e-3 relative to the values' scale (one fp16 rounding of an fp32 result).
"""

import pytest
import torch
import torch.nn.functional as F
from inputs import compile_without_interpreter, triton_test_device

from get3dhuman.nn.stylegan2 import modulated_conv2d
from get3dhuman.ops import (
    bias_act,
    modulate_weights,
    reference_bias_act,
    reference_modulate_weights,
)

DEVICE = triton_test_device()

SETTINGS = [("linear", 1.0, None), ("lrelu", 2**0.5, None), ("lrelu", 2**0.5, 0.7), ("linear", 0.5, 0.3)]


def _tensors(*shape, dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator, dtype=torch.float64).to(device=DEVICE, dtype=dtype)


@pytest.mark.parametrize("shape", [(3, 5, 7, 9), (4, 6), (2, 3, 1031)])
@pytest.mark.parametrize(("activation", "gain", "clamp"), SETTINGS)
def test_bias_act_forward_and_backward_match_reference(shape, activation, gain, clamp):
    x = _tensors(*shape).requires_grad_(True)
    bias = _tensors(shape[1], seed=1).requires_grad_(True)
    out = bias_act(x, bias, activation, gain, clamp, backend="triton")
    expected = reference_bias_act(x, bias, activation, gain, clamp)
    assert (out - expected).abs().max() <= 1e-6
    weights = _tensors(*shape, seed=2)
    grads = torch.autograd.grad((out * weights).sum(), (x, bias))
    expected_grads = torch.autograd.grad((expected * weights).sum(), (x, bias))
    for grad, expected_grad in zip(grads, expected_grads):
        assert (grad - expected_grad).abs().max() <= 1e-5


def test_bias_act_second_derivative_for_r1():
    """R1 differentiates a gradient: d/dw |d(sum(bias_act(x) * w))/dx|^2 must match the reference."""
    x = _tensors(2, 4, 5, 5).requires_grad_(True)
    bias = _tensors(4, seed=1)
    results = []
    for function in (lambda *a: bias_act(*a, backend="triton"), reference_bias_act):
        w = _tensors(2, 4, 5, 5, seed=3).requires_grad_(True)
        (grad_x,) = torch.autograd.grad((function(x, bias, "lrelu", 2**0.5, 0.9) * w).sum(), x, create_graph=True)
        results.append(torch.autograd.grad(grad_x.square().sum(), w)[0])
    assert (results[0] - results[1]).abs().max() <= 1e-5


def test_bias_act_gradcheck_float64():
    x = _tensors(2, 3, 4, dtype=torch.float64).requires_grad_(True)
    bias = _tensors(3, dtype=torch.float64, seed=1).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: bias_act(a, b, "lrelu", 1.3, 1.5, backend="triton"), (x, bias))
    assert torch.autograd.gradgradcheck(lambda a, b: bias_act(a, b, "lrelu", 1.3, 1.5, backend="triton"), (x, bias))


def test_bias_act_half_precision():
    x, bias = _tensors(2, 8, 16, 16), _tensors(8, seed=1)
    out = bias_act(x.half(), bias.half(), "lrelu", 2**0.5, 1.0, backend="triton")
    expected = reference_bias_act(x.half().float(), bias.half().float(), "lrelu", 2**0.5, 1.0)
    assert out.dtype == torch.float16 and (out.float() - expected).abs().max() <= 2e-3


@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_mixed_dtypes_only_under_autocast(backend):
    # Under autocast a float32 bias follows x's dtype (as a convolution's bias does) and
    # bfloat16 styles the float32 weight's; outside autocast both are refused by name.
    x, bias = _tensors(2, 8, 5, 5).bfloat16(), _tensors(8, seed=1)
    weight, styles = _tensors(4, 8, 3, 3), _tensors(2, 8, seed=2).bfloat16()
    with pytest.raises(ValueError, match=r"^bias must match x \(torch.bfloat16, .*\), got \(torch.float32"):
        bias_act(x, bias, backend=backend)
    with pytest.raises(ValueError, match=r"^styles must match weight \(torch.float32, .*\), got \(torch.bfloat16"):
        modulate_weights(weight, styles, backend=backend)
    with torch.autocast(torch.device(DEVICE).type, dtype=torch.bfloat16):
        activated = bias_act(x, bias, "lrelu", 2**0.5, 1.0, backend=backend)
        modulated = modulate_weights(weight, styles, backend=backend)
    expected = reference_bias_act(x.float(), bias.bfloat16().float(), "lrelu", 2**0.5, 1.0)
    assert activated.dtype == torch.bfloat16 and (activated.float() - expected).abs().max() <= 1e-2
    assert modulated.dtype == torch.float32
    assert (modulated - reference_modulate_weights(weight, styles.float())).abs().max() <= 1e-6


@pytest.mark.parametrize("demodulate", [True, False])
@pytest.mark.parametrize("kernel", [3, 1])
def test_modulation_forward_and_backward_match_reference(demodulate, kernel):
    weight = _tensors(5, 7, kernel, kernel).requires_grad_(True)
    styles = _tensors(3, 7, seed=1).requires_grad_(True)
    out = modulate_weights(weight, styles, demodulate, backend="triton")
    expected = reference_modulate_weights(weight, styles, demodulate)
    assert out.shape == (3, 5, 7, kernel, kernel)
    assert (out - expected).abs().max() <= 1e-6
    upstream = _tensors(*out.shape, seed=2)
    grads = torch.autograd.grad((out * upstream).sum(), (weight, styles))
    expected_grads = torch.autograd.grad((expected * upstream).sum(), (weight, styles))
    for grad, expected_grad in zip(grads, expected_grads):
        assert (grad - expected_grad).abs().max() <= 1e-5


def test_modulation_gradcheck_float64_and_rows_longer_than_a_block():
    weight = _tensors(2, 3, 3, 3, dtype=torch.float64).requires_grad_(True)
    styles = _tensors(2, 3, dtype=torch.float64, seed=1).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda w, s: modulate_weights(w, s, backend="triton"), (weight, styles))
    weight, styles = _tensors(4, 130, 3, 3), _tensors(2, 130, seed=1)  # rows of 1170 > ROW_BLOCK
    out = modulate_weights(weight, styles, backend="triton")
    assert (out - reference_modulate_weights(weight, styles)).abs().max() <= 1e-6


def test_modulated_convolution_equals_per_sample_convolutions_with_triton_weights():
    """modulated_conv2d's grouped convolution, against one plain convolution per sample with the
    weights the Triton kernel modulates."""
    x, weight, styles = _tensors(2, 4, 8, 8), _tensors(6, 4, 3, 3, seed=1), _tensors(2, 4, seed=2)
    modulated = modulate_weights(weight, styles, backend="triton")
    per_sample = torch.cat([F.conv2d(x[b : b + 1], modulated[b], padding=1) for b in range(2)])
    assert (modulated_conv2d(x, weight, styles, padding=1) - per_sample).abs().max() <= 1e-5


def test_torch_compile_fullgraph():
    x, bias = _tensors(2, 3, 4, 4), _tensors(3, seed=1)
    weight, styles = _tensors(3, 3, 3, 3, seed=2), _tensors(2, 3, seed=3)

    def layer(x, bias, weight, styles):
        return bias_act(x, bias, "lrelu", 2.0, 1.0, backend="triton").sum() + modulate_weights(weight, styles, backend="triton").sum()

    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    expected = reference_bias_act(x, bias, "lrelu", 2.0, 1.0).sum() + reference_modulate_weights(weight, styles).sum()
    assert (compiled(x, bias, weight, styles) - expected).abs() <= 1e-4


def test_bad_arguments_name_what_is_expected():
    x, bias = _tensors(2, 3, 4), _tensors(3)
    with pytest.raises(ValueError, match=r"bias must be \[C\] = \[3\]"):
        bias_act(x, bias[:2])
    with pytest.raises(ValueError, match="activation must be one of"):
        bias_act(x, bias, "relu")
    with pytest.raises(ValueError, match="clamp must be None or >= 0"):
        bias_act(x, bias, clamp=-1.0)
    with pytest.raises(ValueError, match="backend must be 'auto' or one of"):
        bias_act(x, bias, backend="cuda")
    with pytest.raises(ValueError, match=r"styles must be \[B, I\] with I = 3"):
        modulate_weights(_tensors(4, 3, 3, 3), _tensors(2, 5))
    with pytest.raises(ValueError, match=r"weight must be \[O, I, kh, kw\]"):
        modulate_weights(_tensors(4, 3), _tensors(2, 3))
    if DEVICE == "cpu":  # auto keeps the interpreter out of ordinary CPU runs
        assert torch.equal(bias_act(x, bias, "lrelu"), reference_bias_act(x, bias, "lrelu"))


@pytest.mark.slow
def test_kernels_compile_for_hopper(tmp_path):
    """The real Triton compiler builds both helpers for sm_90 in every dtype and mode."""
    compile_without_interpreter(
        """
        import triton
        import triton.language as tl
        from triton.backends.compiler import GPUTarget
        from get3dhuman.kernels.stylegan2 import bias_act_kernel, modulate_kernel

        def build(kernel, signature, constexprs):
            signature.update(dict.fromkeys(constexprs, "constexpr"))
            source = triton.compiler.ASTSource(kernel, signature, constexprs=constexprs)
            triton.compile(source, target=GPUTarget("cuda", 90, 32))

        for pointer, compute in (("*fp16", tl.float32), ("*bf16", tl.float32), ("*fp32", tl.float32), ("*fp64", tl.float64)):
            for derivative in (False, True):
                signature = dict(x_ptr=pointer, bias_ptr=pointer, grad_ptr=pointer, out_ptr=pointer, numel="i64",
                                 channels="i32", inner="i32", gain="fp32", clamp="fp32")
                build(bias_act_kernel, signature,
                      dict(ACTIVATION=1, SLOPE=0.2, DERIVATIVE=derivative, COMPUTE=compute, BLOCK=1024))
            signature = dict(weight_ptr=pointer, styles_ptr=pointer, out_ptr=pointer, out_channels="i32",
                             in_channels="i32", taps="i32", epsilon="fp32")
            build(modulate_kernel, signature, dict(DEMODULATE=True, COMPUTE=compute, ROW_BLOCK=512))
        print("compiled")
        """,
        tmp_path,
    )
