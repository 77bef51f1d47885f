"""Evaluation of generated shapes and textures against held-out synthetic humans (`get3dhuman eval`).

Shapes are surface point clouds in world coordinates compared by the Chamfer distance (mean
squared nearest-neighbour distance, both ways); from the generated-by-reference matrix: COV
(the fraction of references that are some sample's nearest), MMD (the mean distance of each
reference to its closest sample) and 1-NNA (leave-one-out 1-NN accuracy telling samples from
references: 0.5 is ideal). Colour: the mean L1 RGB difference between each point and its
nearest point in the other cloud, both ways, with MMD and 1-NNA on it. A mesh without a surface
is one grey point at the box centre. `evaluate_world` (the synthetic humans of the same latents:
the ideal) and `evaluate_prior` (the Reconstructor's meshes of their stand-in images: the
bound of the prior loss) put a generator's numbers in context.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np
import torch

from get3dhuman._checks import check_int, check_seed
from get3dhuman.mesh import TexturedMesh
from get3dhuman.nn.generator import latents_of_seeds
from get3dhuman.refine import front_views, refine_meshes, view_errors
from get3dhuman.synthetic import human_color, human_parameters
from get3dhuman.synthetic.preview import stand_in_images
from get3dhuman.synthetic.sampling import sample_surface

EVAL_SEED_OFFSET = 2_000_000_011  # reference humans come from a stream no training stage uses


@dataclasses.dataclass(frozen=True)
class EvaluationConfig:
    """Settings of `evaluate_generator`."""

    samples: int = 64  # generated shapes
    references: int = 64  # held-out synthetic humans
    points: int = 2048  # surface points per shape
    resolution: int = 128  # mesh extraction resolution
    z_dim: int = 64  # latent size used to draw the reference humans
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("samples", "references", "points", "resolution", "z_dim"):
            check_int(getattr(self, name), name, 1)
        check_seed(self.seed)


Cloud = tuple[torch.Tensor, torch.Tensor]  # (points [N, 3], colours [N, 3] in [0, 1])


class _IndexedCloud(NamedTuple):
    points: np.ndarray  # [N, 3] float64
    colors: np.ndarray | None  # [N, 3]
    tree: object  # scipy.spatial.cKDTree of the points: exact nearest neighbours


def _indexed(points: torch.Tensor, colors: torch.Tensor | None = None, name: str = "a") -> _IndexedCloud:
    if points.dim() != 2 or points.shape[1] != 3 or not len(points):
        raise ValueError(f"{name} must be a non-empty point cloud [N, 3], got {tuple(points.shape)}")
    if colors is not None and colors.shape != points.shape:
        raise ValueError(f"the colours of {name} must be [N, 3] like its points {tuple(points.shape)}, got {tuple(colors.shape)}")
    from scipy.spatial import cKDTree

    array = points.detach().cpu().double().numpy()
    return _IndexedCloud(array, None if colors is None else colors.detach().cpu().double().numpy(), cKDTree(array))


def _distances(a: _IndexedCloud, b: _IndexedCloud) -> tuple[float, float | None]:
    """(Chamfer distance, colour distance or None without colours) of two indexed clouds."""
    a_to_b, nearest_ab = b.tree.query(a.points)
    b_to_a, nearest_ba = a.tree.query(b.points)
    chamfer = float(np.square(a_to_b).mean() + np.square(b_to_a).mean())
    if a.colors is None or b.colors is None:
        return chamfer, None
    return chamfer, float((np.abs(a.colors - b.colors[nearest_ab]).mean() + np.abs(b.colors - a.colors[nearest_ba]).mean()) / 2)


def chamfer_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean squared nearest-neighbour distance from a [N, 3] to b [M, 3] plus from b to a."""
    return _distances(_indexed(a, name="a"), _indexed(b, name="b"))[0]


def cloud_distances(a: Cloud, b: Cloud) -> tuple[float, float]:
    """(Chamfer distance, colour distance) of two coloured clouds (see the module docstring)."""
    return _distances(_indexed(*a, name="a"), _indexed(*b, name="b"))


