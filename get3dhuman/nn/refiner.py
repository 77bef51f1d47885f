"""The refinement module: a U-Net that maps a rendered view of a generated human to a refined
image, and the two-scale PatchGAN discriminator it is trained with (pix2pixHD style: LSGAN,
feature matching, perceptual loss; see get3dhuman.losses)."""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from get3dhuman._checks import check_int
from get3dhuman.nn.pretrained import WEIGHTS_DIR, load_pretrained_state, read_pretrained, write_pretrained

PRETRAINED_FORMAT = "get3dhuman-refiner/1"
# The package's default refiner: stage 4 of the 'small' preset, trained by TRAINING.md's commands.
DEFAULT_WEIGHTS = os.path.join(WEIGHTS_DIR, "refiner-small.safetensors")


# Normalisation layers of the U-Net's blocks, by name (each with a learnt scale and shift).
NORMS = {
    "batch": nn.BatchNorm2d,  # the authors': batch statistics in training, running ones in eval mode
    "instance": lambda channels: nn.InstanceNorm2d(channels, affine=True),  # per image: the same in both modes
}


def _double_conv(in_channels: int, out_channels: int, norm: str) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), NORMS[norm](out_channels), nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), NORMS[norm](out_channels), nn.ReLU(),
    )


class Refiner(nn.Module):
    """U-Net: conv-norm-ReLU blocks, `depth` max-poolings (channels base .. base * 2**depth),
    transposed-convolution up-sampling with skip concatenation, tanh output.

    Args:
        in_channels / out_channels: image channels (3 / 3).
        base_channels: 64 in Get3DHuman (64 .. 1024 with depth 4).
        depth: number of poolings; input sides must be divisible by 2**depth.
        residual: predict a correction of the input instead of the image: the output is
            input + head clamped to [-1, 1], the head zero-initialised, so an untrained Refiner
            returns its input. The clamp passes gradients straight through: saturated
            background pixels (exactly -1 or 1) must still learn, which neither tanh(atanh(input)
            + head) nor torch's clamp (zero gradient on the bound) allows. The authors' U-Net is
            not residual; a residual one starts from the render, already close to its target here.
        norm: the blocks' normalisation, a key of NORMS: 'batch' (the authors'; training and
            inference differ through it, call .train() / .eval()) or 'instance' (each image
            normalised by its own statistics, in training as at inference).
        albedo: the images it refines are unshaded renders (the colour alone) and it returns
            albedo, rather than shaded images (the authors'). Kept as the attribute `albedo`:
            get3dhuman.refine renders its inputs and back-projects its outputs accordingly.
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 3, base_channels: int = 64, depth: int = 4,
                 residual: bool = False, norm: str = "batch", albedo: bool = False):
        super().__init__()
        in_channels, out_channels, base_channels = (check_int(value, name, 1) for value, name in (
            (in_channels, "in_channels"), (out_channels, "out_channels"), (base_channels, "base_channels")))
        depth = check_int(depth, "depth", 0)
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {sorted(NORMS)}, got {norm!r}")
        if residual and in_channels != out_channels:
            raise ValueError(f"a residual Refiner needs out_channels == in_channels ({in_channels}), got {out_channels}")
        self.depth, self.residual, self.albedo = depth, residual, albedo
        self.sizes = dict(in_channels=in_channels, out_channels=out_channels, base_channels=base_channels, depth=depth,
                          residual=residual, norm=norm, albedo=albedo)  # the constructor's arguments, kept by save_pretrained
        widths = [base_channels * 2**i for i in range(depth + 1)]
        self.encoders = nn.ModuleList([_double_conv(in_channels, widths[0], norm)])
        self.encoders.extend(_double_conv(widths[i], widths[i + 1], norm) for i in range(depth))
        self.upsamplers = nn.ModuleList(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in reversed(range(depth)))
        self.decoders = nn.ModuleList(_double_conv(2 * widths[i], widths[i], norm) for i in reversed(range(depth)))
        self.head = nn.Conv2d(widths[0], out_channels, 1)
        if residual:
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """image [B, in_channels, H, W] (in [-1, 1]) -> refined image [B, out_channels, H, W] in [-1, 1]."""
        multiple, channels = 2**self.depth, self.sizes["in_channels"]
        if image.dim() != 4 or image.shape[1] != channels or image.shape[2] % multiple or image.shape[3] % multiple:
            raise ValueError(f"image must be [B, {channels}, H, W] with H and W divisible by {multiple}, got "
                             f"{tuple(image.shape)}")
        skips = []
        x = image
        for i, encoder in enumerate(self.encoders):
            x = encoder(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for upsample, decoder, skip in zip(self.upsamplers, self.decoders, reversed(skips[:-1])):
            x = decoder(torch.cat([skip, upsample(x)], 1))
        if self.residual:
            corrected = image + self.head(x)
            return corrected + (corrected.clamp(-1, 1) - corrected).detach()
        return torch.tanh(self.head(x))

    def save_pretrained(self, path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> None:
        """Writes the weights and the sizes to one safetensors file that
        `Refiner.from_pretrained(path)` loads (`nn.pretrained.write_pretrained`; `dtype`, one of
        STORAGE_DTYPES, rounds the floating-point weights)."""
        write_pretrained(self, path, PRETRAINED_FORMAT, self.sizes, dtype)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> Refiner:
        """A Refiner in eval mode from a file of `save_pretrained` (`get3dhuman export
        --refiner` writes one from a stage-4 run); without `path`, the package's default refiner
        (DEFAULT_WEIGHTS, matching the default Generator). FileNotFoundError when the file is
        missing, ValueError when it is not such a file."""
        tensors, sizes, path = read_pretrained(path, PRETRAINED_FORMAT, DEFAULT_WEIGHTS)
        refiner = cls(**sizes)
        load_pretrained_state(refiner, tensors, path)
        return refiner.to(device).eval()


class PatchDiscriminator(nn.Module):
    """A 70x70-style PatchGAN (4x4 convolutions, stride 2, InstanceNorm, leaky ReLU 0.2)."""

    def __init__(self, in_channels: int, base_channels: int = 64, num_layers: int = 3):
        super().__init__()
        layers = [nn.Sequential(nn.Conv2d(in_channels, base_channels, 4, stride=2, padding=2), nn.LeakyReLU(0.2))]
        width = base_channels
        for i in range(1, num_layers + 1):
            stride = 2 if i < num_layers else 1
            next_width = min(width * 2, 512)
            layers.append(nn.Sequential(
                nn.Conv2d(width, next_width, 4, stride=stride, padding=2), nn.InstanceNorm2d(next_width), nn.LeakyReLU(0.2)
            ))
            width = next_width
        layers.append(nn.Conv2d(width, 1, 4, stride=1, padding=2))
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x [B, in_channels, H, W] -> every layer's output; the last is the patch logit map."""
        features = []
        for layer in self.layers:
            x = layer(x)
            features.append(x)
        return features


class MultiScalePatchDiscriminator(nn.Module):
    """PatchGANs at `num_scales` scales (each scale halves the input by 3x3 average pooling),
    conditioned on the input view: D(concat(rendered, image))."""

    def __init__(self, in_channels: int = 6, base_channels: int = 64, num_layers: int = 3, num_scales: int = 2):
        super().__init__()
        self.scales = nn.ModuleList(PatchDiscriminator(in_channels, base_channels, num_layers) for _ in range(num_scales))

    def forward(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        """x [B, in_channels, H, W] -> per scale (full resolution first), the layer outputs."""
        outputs = []
        for i, discriminator in enumerate(self.scales):
            if i > 0:
                x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
            outputs.append(discriminator(x))
        return outputs
