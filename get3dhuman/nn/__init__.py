"""Network modules of get3dhuman.

- ImplicitDecoder: PIFu point MLPs with re-concatenated inputs (fused by ops.query_field).
- StyleGAN2Generator (MappingNetwork, SynthesisNetwork): the 2-D backbones, StyleGAN2-ADA names.
- HGFilter: the authors' hourglass filter turning backbone maps into feature volumes.
- ResNetDiscriminator: the StyleGAN2 'resnet' discriminator on feature volumes.
- Generator (GeneratorConfig, PRESETS, latents_of_seeds): the two-branch Get3DHuman generator.
- ImageGenerator: the 2-D human image generator of stage 2 (StyleGAN-Human's network pickle, read
  as data by network_pickle.read_network_pickle; frame_figures prepares its images).
- Reconstructor: the PIFu-style image -> feature volumes reconstructor (the prior source).
- Refiner, MultiScalePatchDiscriminator: the refinement U-Net and its PatchGAN; OfficialRefiner:
  the authors' refinement U-Net (`Refiner.from_official_checkpoint`).
- evaluation_mode, frozen_parameters: eval mode / no weight gradients for a block, restored after.
- pretrained: the one-file weights of `save_pretrained` / `from_pretrained` (Generator, Refiner).
"""

from get3dhuman.nn.discriminator import ResNetDiscriminator
from get3dhuman.nn.generator import PRESETS, Generator, GeneratorConfig, ShapeFeatures, latents_of_seeds
from get3dhuman.nn.hourglass import HGFilter
from get3dhuman.nn.image_generator import ImageGenerator
from get3dhuman.nn.implicit import ImplicitDecoder
from get3dhuman.nn.modes import evaluation_mode, frozen_parameters
from get3dhuman.nn.reconstructor import Reconstructor
from get3dhuman.nn.refiner import MultiScalePatchDiscriminator, OfficialRefiner, Refiner
from get3dhuman.nn.stylegan2 import MappingNetwork, StyleGAN2Generator, SynthesisNetwork

__all__ = [
    "PRESETS",
    "Generator",
    "GeneratorConfig",
    "HGFilter",
    "ImageGenerator",
    "ImplicitDecoder",
    "MappingNetwork",
    "MultiScalePatchDiscriminator",
    "OfficialRefiner",
    "Reconstructor",
    "Refiner",
    "ResNetDiscriminator",
    "ShapeFeatures",
    "StyleGAN2Generator",
    "SynthesisNetwork",
    "evaluation_mode",
    "frozen_parameters",
    "latents_of_seeds",
]
