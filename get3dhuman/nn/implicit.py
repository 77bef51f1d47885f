"""Implicit decoders: PIFu-style point MLPs of 1x1 Conv1d layers with re-concatenated inputs.

The wiring (re-concatenation, activations) is `get3dhuman.ops.DecoderWeights`; this module
holds the parameters under the authors' names. `get3dhuman.ops.query_field` fuses it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from get3dhuman.ops.decoder import LAST_OPS, DecoderWeights


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
        if last_op not in LAST_OPS:
            raise ValueError(f"last_op must be one of {sorted(map(str, LAST_OPS))}, got {last_op!r}")
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

    def decoder_weights(self) -> DecoderWeights:
        """This decoder's parameters in the form the ops evaluate (get3dhuman.ops.query_field)."""
        return DecoderWeights(tuple(layer.weight for layer in self.filters), tuple(layer.bias for layer in self.filters),
                              tuple(self.channels), self.concat_layers, self.last_op)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, in_channels, N] -> [B, out_channels, N]."""
        return self.decoder_weights()(x)
