"""The refinement module: a U-Net that maps a rendered view of a generated human to a refined
image, and the two-scale PatchGAN discriminator it is trained with (pix2pixHD style: LSGAN,
feature matching, perceptual loss; see get3dhuman.losses)."""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from get3dhuman._checks import check_int
from get3dhuman.nn.pretrained import (
    WEIGHTS_DIR,
    check_official_kind,
    load_pretrained_state,
    read_pretrained,
    read_state_dict,
    write_pretrained,
)

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

    @staticmethod
    def from_official_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> OfficialRefiner:
        """The authors' refinement network from their file (Get3DHuman_refinement_v1.pth): an
        OfficialRefiner (see there: images in [0, 1] in and out, each normalised by its own
        statistics, as their inference.py runs it). `OfficialRefiner.from_official_checkpoint`."""
        return OfficialRefiner.from_official_checkpoint(path, device)


class _OfficialBlock(nn.Module):
    """3x3 convolution (with bias), batch norm, ReLU; `conv` is named as in the authors' file."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels),
                                  nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        convolution, norm, _ = self.conv
        # Batch statistics, as in training mode: the authors' inference never calls .eval(). The
        # running statistics are never read nor updated.
        x = F.batch_norm(convolution(x), None, None, norm.weight, norm.bias, training=True, eps=norm.eps)
        return F.relu(x)


class OfficialRefiner(nn.Module):
    """The authors' refinement U-Net (their `Generate(3, 3)`), parameter names as in their file
    without its ``rnet.`` prefix: blocks Conv0 .. Conv16 (`_OfficialBlock`) and a 1x1 Conv_out.

    Encoder: Conv0-Conv2 at full resolution (64 channels), then four 2x max-poolings, each
    followed by one block (128, 256, 512, 1024 channels); Conv7, Conv8 at the bottom (1024 ->
    512). Decoder, four times: nearest 2x up-sampling, concatenation with the encoder's output
    of that resolution (the up-sampled map first), two blocks. Then Conv_out and tanh.

    `forward` takes images in [0, 1] (the authors composite the decoded colours on a white
    background) and returns (tanh output + 1) / 2, in [0, 1].
    """

    WIDTHS = (64, 128, 256, 512, 1024)
    MULTIPLE = 16  # image sides must be divisible by 2^4 (four poolings)

    def __init__(self):
        super().__init__()
        w = self.WIDTHS
        # (in, out) of Conv0 .. Conv16 in order: encoder, bottom, then two per decoder step whose
        # first block reads the concatenation (up-sampled + skip, so twice the skip's width).
        blocks = [(3, w[0]), (w[0], w[0]), (w[0], w[0]), (w[0], w[1]), (w[1], w[2]), (w[2], w[3]), (w[3], w[4]),
                  (w[4], w[4]), (w[4], w[3])]
        for level in (3, 2, 1, 0):
            blocks += [(2 * w[level], w[level]), (w[level], w[max(level - 1, 0)])]
        for index, (in_channels, out_channels) in enumerate(blocks):
            self.add_module(f"Conv{index}", _OfficialBlock(in_channels, out_channels))
        self.Conv_out = nn.Conv2d(w[0], 3, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W] in [0, 1], H and W divisible by 16 -> refined [B, 3, H, W] in [0, 1].
        Each image is refined alone (its own batch statistics, and bits that do not depend on
        the other images: convolutions round by the batch size)."""
        if images.dim() != 4 or images.shape[1] != 3 or images.shape[2] % self.MULTIPLE or images.shape[3] % self.MULTIPLE:
            raise ValueError(f"images must be [B, 3, H, W] with H and W divisible by {self.MULTIPLE}, got "
                             f"{tuple(images.shape)}")
        if images.shape[0] == 0:
            return images.clone()
        return torch.cat([self._refine(image) for image in images.split(1)])

    def _refine(self, image: torch.Tensor) -> torch.Tensor:
        block = [getattr(self, f"Conv{index}") for index in range(17)]
        x = block[2](block[1](block[0](image)))
        skips = [x]
        for index in range(3, 7):
            x = block[index](F.max_pool2d(x, 2))
            skips.append(x)
        x = block[8](block[7](x))
        for step, skip in enumerate(reversed(skips[:-1])):
            x = torch.cat([F.interpolate(x, scale_factor=2, mode="nearest"), skip], 1)
            x = block[10 + 2 * step](block[9 + 2 * step](x))
        return (torch.tanh(self.Conv_out(x)) + 1) / 2

    @classmethod
    def from_official_checkpoint(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> OfficialRefiner:
        """Loads the authors' refinement file (a state dict of their `refinenet`, names prefixed
        ``rnet.``; or the same tensors in a .safetensors file), read without unpickling anything
        but tensors. Every tensor must match the layout (tests/data/official-refiner-keys.tsv);
        otherwise ValueError naming the file and the first mismatch (the generator's file named
        as such)."""
        path = os.fspath(path)
        state = read_state_dict(path)
        check_official_kind(state, "refiner", path)
        refiner = cls()
        expected = {f"rnet.{name}": tensor for name, tensor in refiner.state_dict().items()}
        for name, tensor in expected.items():
            if name not in state:
                raise ValueError(f"{path} is not the authors' refinement network: it lacks {name}")
            if state[name].shape != tensor.shape:
                raise ValueError(f"{path} is not the authors' refinement network: {name} is "
                                 f"{tuple(state[name].shape)}, expected {tuple(tensor.shape)}")
        unexpected = next((name for name in state if name not in expected), None)
        if unexpected is not None:
            raise ValueError(f"{path} is not the authors' refinement network: it holds {unexpected}, which it has not")
        refiner.load_state_dict({name[len("rnet."):]: tensor for name, tensor in state.items()})
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
