"""The pixel-aligned reconstructor (PIFu style): the source of Get3DHuman's feature priors.

image [B, 3, S, S] -> hourglass filters -> shape and texture feature volumes [B, F, S/4, S/4]
-> the same decoders as the Generator (occupancy, colour). Trained on (image, occupancy and
colour samples); for a latent z, its volumes of the 2-D generator's image are the targets the
Generator's volumes are pulled towards (the latent prior).
"""

from __future__ import annotations

import dataclasses
import os

import torch

from get3dhuman.mesh import TexturedMesh
from get3dhuman.nn.generator import GeneratorConfig, PixelAlignedModel
from get3dhuman.nn.hourglass import HGFilter
from get3dhuman.nn.modes import evaluation_mode
from get3dhuman.nn.pretrained import WEIGHTS_DIR, load_pretrained_state, read_pretrained, write_pretrained

PRETRAINED_FORMAT = "get3dhuman-reconstructor/1"
DEFAULT_WEIGHTS = os.path.join(WEIGHTS_DIR, "reconstructor-small.safetensors")


class Reconstructor(PixelAlignedModel):
    """Image -> (shape volume, texture volume), plus query_occupancy / query_color.

    Args:
        config: a GeneratorConfig or a preset name ('official', 'small', 'tiny'); the image side
            is config.backbone_resolution, so the volumes match the Generator's.
        image_channels: channels of the input image (3: RGB).
    """

    def __init__(self, config: GeneratorConfig | str = "official", image_channels: int = 3):
        super().__init__(config)
        c = self.config
        self.image_channels = image_channels
        self.filter_shape = HGFilter(image_channels, c.hourglass_depth, c.feature_channels)
        self.filter_texture = HGFilter(image_channels, c.hourglass_depth, c.feature_channels)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """image [B, image_channels, S, S] (S = config.backbone_resolution) -> (shape volume,
        texture volume), each [B, F, V, V]."""
        side = self.config.backbone_resolution
        if image.dim() != 4 or tuple(image.shape[1:]) != (self.image_channels, side, side):
            raise ValueError(f"image must be [B, {self.image_channels}, {side}, {side}], got {tuple(image.shape)}")
        return self.filter_shape(image), self.filter_texture(image)

    @torch.no_grad()
    def extract_mesh(self, image: torch.Tensor, resolution: int = 256, *, color: bool = True,
                     **options) -> list[TexturedMesh]:
        """Textured meshes of the humans in `image` [B, image_channels, S, S] (values in [-1, 1],
        seen by the front camera `calibration`), one per row, in eval mode: `meshes_from_volumes`
        of the reconstructed volumes (grey without `color`); options go there."""
        with evaluation_mode(self):
            shape_volume, texture_volume = self(image)
            return self.meshes_from_volumes(shape_volume, texture_volume if color else None, resolution, **options)

    def save_pretrained(self, path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> None:
        """Writes the weights, the sizes (`config`, `image_channels`) and the camera
        (`calibration`) to one safetensors file that `Reconstructor.from_pretrained(path)` loads
        (`nn.pretrained.write_pretrained`: `dtype`, one of STORAGE_DTYPES, rounds the
        floating-point weights; the camera stays float32). `get3dhuman export --reconstructor`
        writes one from a stage-1 run."""
        sizes = {**dataclasses.asdict(self.config), "image_channels": self.image_channels}
        write_pretrained(self, path, PRETRAINED_FORMAT, sizes, dtype, {"calibration": self.calibration})

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> Reconstructor:
        """A Reconstructor in eval mode (float32) from a file of `save_pretrained`; without
        `path`, the package's (DEFAULT_WEIGHTS, the stage-1 model of the default Generator).
        FileNotFoundError when the file is missing, ValueError when it is not such a file."""
        tensors, sizes, path = read_pretrained(path, PRETRAINED_FORMAT, DEFAULT_WEIGHTS)
        image_channels = sizes.pop("image_channels")
        config = GeneratorConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in sizes.items()})
        reconstructor = cls(config, image_channels)
        calibration = tensors.pop("calibration")
        load_pretrained_state(reconstructor, tensors, path)
        reconstructor.calibration.copy_(calibration)
        return reconstructor.to(device).eval()
