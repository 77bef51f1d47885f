"""PIFu's stacked-hourglass image filter in the Get3DHuman variant.

Differences from PIFu: conv1 is 5x5 (stride 2, padding 3: 512 -> 257, average-pooled to 128),
the hourglass up-samples bicubically (align_corners=True), and the output convolution l0 is
256 -> 256 without tanh. Normalisation is GroupNorm(32). Module names match the authors'
checkpoint (``conv1``, ``bn1``, ``conv2``, ``m0.b1_2.conv1``, ``top_m_0``, ``conv_last0``,
``bn_end0``, ``l0``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

GROUPS = 32


def _conv3x3(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)


class ConvBlock(nn.Module):
    """Pre-activation residual block whose three 3x3 convolutions (out/2, out/4, out/4 wide) are
    concatenated; a 1x1 projection matches the residual when the widths differ."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        half, quarter = out_channels // 2, out_channels // 4
        self.conv1, self.conv2, self.conv3 = _conv3x3(in_channels, half), _conv3x3(half, quarter), _conv3x3(quarter, quarter)
        self.bn1, self.bn2, self.bn3 = nn.GroupNorm(GROUPS, in_channels), nn.GroupNorm(GROUPS, half), nn.GroupNorm(GROUPS, quarter)
        self.downsample = None
        if in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.GroupNorm(GROUPS, in_channels), nn.ReLU(), nn.Conv2d(in_channels, out_channels, 1, bias=False)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, in, H, W] -> [B, out, H, W]."""
        out1 = self.conv1(F.relu(self.bn1(x)))
        out2 = self.conv2(F.relu(self.bn2(out1)))
        out3 = self.conv3(F.relu(self.bn3(out2)))
        residual = x if self.downsample is None else self.downsample(x)
        return torch.cat([out1, out2, out3], 1) + residual


class HourGlass(nn.Module):
    """Recursive hourglass of `depth` levels: average-pool down, bicubic up, skip branches."""

    def __init__(self, depth: int, features: int):
        super().__init__()
        self.depth = depth
        for level in range(depth, 0, -1):
            self.add_module(f"b1_{level}", ConvBlock(features, features))
            self.add_module(f"b2_{level}", ConvBlock(features, features))
            if level == 1:
                self.add_module("b2_plus_1", ConvBlock(features, features))
            self.add_module(f"b3_{level}", ConvBlock(features, features))

    def _level(self, level: int, x: torch.Tensor) -> torch.Tensor:
        skip = self._modules[f"b1_{level}"](x)
        low = self._modules[f"b2_{level}"](F.avg_pool2d(x, 2, stride=2))
        low = self._level(level - 1, low) if level > 1 else self._modules["b2_plus_1"](low)
        low = self._modules[f"b3_{level}"](low)
        return skip + F.interpolate(low, scale_factor=2, mode="bicubic", align_corners=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, F, H, W] -> [B, F, H, W]; H and W divisible by 2**depth."""
        return self._level(self.depth, x)


class HGFilter(nn.Module):
    """Image (or StyleGAN feature map) [B, in_channels, S, S] -> pixel-aligned feature volume
    [B, 256, S/4, S/4] (512 -> 128 in Get3DHuman).

    One hourglass stack, as in Get3DHuman.

    Args:
        in_channels: 16 for the shape filter, 32 for the texture filter (texture + shape maps).
        depth: hourglass depth (2 in Get3DHuman). features: output channels (256).
    """

    def __init__(self, in_channels: int, depth: int = 2, features: int = 256):
        super().__init__()
        self.in_channels, self.depth, self.features = in_channels, depth, features
        self.conv1 = nn.Conv2d(in_channels, 64, 5, stride=2, padding=3)
        self.bn1 = nn.GroupNorm(GROUPS, 64)
        self.conv2 = ConvBlock(64, 128)
        self.conv3 = ConvBlock(128, 128)
        self.conv4 = ConvBlock(128, features)
        self.m0 = HourGlass(depth, features)
        self.top_m_0 = ConvBlock(features, features)
        self.conv_last0 = nn.Conv2d(features, features, 1)
        self.bn_end0 = nn.GroupNorm(GROUPS, features)
        self.l0 = nn.Conv2d(features, features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, in_channels, S, S] -> [B, features, S', S'], S' = floor((S / 2 + 1) / 2)."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must be [B, {self.in_channels}, H, W], got {tuple(x.shape)}")
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.avg_pool2d(self.conv2(x), 2, stride=2)
        x = self.top_m_0(self.m0(self.conv4(self.conv3(x))))
        return self.l0(F.relu(self.bn_end0(self.conv_last0(x))))
