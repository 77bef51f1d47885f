"""An avatar through the authors' release: their checkpoint's sizes, their colouring (two traced,
refined views lifted onto the mesh), meshed and coloured by the package (`AuthorsColouring`)
against the authors' way on the same model: a dense lattice evaluated in 10,000-point chunks by
grid_sample and the Conv1d decoder, skimage's marching cubes, and their colouring with every ray
taking all 55 steps through the same reference queries.

Without the authors' weights, the model is an official-size stand-in whose shape decoder is set
to describe a synthetic human (the depth slab between its front and back surfaces, read from two
feature channels), with a random texture decoder, random texture features and a random official
refiner. The networks that make the volumes cost the same both ways and are not timed.
"""

import copy
import dataclasses
import time

import numpy as np
import pytest
import torch
from bench_settings import DEVICES, QUICK, median_seconds

from get3dhuman import Generator
from get3dhuman.authors import AuthorsColouring, authors_views, lift_views
from get3dhuman.nn import PRESETS, OfficialRefiner
from get3dhuman.nn.generator import OFFICIAL_CALIBRATION, OUTSIDE_IMAGE_OCCUPANCY
from get3dhuman.ops import reference_query_field
from get3dhuman.render import orbit_calibration, sphere_trace
from get3dhuman.synthetic import HumanField, human_parameters

skimage_measure = pytest.importorskip("skimage.measure")
from scipy.spatial import cKDTree  # noqa: E402

RESOLUTIONS = [32] if QUICK else [128, 256]
OURS_RESOLUTIONS = [32] if QUICK else [128, 256, 512]
AUTHORS_CHUNK = 10_000  # their eval_grid's points per query
SLOPE = 8.0  # the stand-in's occupancy slope: their pseudo-distance then about the NDC distance


def _stand_in(device: str = "cpu"):
    """(generator, shape volume, texture volume, refiner) of the official sizes (see the module
    docstring). Shape features: channel 0 half the human's thickness, channel 1 its middle depth
    (both in depth-feature units, 1.28 per NDC unit); the decoder's occupancy is
    sigmoid(-SLOPE (0.99 |z - middle| - half)), through leaky ReLU pairs that pass signs on."""
    torch.manual_seed(0)
    generator = Generator(dataclasses.replace(PRESETS["official"], authors_conventions=True)).eval()
    generator.calibration.copy_(OFFICIAL_CALIBRATION)
    size = generator.config.volume_resolution
    human = human_parameters(torch.randn(1, 64, generator=torch.Generator().manual_seed(0)))
    views = sphere_trace(HumanField(human.repeat(2, 1)).sdf, orbit_calibration(torch.tensor([0.0, 180.0])), size)
    front, back = views.depth[0].detach(), -views.depth[1].detach().flip(1)  # the back camera: x mirrored, z negated
    hit = views.mask[0] > 0
    scale = generator.config.depth_scale
    half = torch.where(hit, scale * (front - back) / 2, torch.tensor(-0.3))
    middle = torch.where(hit, scale * (front + back) / 2, torch.tensor(0.0))
    shape_volume = torch.zeros(1, generator.config.feature_channels, size, size)
    shape_volume[0, 0], shape_volume[0, 1] = half, middle
    with torch.no_grad():
        for parameter in generator.mlp_shape.parameters():
            parameter.zero_()
        layers, depth_channel = generator.mlp_shape.filters, generator.config.feature_channels
        # layer 0: z - middle, middle - z, half, -half
        layers[0].weight[0, depth_channel, 0], layers[0].weight[0, 1, 0] = 1.0, -1.0
        layers[0].weight[1, depth_channel, 0], layers[0].weight[1, 1, 0] = -1.0, 1.0
        layers[0].weight[2, 0, 0], layers[0].weight[3, 0, 0] = 1.0, -1.0
        # layer 1: d = 0.99 |z - middle| - half, and -d
        layers[1].weight[0, :4, 0] = torch.tensor([1.0, 1.0, -1 / 1.01, 1 / 1.01])
        layers[1].weight[1, :4, 0] = -layers[1].weight[0, :4, 0]
        # layer 2: d, -d again; layer 3: -SLOPE d
        layers[2].weight[0, :2, 0] = torch.tensor([1.0, -1.0]) / 1.01
        layers[2].weight[1, :2, 0] = torch.tensor([-1.0, 1.0]) / 1.01
        layers[3].weight[0, :2, 0] = torch.tensor([-SLOPE, SLOPE]) / 1.01
    texture_volume = torch.nn.functional.interpolate(torch.randn(1, generator.config.feature_channels, 8, 8),
                                                     size=size, mode="bicubic", align_corners=True)
    refiner = OfficialRefiner().eval()
    return generator.to(device), shape_volume.to(device), texture_volume.to(device), refiner.to(device)


