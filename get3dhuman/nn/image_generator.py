"""The 2-D human image generator that stage 2 lifts into 3-D (DESIGN.md section 5).

`ImageGenerator` is a StyleGAN2 'skip' generator of RGB images, z [B, z_dim] -> [B, H, W, 3] in
[0, 1]: StyleGAN-Human's StyleGAN2 release (1024 x 512 portraits, 8 mapping layers) read from
its network pickle without unpickling code (`nn.network_pickle`), or any StyleGAN2-ADA
generator of that architecture; `save_pretrained` writes it as one safetensors file that `load`
reads (`get3dhuman export --image-generator PKL` on the command line).
Without one, the prior stage uses the synthetic world's stand-in (synthetic.preview).

Such generators paint people on a uniform background, while the Reconstructor sees humans on
black: `frame_figures` mattes the background colour (estimated from the image border; the
region of it connected to the border), frames the figure as the Reconstructor's training
views do (or pads the image to a square) and resizes.
"""

from __future__ import annotations

import os
import re
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from get3dhuman.nn.modes import evaluation_mode
from get3dhuman.nn.network_pickle import PickledModule, read_network_pickle
from get3dhuman.nn.pretrained import is_pretrained_file, load_pretrained_state, read_pretrained, write_pretrained
from get3dhuman.nn.stylegan2 import StyleGAN2Generator

IMAGE_GENERATOR_FORMAT = "get3dhuman-image-generator"


