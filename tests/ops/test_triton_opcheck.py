"""torch.library.opcheck of the Triton operators (schema, fake kernel, autograd registration,
AOT dispatch), in the Triton interpreter without a GPU."""

import pytest
import torch
from inputs import triton_test_device

from get3dhuman.nn import ImplicitDecoder
from get3dhuman.ops import query
from get3dhuman.ops.pixel_aligned import OFFICIAL_DEPTH_SCALE

DEVICE = triton_test_device()


def _random(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(DEVICE)


@pytest.mark.parametrize("projected", [False, True])
def test_decoded_query_operator(projected):
    torch.manual_seed(0)
    decoder = ImplicitDecoder([5, 8, 6, 2], concat_layers=(1,)).to(DEVICE).decoder_weights()
    features = _random(2, 4, 6, 6)
    # Inference only (query_field refuses it where gradients are needed): inputs without grad.
    source = query.project_inputs(decoder, features).features.detach() if projected else features
    points, calib = _random(2, 7, 3, seed=1) * 0.8, torch.eye(4, device=DEVICE).expand(2, 4, 4).contiguous()
    arguments = (source, points, calib, *query.triton_operands(decoder), OFFICIAL_DEPTH_SCALE, projected)
    torch.library.opcheck(torch.ops.get3dhuman.decoded_query_triton.default, arguments)


@pytest.mark.parametrize(("activation", "clamp"), [("linear", float("inf")), ("lrelu", 0.5)])
def test_bias_act_operators(activation, clamp):
    x, bias = _random(2, 3, 4, 5).requires_grad_(), _random(3, seed=1).requires_grad_()
    torch.library.opcheck(torch.ops.get3dhuman.bias_act_triton.default, (x, bias, activation, 1.5, clamp))
    grad = _random(2, 3, 4, 5, seed=2).requires_grad_()
    torch.library.opcheck(torch.ops.get3dhuman.bias_act_grad_triton.default, (grad, x, bias, activation, 1.5, clamp))


@pytest.mark.parametrize("demodulate", [False, True])
def test_modulate_weights_operator(demodulate):
    weight, styles = _random(4, 3, 3, 3).requires_grad_(), _random(2, 3, seed=1).requires_grad_()
    torch.library.opcheck(torch.ops.get3dhuman.modulate_weights_triton.default, (weight, styles, demodulate))
