"""StyleGAN2 'resnet' discriminator, used on Get3DHuman's 128 x 128 feature volumes.

Parameter names follow StyleGAN2-ADA (``b128.fromrgb.weight``, ``b64.conv0.weight``,
``b4.fc.weight``, ...) so that the authors' ``Dis_shape`` / ``Dis_texture`` weights load.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from get3dhuman.nn.stylegan2 import LRELU_GAIN, FullyConnectedLayer, bias_act, conv2d_resample, setup_filter


class Conv2dLayer(nn.Module):
    """Equalised-learning-rate convolution with optional 2x FIR down-sampling, bias, activation, clamp."""

    def __init__(self, in_channels, out_channels, kernel_size, bias=True, activation="linear", down=1, conv_clamp=None):
        super().__init__()
        self.activation, self.down, self.conv_clamp, self.padding = activation, down, conv_clamp, kernel_size // 2
        self.register_buffer("resample_filter", setup_filter())
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size * kernel_size)
        self.act_gain = LRELU_GAIN if activation == "lrelu" else 1.0

    def forward(self, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        """[B, I, H, W] -> [B, O, H / down, W / down]."""
        x = conv2d_resample(x, self.weight * self.weight_gain, self.resample_filter, down=self.down, padding=self.padding)
        bias = self.bias if self.bias is not None else x.new_zeros(x.shape[1])
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, bias, self.activation, self.act_gain * gain, clamp)


def minibatch_stddev(x: torch.Tensor, group_size: int = 4) -> torch.Tensor:
    """Appends one channel: the standard deviation over groups of samples, averaged over
    channels and pixels. The batch size must be a multiple of min(group_size, B)."""
    batch, channels, height, width = x.shape
    group = min(group_size, batch)
    if batch % group:
        raise ValueError(f"the batch size ({batch}) must be a multiple of the minibatch-stddev group size ({group})")
    y = x.reshape(group, -1, channels, height, width)
    y = (y - y.mean(0)).square().mean(0).add(1e-8).sqrt().mean([1, 2, 3])  # one value per group slot
    y = y.reshape(-1, 1, 1, 1).repeat(group, 1, height, width)
    return torch.cat([x, y], 1)


class DiscriminatorBlock(nn.Module):
    """One resolution: (fromrgb on the first block), conv0, down-sampling conv1, and a
    down-sampling 1x1 residual branch; both branches scaled by sqrt(0.5)."""

    def __init__(self, in_channels, tmp_channels, out_channels, img_channels, conv_clamp=None):
        super().__init__()
        self.in_channels = in_channels
        self.register_buffer("resample_filter", setup_filter())
        if in_channels == 0:
            self.fromrgb = Conv2dLayer(img_channels, tmp_channels, 1, activation="lrelu", conv_clamp=conv_clamp)
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, 3, activation="lrelu", conv_clamp=conv_clamp)
        self.conv1 = Conv2dLayer(tmp_channels, out_channels, 3, activation="lrelu", down=2, conv_clamp=conv_clamp)
        self.skip = Conv2dLayer(tmp_channels, out_channels, 1, bias=False, down=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, R, R] (the image itself when the block reads it: in_channels 0) -> [B, O, R / 2, R / 2]."""
        if self.in_channels == 0:
            x = self.fromrgb(x)
        residual = self.skip(x, gain=math.sqrt(0.5))
        return residual + self.conv1(self.conv0(x), gain=math.sqrt(0.5))


class DiscriminatorEpilogue(nn.Module):
    """4 x 4 head: minibatch stddev, conv, fully connected, output logit."""

    def __init__(self, channels, resolution=4, mbstd_group_size=4, conv_clamp=None):
        super().__init__()
        self.mbstd_group_size = mbstd_group_size
        self.conv = Conv2dLayer(channels + 1, channels, 3, activation="lrelu", conv_clamp=conv_clamp)
        self.fc = FullyConnectedLayer(channels * resolution**2, channels, activation="lrelu")
        self.out = FullyConnectedLayer(channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, 4, 4] features -> [B, 1] logits (minibatch standard deviation, conv, two linear layers)."""
        x = self.conv(minibatch_stddev(x, self.mbstd_group_size))
        return self.out(self.fc(x.flatten(1)))


class ResNetDiscriminator(nn.Module):
    """[B, img_channels, R, R] -> logits [B, 1] (real: high).

    Get3DHuman: R = 128, img_channels 256 (shape volume) or 512 (shape + texture volumes),
    channel_base 32768, channel_max 512.
    """

    def __init__(self, img_resolution=128, img_channels=256, channel_base=32768, channel_max=512,
                 conv_clamp=256, mbstd_group_size=4):
        super().__init__()
        if img_resolution < 8 or img_resolution & (img_resolution - 1):
            raise ValueError(f"img_resolution must be a power of two >= 8, got {img_resolution}")
        self.img_resolution, self.img_channels = img_resolution, img_channels
        self.block_resolutions = [2**i for i in range(int(math.log2(img_resolution)), 2, -1)]
        channels = {res: min(channel_base // res, channel_max) for res in self.block_resolutions + [4]}
        for res in self.block_resolutions:
            in_channels = channels[res] if res < img_resolution else 0
            block = DiscriminatorBlock(in_channels, channels[res], channels[res // 2], img_channels, conv_clamp)
            setattr(self, f"b{res}", block)
        self.b4 = DiscriminatorEpilogue(channels[4], 4, mbstd_group_size, conv_clamp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, img_channels, R, R] -> [B, 1]."""
        expected = (self.img_channels, self.img_resolution, self.img_resolution)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"x must be [B, {', '.join(map(str, expected))}], got {tuple(x.shape)}")
        for res in self.block_resolutions:
            x = getattr(self, f"b{res}")(x)
        return self.b4(x)
