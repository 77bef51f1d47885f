"""The form of an implicit decoder that the ops evaluate: its layers' weights and wiring.

A decoder is a point MLP of 1x1 convolutions (`get3dhuman.nn.ImplicitDecoder` produces this
form with `decoder_weights()`). Layer i maps ``channels[i]`` (+ the decoder input width when i
is a re-concatenation layer) to ``channels[i + 1]``; a re-concatenation layer reads
``cat([y, x], dim=1)``, the previous activation first. Hidden layers use leaky_relu(0.01); the
output goes through ``last_op``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

LEAKY_SLOPE = 0.01
LAST_OPS = {"sigmoid": torch.sigmoid, "tanh": torch.tanh, None: lambda y: y}
_LAST_OPS_INPLACE = {"sigmoid": torch.sigmoid_, "tanh": torch.tanh_, None: lambda y: y}


class DecoderWeights(NamedTuple):
    """An implicit decoder's parameters (the tensors themselves, so autograd reaches them).

    weights: per layer, [out, in, 1] (Conv1d layout). biases: per layer, [out].
    channels: widths [input, hidden..., output]. concat_layers: the layers that re-read the
    decoder input. last_op: 'sigmoid', 'tanh' or None.
    """

    weights: tuple[torch.Tensor, ...]
    biases: tuple[torch.Tensor, ...]
    channels: tuple[int, ...]
    concat_layers: tuple[int, ...]
    last_op: str | None

    @property
    def in_channels(self) -> int:
        """Width of the decoder input (sampled features + the depth feature)."""
        return self.channels[0]

    @property
    def out_channels(self) -> int:
        """Width of the decoder output."""
        return self.channels[-1]

    @property
    def num_layers(self) -> int:
        """Number of layers."""
        return len(self.weights)

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """Every parameter tensor."""
        return (*self.weights, *self.biases)

    def input_layers(self) -> list[int]:
        """Indices of the layers that read the decoder input: 0 and the re-concatenation layers."""
        return [0, *self.concat_layers]

    def input_weight(self, layer: int) -> torch.Tensor:
        """The [out, in_channels] block of layer `layer`'s weight that multiplies the decoder input."""
        weight = self.weights[layer][:, :, 0]
        return weight[:, weight.shape[1] - self.in_channels :]

    def hidden_weight(self, layer: int) -> torch.Tensor:
        """The [out, channels[layer]] block of layer `layer`'s weight that multiplies the previous activation."""
        return self.weights[layer][:, : self.channels[layer], 0]

    def activation(self, layer: int, y: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        """Applies the activation that follows layer `layer` (leaky ReLU, or last_op after the
        last); `inplace` overwrites y (no autograd), which saves a pass over fresh memory."""
        if layer == self.num_layers - 1:
            return _LAST_OPS_INPLACE[self.last_op](y) if inplace else LAST_OPS[self.last_op](y)
        return F.leaky_relu_(y, LEAKY_SLOPE) if inplace else F.leaky_relu(y, LEAKY_SLOPE)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The decoder on x [B, in_channels, N] -> [B, out_channels, N], layer by layer (the oracle)."""
        if x.dim() != 3 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must be [B, {self.in_channels}, N], got {tuple(x.shape)}")
        y = x
        for i, (weight, bias) in enumerate(zip(self.weights, self.biases)):
            y = self.activation(i, F.conv1d(torch.cat([y, x], 1) if i in self.concat_layers else y, weight, bias))
        return y


def decoder_weights(decoder) -> DecoderWeights:
    """`decoder` as DecoderWeights: itself, or what its `decoder_weights()` gives (an
    ImplicitDecoder's). TypeError for anything else."""
    if isinstance(decoder, DecoderWeights):
        return decoder
    produce = getattr(decoder, "decoder_weights", None)
    if produce is None:
        raise TypeError(f"decoder must be a get3dhuman.nn.ImplicitDecoder or an ops.DecoderWeights, "
                        f"got {type(decoder).__name__}")
    return produce()
