"""ImplicitDecoder: the authors' decoder layout and argument checks."""

import pytest
import torch

from get3dhuman.nn import ImplicitDecoder

# Parameter shapes of the authors' checkpoint (mlp_shape.filters.*, mlp_texture.filters.*).
OFFICIAL_WEIGHTS = {
    "shape": [(512, 257, 1), (256, 769, 1), (128, 513, 1), (1, 128, 1)],
    "texture": [(1024, 513, 1), (512, 1024, 1), (256, 1025, 1), (128, 769, 1), (3, 128, 1)],
}


@pytest.mark.parametrize("name", ["shape", "texture"])
def test_official_layouts_match_the_checkpoint(name):
    decoder = getattr(ImplicitDecoder, f"official_{name}")()
    state = decoder.state_dict()
    shapes = [tuple(state[f"filters.{i}.weight"].shape) for i in range(len(decoder.filters))]
    assert shapes == OFFICIAL_WEIGHTS[name]
    assert all(state[f"filters.{i}.bias"].shape == (s[0],) for i, s in enumerate(shapes))


def test_forward_equals_explicit_concatenation():
    torch.manual_seed(0)
    decoder = ImplicitDecoder([4, 6, 5, 3], concat_layers=(2,), last_op=None)
    x = torch.randn(2, 4, 7)
    y = torch.nn.functional.leaky_relu(decoder.filters[0](x), 0.01)
    y = torch.nn.functional.leaky_relu(decoder.filters[1](y), 0.01)
    y = decoder.filters[2](torch.cat([y, x], 1))
    assert torch.allclose(decoder(x), y)


def test_weight_blocks_split_the_concatenation():
    decoder = ImplicitDecoder.official_shape()
    weight = decoder.filters[1].weight[:, :, 0]
    weights = decoder.decoder_weights()
    assert torch.equal(torch.cat([weights.hidden_weight(1), weights.input_weight(1)], 1), weight)
    assert weights.input_layers() == [0, 1, 2]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"channels": [3]}, "channels"),
        ({"channels": [3, 0, 1]}, "channels"),
        ({"channels": [3, 4, 1], "concat_layers": (0,)}, "concat_layers"),
        ({"channels": [3, 4, 1], "concat_layers": (2,)}, "concat_layers"),
        ({"channels": [3, 4, 1], "last_op": "relu"}, "last_op"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ImplicitDecoder(**kwargs)


def test_bad_input_shape():
    with pytest.raises(ValueError, match="x must be"):
        ImplicitDecoder([3, 4, 1])(torch.zeros(1, 2, 5))