class _TheirQueries:
    """The generator's decoders queried the authors' way: grid_sample then the Conv1d decoder
    (ops.reference_query_field), their outside-image rule for occupancy."""

    def __init__(self, generator, chunk: int | None = None):
        self.generator, self.config, self.calibration = generator, generator.config, generator.calibration
        self.chunk = chunk

    def _query(self, decoder, volume, points, calib):
        calib = torch.eye(4, device=volume.device)[None] if calib is None else calib
        parts = points.split(self.chunk or points.shape[1], dim=1)
        return torch.cat([reference_query_field(decoder, volume, part, calib, self.config.depth_scale)
                          for part in parts], 2)

    def shape_query(self, shape_volume):
        return lambda points: self.query_occupancy(shape_volume, points)  # their way projects nothing

    def query_occupancy(self, shape_volume, points, calib=None):
        occupancy = self._query(self.generator.mlp_shape, shape_volume, points, calib)[:, 0]
        ndc = points if calib is None else points @ calib[:, :2, :3].transpose(1, 2) + calib[:, :2, 3].unsqueeze(1)
        return occupancy.masked_fill((ndc[..., :2].abs() > 1).any(-1), OUTSIDE_IMAGE_OCCUPANCY)

    def query_color(self, shape_volume, texture_volume, points, calib=None):
        return self._query(self.generator.mlp_texture, torch.cat([shape_volume, texture_volume], 1), points,
                           calib).transpose(1, 2)


def their_way(generator, shape_volume, texture_volume, refiner, resolution: int) -> dict:
    """Their inference on the volumes, timed by stage: the dense lattice's occupancy, skimage,
    the two views (every ray all 55 steps) and their refinement, the lift and nearest search.
    Returns the stage seconds and the faces."""
    seconds = {}
    start = time.perf_counter()
    lower, upper, cells = generator.mesh_lattice(resolution)  # their grid: its first `resolution` points
    axes = [low + torch.arange(resolution) * (high - low) / cells for low, high in zip(lower, upper)]
    lattice = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(1, -1, 3)
    dense = _TheirQueries(generator, AUTHORS_CHUNK)
    with torch.no_grad():
        values = dense.query_occupancy(shape_volume, lattice.to(shape_volume.device), generator.calibration[None])
    volume = values.reshape((resolution,) * 3).cpu().numpy()
    seconds["dense grid"] = time.perf_counter() - start
    start = time.perf_counter()
    vertices, faces, _, _ = skimage_measure.marching_cubes(volume, 0.5)
    vertices = vertices * np.array([(h - l) / cells for l, h in zip(lower, upper)]) + np.array(lower)
    seconds["marching cubes"] = time.perf_counter() - start
    start = time.perf_counter()
    with torch.no_grad():
        _, refined, depths = authors_views(_TheirQueries(generator), shape_volume, texture_volume, refiner, resolution,
                                           exhaustive=True)
    seconds["views"] = time.perf_counter() - start
    start = time.perf_counter()
    points, colours = lift_views(refined, depths)
    vertex_colours = colours[cKDTree(points).query(vertices, k=1)[1]]
    seconds["lift"] = time.perf_counter() - start
    return {"seconds": seconds, "faces": len(faces), "colours": vertex_colours}


@pytest.fixture(scope="module")
def stand_in():
    return _stand_in()


@pytest.mark.parametrize("resolution", RESOLUTIONS)
def test_an_avatar_the_authors_way(benchmark, record, stand_in, resolution):
    generator, shape_volume, texture_volume, refiner = stand_in
    result = benchmark.pedantic(lambda: their_way(generator, shape_volume, texture_volume, refiner, resolution),
                                rounds=1, iterations=1)
    benchmark.group = f"an avatar through the authors' release, {resolution}^3"
    benchmark.extra_info.update(seconds=result["seconds"], faces=result["faces"])
    record(f"authors' release avatar {resolution}^3", "authors-dense", median_seconds(benchmark), 0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("resolution", OURS_RESOLUTIONS)
def test_an_avatar_the_packages_way(benchmark, record, stand_in, resolution, device):
    generator, shape_volume, texture_volume, refiner = (copy.deepcopy(part).to(device) for part in stand_in)

    def avatar():
        colouring = AuthorsColouring(refiner)
        mesh = generator.meshes_from_volumes(shape_volume, texture_volume, resolution, recolor=colouring)[0]
        if device == "cuda":
            torch.cuda.synchronize()
        return mesh

    mesh = benchmark.pedantic(avatar, rounds=1 if resolution >= 512 else 2, iterations=1)
    benchmark.group = f"an avatar through the authors' release, {resolution}^3"
    benchmark.extra_info.update(faces=len(mesh.faces), device=device)
    case = f"authors' release avatar {resolution}^3" + ("" if device == "cpu" else f" {device}")
    record(case, "ours", median_seconds(benchmark), 0)