class ImageGenerator(nn.Module):
    """A 2-D generator of human images: `ImageGenerator(**settings)` with the arguments of
    `StyleGAN2Generator` (img_channels 3); `network` is that generator. `load(path)` reads a
    network pickle or a file of `save_pretrained`."""

    def __init__(self, **settings):
        super().__init__()
        if settings.get("img_channels", 3) != 3:
            raise ValueError(f"img_channels must be 3 (RGB images), got {settings['img_channels']}")
        self.settings = {**settings, "img_channels": 3}
        self.network = StyleGAN2Generator(**self.settings)

    @property
    def z_dim(self) -> int:
        """Width of the latents z [B, z_dim] the network takes."""
        return self.network.z_dim

    @property
    def image_shape(self) -> tuple[int, int]:
        """(height, width) of the images: R x R, or R x R/2 for portraits."""
        synthesis = self.network.synthesis
        return synthesis.img_resolution, synthesis.img_resolution // (2 if synthesis.portrait else 1)

    def forward(self, z: torch.Tensor, truncation_psi: float = 1.0, truncation_cutoff: int | None = None,
                noise_mode: str = "const") -> torch.Tensor:
        """Images [B, H, W, 3] in [0, 1] of latents z [B, z_dim] (the network's [-1, 1] output,
        clamped); `truncation_psi` < 1 pulls the styles towards the average (StyleGAN's
        truncation trick), 'const' noise keeps the same latent to the same image. Always in
        eval mode: the average style is the loaded one, never updated (nothing trains it here)."""
        with evaluation_mode(self.network):
            images = self.network(z, truncation_psi, truncation_cutoff, noise_mode)
        return ((images.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1)

    def save_pretrained(self, path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> None:
        """Writes the weights and settings to one safetensors file (`nn.pretrained.write_pretrained`)."""
        write_pretrained(self, path, IMAGE_GENERATOR_FORMAT, self.settings, dtype)

    @classmethod
    def load(cls, path: str | os.PathLike, network: str = "G_ema") -> ImageGenerator:
        """The generator of `path`: a file of `save_pretrained`, or a StyleGAN2-ADA network
        pickle such as StyleGAN-Human's stylegan_human_v2_1024.pkl (its `network` entry, by default the
        moving average of the weights, 'G_ema'), in eval mode. Raises ValueError for a file of
        neither kind or a network of another architecture (StyleGAN3, conditional, non-skip)."""
        if is_pretrained_file(path, IMAGE_GENERATOR_FORMAT):
            tensors, settings, path = read_pretrained(path, IMAGE_GENERATOR_FORMAT, "")
            model = cls(**settings)
            load_pretrained_state(model, tensors, path)
            return model.eval()
        try:
            networks = read_network_pickle(path)
        except ValueError as error:
            raise ValueError(f"path: {os.fspath(path)} is neither an image generator file of "
                             f"`ImageGenerator.save_pretrained` nor a network pickle ({error})") from error
        held = [key for key, value in networks.items() if isinstance(value, PickledModule)]
        if network not in held:
            raise ValueError(f"network must be one of the pickle's networks {held}, got {network!r}")
        return cls.from_pickled(networks[network], f"{os.fspath(path)}[{network!r}]")

    @classmethod
    def from_pickled(cls, record: PickledModule, name: str = "the network") -> ImageGenerator:
        """The generator of a pickled StyleGAN2-ADA generator (`read_network_pickle`'s record):
        sizes from its tensors, clamping and channel rule from its constructor arguments; every
        tensor must fit (strict loading)."""
        kwargs = record.init_kwargs
        mapping = dict(kwargs.get("mapping_kwargs") or {})
        synthesis = dict(kwargs.get("synthesis_kwargs") or {})
        if "SynthesisInput" in record.class_names():
            raise ValueError(f"{name} is a StyleGAN3 generator, which this package does not run; use the StyleGAN2 "
                             "release (e.g. stylegan_human_v2_1024.pkl)")
        unsupported = {"c_dim": (kwargs.get("c_dim", 0), 0),
                       "architecture": (synthesis.get("architecture", "skip"), "skip"),
                       "lr_multiplier": (mapping.get("lr_multiplier", 0.01), 0.01),
                       "activation": (mapping.get("activation", "lrelu"), "lrelu")}
        for key, (value, expected) in unsupported.items():
            if value != expected:
                raise ValueError(f"{name}: {key} must be {expected!r} for this generator, got {value!r}")
        tensors = record.state_dict()
        blocks = [int(key.split(".")[1][1:]) for key in tensors if re.match(r"synthesis\.b\d+\.", key)]
        resolution = max(blocks, default=0)
        needed = ("mapping.fc0.weight", "synthesis.b4.const", f"synthesis.b{resolution}.torgb.weight")
        if any(key not in tensors for key in needed):
            raise ValueError(f"{name} is not a StyleGAN2 generator (it lacks one of {', '.join(needed[:2])}, "
                             "synthesis.bR.torgb.weight)")
        const = tensors["synthesis.b4.const"]
        settings = {
            "z_dim": tensors["mapping.fc0.weight"].shape[1],
            "w_dim": tensors["mapping.fc0.weight"].shape[0],
            "img_resolution": resolution,
            "img_channels": tensors[f"synthesis.b{resolution}.torgb.weight"].shape[0],
            "mapping_layers": sum(key.startswith("mapping.fc") and key.endswith(".weight") for key in tensors),
            "channel_base": synthesis.get("channel_base", 32768),
            "channel_max": synthesis.get("channel_max", 512),
            "conv_clamp": synthesis.get("conv_clamp"),
            "portrait": const.shape[2] * 2 == const.shape[1],
        }
        model = cls(**settings)
        try:
            model.network.load_state_dict({key: value.float() for key, value in tensors.items()})
        except RuntimeError as error:
            raise ValueError(f"{name} does not fit a StyleGAN2 generator of {settings}: {error}") from error
        return model.eval()


def matte_background(images: torch.Tensor, tolerance: float = 0.06) -> torch.Tensor:
    """[B, H, W] bool: the foreground of images [B, H, W, 3] in [0, 1] painted on a uniform
    background. The background colour of each image is the median of its border pixels; the
    background is the region of pixels within `tolerance` of it (every channel) that is
    4-connected to the border (scipy.ndimage.label), so a colour like the background's inside
    the figure, or a patch of background it encloses, stays foreground."""
    if images.dim() != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be [B, H, W, 3], got {tuple(images.shape)}")
    if not 0 <= tolerance < 1:
        raise ValueError(f"tolerance must be in [0, 1), got {tolerance}")
    from scipy import ndimage  # here, as in evaluate: importing the package needs no scipy

    images = images.float()
    border = torch.cat([images[:, 0], images[:, -1], images[:, :, 0], images[:, :, -1]], 1)
    color = border.median(1).values
    candidate = ((images - color[:, None, None]).abs().amax(-1) <= tolerance).cpu().numpy()
    cross = np.zeros((3, 3, 3), dtype=bool)  # 4-connected within each image, never across the batch
    cross[1] = [[False, True, False], [True, True, True], [False, True, False]]
    regions, _ = ndimage.label(candidate, structure=cross)
    edge = np.concatenate([regions[:, 0], regions[:, -1], regions[:, :, 0], regions[:, :, -1]], 1)
    background = np.isin(regions, np.unique(edge[edge > 0]))
    return torch.from_numpy(~background).to(images.device)


def _window(foreground: torch.Tensor, figure_height: float | None) -> tuple[int, int, int]:
    """(top, left, size) of the square of an image [H, W] (bool foreground) that `frame_figures` keeps."""
    height, width = foreground.shape
    rows = foreground.any(1).nonzero()
    if figure_height is None or not len(rows):
        size = max(height, width)
        return (height - size) // 2, (width - size) // 2, size
    top, bottom = int(rows[0]), int(rows[-1]) + 1
    size = max(round((bottom - top) / figure_height), 1)
    # Across, the figure's centroid: the body's axis whatever the arms do (a bounding box moves with them).
    weights = foreground.sum(0, dtype=torch.float64)
    centre = float((weights * (torch.arange(width, dtype=torch.float64, device=weights.device) + 0.5)).sum()
                   / weights.sum())
    return round((top + bottom - size) / 2), round(centre - size / 2), size


class FramedImages(NamedTuple):
    """`frame_figures`' result: images [B, S, S, 3] in [0, 1] (black background) and the
    foreground masks [B, S, S] in [0, 1] (the matte, resampled alike)."""

    images: torch.Tensor
    masks: torch.Tensor


def frame_figures(images: torch.Tensor, side: int, matte_tolerance: float = 0.06,
                  figure_height: float | None = None) -> FramedImages:
    """The Reconstructor's view of images [B, H, W, 3] in [0, 1] of people on a uniform
    background: the background (`matte_background` with `matte_tolerance`) made black, then a
    square of each resized (antialiased bilinear) to side x side, black where it leaves the
    image, and the matte framed alike. The square is the image padded to a centred square, or
    with `figure_height` in (0, 1] one framing the figure as the Reconstructor's training views
    do: `figure_height` of the side tall and centred, vertically by its extent, across by its
    centroid (0.9: a 1.8 m person in the 2 m views of scans, which are scaled to 1.8 m and
    centred, and of the synthetic humans)."""
    if side < 1:
        raise ValueError(f"side must be positive, got {side}")
    if figure_height is not None and not 0 < figure_height <= 1:
        raise ValueError(f"figure_height must be in (0, 1] or None, got {figure_height}")
    foreground = matte_background(images, matte_tolerance)
    layers = torch.cat([images.float() * foreground.unsqueeze(-1), foreground.unsqueeze(-1).float()], -1)
    layers = layers.permute(0, 3, 1, 2)  # [B, 4, H, W]: the colours on black, then the matte
    height, width = layers.shape[2:]
    squares = []
    for image, mask in zip(layers, foreground):
        top, left, size = _window(mask, figure_height)
        square = layers.new_zeros(4, size, size)
        rows, columns = slice(max(top, 0), min(top + size, height)), slice(max(left, 0), min(left + size, width))
        square[:, rows.start - top : rows.stop - top, columns.start - left : columns.stop - left] = image[:, rows, columns]
        if size != side:
            square = F.interpolate(square[None], size=(side, side), mode="bilinear", align_corners=False,
                                   antialias=size > side)[0]
        squares.append(square)
    framed = torch.stack(squares).clamp(0, 1).permute(0, 2, 3, 1)
    return FramedImages(framed[..., :3].contiguous(), framed[..., 3].contiguous())
