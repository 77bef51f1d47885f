"""get3dhuman: a fast, installable Get3DHuman (textured 3D human generation).

Public names:
- Generator: the two-branch Get3DHuman generator (presets 'official', 'small', 'tiny';
  Generator.from_official_checkpoint loads the authors' weights).
- Reconstructor, Refiner: the pixel-aligned reconstructor and the refinement U-Net
  (Refiner.from_official_checkpoint loads the authors' refinement network).
- TexturedMesh: vertices, faces, vertex colours and normals (and a UV texture where baked);
  .to_trimesh(), .export(path). Generator.extract_mesh / Generator.sample produce them;
  MeshingOptions says how (narrow band, compute dtype, decimation, texture size).
- build_info(): what was compiled and what this machine can run.
- ops: the custom operators (pixel-aligned sampling, fused decoded queries) and their
  pure-torch references.
- nn: network modules (StyleGAN2Generator, HGFilter, ImplicitDecoder, ResNetDiscriminator, ...).
- applications (imported on use): latent walks, retexturing a shape, inverting an image.
- authors (imported on use): the authors' two-view colouring (AuthorsColouring).
- dataset, verify, evaluate, train (imported on use): `sample` datasets and their checks,
  metrics, the training stages. texture: decimation, UV atlases, baking.
"""

import importlib.metadata

from get3dhuman._ext import load_extension

__version__ = importlib.metadata.version("get3dhuman")

load_extension()

from get3dhuman import nn, ops  # noqa: E402
from get3dhuman.info import build_info  # noqa: E402
from get3dhuman.mesh import MeshingOptions, TexturedMesh  # noqa: E402
from get3dhuman.nn import Generator, Reconstructor, Refiner  # noqa: E402

__all__ = ["Generator", "MeshingOptions", "Reconstructor", "Refiner", "TexturedMesh", "__version__", "build_info", "nn",
           "ops"]
