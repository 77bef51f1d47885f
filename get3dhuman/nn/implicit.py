"""Implicit decoders: PIFu-style point MLPs of 1x1 Conv1d layers with re-concatenated inputs.

Layer i maps ``channels[i]`` (+ the decoder input width when i is a re-concatenation layer)
to ``channels[i + 1]``. A re-concatenation layer reads ``cat([y, x], dim=1)``: the previous
activation first, then the decoder input again. Hidden layers use leaky_relu(0.01); the
output goes through ``last_op``. This is the module that `get3dhuman.ops.query_field` fuses.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

LEAKY_SLOPE = 0.01
_LAST_OPS = {"sigmoid": torch.sigmoid, "tanh": torch.tanh, None: lambda y: y}
_LAST_OPS_INPLACE = {"sigmoid": torch.sigmoid_, "tanh": torch.tanh_, None: lambda y: y}


class ImplicitDecoder(nn.Module):
    """Point MLP over pixel-aligned features.

    Args:
        channels: widths [input, hidden..., output], e.g. [257, 512, 256, 128, 1].
        concat_layers: indices (>= 1) of the layers that re-read the decoder input.
        last_op: 'sigmoid', 'tanh' or None, applied to the output.

    Parameters are ``filters.<i>.weight`` [out, in, 1] and ``filters.<i>.bias`` [out], the
    names of the authors' checkpoint (``mlp_shape.filters.0.weight``, ...).
    """

    def __init__(self, channels: Sequence[int], concat_layers: Sequence[int] = (), last_op: str | None = "sigmoid"):
        super().__init__()
        channels = [int(c) for c in channels]
        if len(channels) < 2 or min(channels) < 1:
            raise ValueError(f"channels must list at least two positive widths, got {channels}")
        concat_layers = tuple(sorted(int(i) for i in concat_layers))
        if any(i < 1 or i >= len(channels) - 1 for i in concat_layers) or len(set(concat_layers)) != len(concat_layers):
            raise ValueError(
                f"concat_layers must be distinct layer indices in [1, {len(channels) - 2}], got {concat_layers}"
            )
        if last_op not in _LAST_OPS:
            raise ValueError(f"last_op must be one of {sorted(map(str, _LAST_OPS))}, got {last_op!r}")
        self.channels = channels
        self.concat_layers = concat_layers
        self.last_op = last_op
        self.filters = nn.ModuleList(
            nn.Conv1d(channels[i] + (channels[0] if i in concat_layers else 0), channels[i + 1], 1)
            for i in range(len(channels) - 1)
        )

    @classmethod
    def official_shape(cls) -> ImplicitDecoder:
        """The published shape decoder: [257, 512, 256, 128, 1], re-concatenation at 1 and 2."""
        return cls([257, 512, 256, 128, 1], concat_layers=(1, 2))

    @classmethod
    def official_texture(cls) -> ImplicitDecoder:
        """The published texture decoder: [513, 1024, 512, 256, 128, 3], re-concatenation at 2 and 3."""
        return cls([513, 1024, 512, 256, 128, 3], concat_layers=(2, 3))

    @property
    def in_channels(self) -> int:
        """Width of the decoder input (sampled features + the depth feature)."""
        return self.channels[0]

    @property
    def out_channels(self) -> int:
        """Width of the decoder output."""
        return self.channels[-1]

    def input_layers(self) -> list[int]:
        """Indices of the layers that read the decoder input: 0 and the re-concatenation layers."""
        return [0, *self.concat_layers]

    def input_weight(self, layer: int) -> torch.Tensor:
        """The [out, in_channels] block of layer `layer`'s weight that multiplies the decoder input."""
        weight = self.filters[layer].weight[:, :, 0]
        return weight[:, weight.shape[1] - self.in_channels :]

    def hidden_weight(self, layer: int) -> torch.Tensor:
        """The [out, channels[layer]] block of layer `layer`'s weight that multiplies the previous activation."""
        return self.filters[layer].weight[:, : self.channels[layer], 0]

    def activation(self, layer: int, y: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        """Applies the activation that follows layer `layer` (leaky ReLU, or last_op after the
        last); `inplace` overwrites y (no autograd), which saves a pass over fresh memory."""
        if layer == len(self.filters) - 1:
            return _LAST_OPS_INPLACE[self.last_op](y) if inplace else _LAST_OPS[self.last_op](y)
        return F.leaky_relu_(y, LEAKY_SLOPE) if inplace else F.leaky_relu(y, LEAKY_SLOPE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, in_channels, N] -> [B, out_channels, N]."""
        if x.dim() != 3 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must be [B, {self.in_channels}, N], got {tuple(x.shape)}")
        y = x
        for i, layer in enumerate(self.filters):
            y = layer(torch.cat([y, x], 1) if i in self.concat_layers else y)
            y = self.activation(i, y)
        return y