def distance_matrices(rows: list[Cloud], columns: list[Cloud] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(Chamfer, colour) distances, each [len(rows), len(columns)], between coloured clouds;
    without `columns`, the symmetric matrices within `rows` (each pair computed once, zero
    diagonal). Each cloud's search tree is built once."""
    indexed_rows = [_indexed(*cloud, name=f"rows[{i}]") for i, cloud in enumerate(rows)]
    if columns is None:
        pairs = torch.zeros(len(rows), len(rows), 2, dtype=torch.float64)
        for i in range(len(rows)):
            for j in range(i + 1, len(rows)):
                pairs[i, j] = pairs[j, i] = torch.tensor(_distances(indexed_rows[i], indexed_rows[j]), dtype=torch.float64)
    else:
        indexed_columns = [_indexed(*cloud, name=f"columns[{j}]") for j, cloud in enumerate(columns)]
        pairs = torch.tensor([[_distances(r, c) for c in indexed_columns] for r in indexed_rows], dtype=torch.float64)
        pairs = pairs.reshape(len(rows), len(columns), 2)
    return pairs[..., 0], pairs[..., 1]


def coverage_and_mmd(generated_to_reference: torch.Tensor) -> tuple[float, float]:
    """(COV, MMD) from the [G, R] distance matrix of generated to reference shapes."""
    cov = generated_to_reference.argmin(1).unique().numel() / generated_to_reference.shape[1]
    mmd = generated_to_reference.min(0).values.mean().item()
    return cov, mmd


def one_nearest_neighbour_accuracy(generated: torch.Tensor, reference: torch.Tensor, cross: torch.Tensor) -> float:
    """1-NNA from the [G, G] and [R, R] distances within the sets and the [G, R] distances between them."""
    count_g, count_r = len(generated), len(reference)
    union = torch.cat([torch.cat([generated, cross], 1), torch.cat([cross.T, reference], 1)])
    union.fill_diagonal_(float("inf"))  # leave one out
    labels = torch.cat([torch.zeros(count_g), torch.ones(count_r)])
    return (labels[union.argmin(1)] == labels).double().mean().item()


def mesh_points(mesh: TexturedMesh, count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(points [count, 3], colours [count, 3]) sampled uniformly by area on the mesh (trimesh),
    colours interpolated barycentrically; an empty mesh gives the box centre in grey."""
    if mesh.is_empty:
        return torch.zeros(1, 3), torch.full((1, 3), 0.5)
    import trimesh

    surface = mesh.to_trimesh()
    points, faces = trimesh.sample.sample_surface(surface, count, seed=seed)
    weights = trimesh.triangles.points_to_barycentric(surface.triangles[faces], points)
    colors = np.einsum("nk,nkc->nc", weights, mesh.colors.detach().cpu().numpy()[surface.faces[faces]])
    return torch.from_numpy(np.asarray(points)).float(), torch.from_numpy(colors).float().clamp(0, 1)


def reference_humans(config: EvaluationConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(params [R, P], surface points [R, points, 3], colours [R, points, 3]) of the held-out humans."""
    generator = torch.Generator().manual_seed(config.seed + EVAL_SEED_OFFSET)
    params = human_parameters(torch.randn(config.references, config.z_dim, generator=generator))
    points = sample_surface(params, config.points, generator)
    return params, points, human_color(params, points)


def cloud_metrics(clouds: list[Cloud], config: EvaluationConfig, empty_fraction: float = 0.0) -> dict[str, float]:
    """Metrics of generated coloured clouds against the held-out humans: {'cov', 'mmd',
    '1-nna', 'color_mmd', 'color_1-nna', 'empty_fraction'} (the last as given)."""
    _, reference_points, reference_colors = reference_humans(config)
    references = list(zip(reference_points, reference_colors))
    cross, color_cross = distance_matrices(clouds, references)
    within_generated, color_within_generated = distance_matrices(clouds)
    within_references, color_within_references = distance_matrices(references)
    cov, mmd = coverage_and_mmd(cross)
    return {"cov": cov, "mmd": mmd, "1-nna": one_nearest_neighbour_accuracy(within_generated, within_references, cross),
            "color_mmd": coverage_and_mmd(color_cross)[1],
            "color_1-nna": one_nearest_neighbour_accuracy(color_within_generated, color_within_references, color_cross),
            "empty_fraction": empty_fraction}


def mesh_metrics(meshes: list[TexturedMesh], config: EvaluationConfig) -> dict[str, float]:
    """`cloud_metrics` of `config.points` surface points sampled on each mesh (mesh i with seed
    config.seed + i); empty meshes count in 'empty_fraction'."""
    clouds = [mesh_points(mesh, config.points, config.seed + i) for i, mesh in enumerate(meshes)]
    return cloud_metrics(clouds, config, sum(mesh.is_empty for mesh in meshes) / max(len(meshes), 1))


def _sampled_latents(config: EvaluationConfig, z_dim: int) -> torch.Tensor:
    """z_shape [samples, z_dim] of the generator's samples seed .. seed + samples - 1."""
    return latents_of_seeds(range(config.seed, config.seed + config.samples), z_dim)[0]


@torch.no_grad()
def evaluate_generator(generator, config: EvaluationConfig = EvaluationConfig(), batch_size: int = 4,
                       refiner=None) -> dict[str, float]:
    """Metrics of `generator` (a get3dhuman.Generator; its samples seed .. seed + samples - 1)
    against the held-out humans (`cloud_metrics`). With a `refiner` (a trained Refiner) the
    vertex colours are its refined front and back views back-projected onto the meshes
    (refine.refine_meshes), as `get3dhuman sample --refiner` colours them (shapes are unchanged),
    and the row adds 'front_refined_l1', 'front_rendered_l1', 'front_refined_overlap_l1' and
    'front_rendered_overlap_l1' (`refine.front_view_errors` of `samples` latents no training
    stage draws, their meshes of `resolution` rendered `batch_size` at a time)."""
    meshes = generator.sample(config.samples, seed=config.seed, resolution=config.resolution, batch_size=batch_size)
    if refiner is not None:
        device = next(generator.parameters()).device
        meshes = [mesh for b in range(0, config.samples, batch_size)
                  for mesh in refine_meshes(generator, refiner, meshes[b : b + batch_size])]
        first = EVAL_SEED_OFFSET + config.seed
        held_out = latents_of_seeds(range(first, first + config.samples), generator.config.z_dim)[0]
        views = [front_views(generator, refiner, part.to(device), config.resolution) for part in held_out.split(batch_size)]
        errors = view_errors(*(torch.cat(parts) for parts in zip(*views)))  # per pixel over all latents
        return {**mesh_metrics(meshes, config), **{f"front_{key}": value for key, value in errors.items()}}
    return mesh_metrics(meshes, config)


def evaluate_world(z_dim: int, config: EvaluationConfig = EvaluationConfig()) -> dict[str, float]:
    """Metrics of the synthetic humans of the generator's latents (z_shape of samples seed ..,
    for a generator of latent size `z_dim`): analytic surface points and colours, no mesh."""
    params = human_parameters(_sampled_latents(config, z_dim))
    points = sample_surface(params, config.points, torch.Generator().manual_seed(config.seed))
    return cloud_metrics(list(zip(points, human_color(params, points))), config)


@torch.no_grad()
def evaluate_prior(reconstructor, config: EvaluationConfig = EvaluationConfig(), batch_size: int = 4) -> dict[str, float]:
    """Metrics of the meshes `reconstructor` (a trained get3dhuman.Reconstructor) makes of the
    stand-in images of the generator's latents (front view, as the prior cache is made)."""
    z = _sampled_latents(config, reconstructor.config.z_dim)
    device = next(reconstructor.parameters()).device
    side = reconstructor.config.backbone_resolution
    meshes = []
    for part in z.split(batch_size):
        image = stand_in_images(part, side).permute(0, 3, 1, 2) * 2 - 1
        meshes += reconstructor.extract_mesh(image.to(device), config.resolution)
    return mesh_metrics(meshes, config)
