"""Evaluation of generated shapes and textures against held-out synthetic humans (`get3dhuman eval`).

Shapes are compared as surface point clouds in world coordinates (generated: points sampled
on the extracted mesh; reference: points on the analytic surface of held-out humans) by the
Chamfer distance (the mean squared nearest-neighbour distance, both ways, summed). From the
generated-by-reference distance matrix:
- COV: the fraction of reference shapes that are the nearest reference of some generated shape;
- MMD: the mean over reference shapes of the distance to their closest generated shape;
- 1-NNA: the leave-one-out accuracy of the 1-nearest-neighbour classifier telling generated
  from reference shapes in their union (0.5 is ideal, 1.0 fully separable).
Colour: the colour distance of two coloured clouds is the mean L1 RGB difference between each
point's colour and the colour of its nearest point in the other cloud, averaged over both
directions; 'color_mmd' and 'color_1-nna' are MMD and 1-NNA on it. (A per-sample error against
the reference nearest in shape would reward grey mean colours: it scores the synthetic world
itself worse than a generator of mean colours.)
A generated mesh without a surface counts as a cloud of one grey point at the box centre.

Besides a generator, two rows put its numbers in context, both made from the latents the
generator samples (`nn.latents_of_seeds`, z_shape): `evaluate_world`, the synthetic humans of
those latents themselves (analytic surfaces: what a perfect generator reaches at this sample
count), and `evaluate_prior`, the trained Reconstructor's meshes of their stand-in images (what
the Generator's prior loss pulls it towards: its diversity bounds the Generator's).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from get3dhuman.mesh import TexturedMesh
from get3dhuman.nn.generator import latents_of_seeds
from get3dhuman.ops import coarse_resolution_for
from get3dhuman.synthetic import human_color, human_parameters
from get3dhuman.synthetic.preview import render_humans
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


Nearest = tuple[torch.Tensor, torch.Tensor]  # (squared distances [N] float64, indices [N])


def _nearest_both_ways(a: torch.Tensor, b: torch.Tensor, chunk: int = 4096) -> tuple[Nearest, Nearest]:
    """For each point of a [N, 3] its nearest point of b [M, 3], and for each point of b its
    nearest point of a, from one pass over the pairwise distances (a in chunks of rows)."""
    a_to_b, a_to_b_index = [], []
    b_to_a = torch.full((len(b),), float("inf"), dtype=torch.float64)
    b_to_a_index = torch.zeros(len(b), dtype=torch.int64)
    for start in range(0, len(a), chunk):
        pairwise = torch.cdist(a[start:start + chunk].double(), b.double(), compute_mode="donot_use_mm_for_euclid_dist")
        value, index = pairwise.min(1)
        a_to_b.append(value)
        a_to_b_index.append(index)
        value, index = pairwise.min(0)
        closer = value < b_to_a  # strict: ties keep the earlier point, as one min over all of a would
        b_to_a = torch.where(closer, value, b_to_a)
        b_to_a_index = torch.where(closer, index + start, b_to_a_index)
    return (torch.cat(a_to_b).square(), torch.cat(a_to_b_index)), (b_to_a.square(), b_to_a_index)


def _check_point_clouds(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != 3 or b.shape[1] != 3 or not len(a) or not len(b):
        raise ValueError(f"a and b must be non-empty point clouds [N, 3], got {tuple(a.shape)} and {tuple(b.shape)}")


def chamfer_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean squared nearest-neighbour distance from a [N, 3] to b [M, 3] plus from b to a."""
    _check_point_clouds(a, b)
    (a_to_b, _), (b_to_a, _) = _nearest_both_ways(a, b)
    return float(a_to_b.mean() + b_to_a.mean())


Cloud = tuple[torch.Tensor, torch.Tensor]  # (points [N, 3], colours [N, 3] in [0, 1])


def cloud_distances(a: Cloud, b: Cloud) -> tuple[float, float]:
    """(Chamfer distance, colour distance) of two coloured clouds (see the module docstring)."""
    (points_a, colors_a), (points_b, colors_b) = a, b
    _check_point_clouds(points_a, points_b)
    if colors_a.shape != points_a.shape or colors_b.shape != points_b.shape:
        raise ValueError(f"colours must be [N, 3] like their points, got {tuple(colors_a.shape)} for "
                         f"{tuple(points_a.shape)} and {tuple(colors_b.shape)} for {tuple(points_b.shape)}")
    (squared_ab, nearest_ab), (squared_ba, nearest_ba) = _nearest_both_ways(points_a, points_b)
    color = ((colors_a - colors_b[nearest_ab]).abs().mean() + (colors_b - colors_a[nearest_ba]).abs().mean()) / 2
    return float(squared_ab.mean() + squared_ba.mean()), float(color)


def distance_matrices(rows: list[Cloud], columns: list[Cloud] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(Chamfer, colour) distances, each [len(rows), len(columns)], between coloured clouds;
    without `columns`, the symmetric matrices within `rows` (each pair computed once, zero
    diagonal)."""
    if columns is None:
        pairs = torch.zeros(len(rows), len(rows), 2, dtype=torch.float64)
        for i in range(len(rows)):
            for j in range(i + 1, len(rows)):
                pairs[i, j] = pairs[j, i] = torch.tensor(cloud_distances(rows[i], rows[j]), dtype=torch.float64)
    else:
        pairs = torch.tensor([[cloud_distances(r, c) for c in columns] for r in rows], dtype=torch.float64)
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
def evaluate_generator(generator, config: EvaluationConfig = EvaluationConfig(), batch_size: int = 4) -> dict[str, float]:
    """Metrics of `generator` (a get3dhuman.Generator; its samples seed .. seed + samples - 1)
    against the held-out humans (`cloud_metrics`)."""
    meshes = generator.sample(config.samples, seed=config.seed, resolution=config.resolution, batch_size=batch_size,
                              coarse_resolution=coarse_resolution_for(config.resolution))
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
        image = render_humans(human_parameters(part), side, 0.0, background=0.0).permute(0, 3, 1, 2) * 2 - 1
        meshes += reconstructor.extract_mesh(image.to(device), config.resolution,
                                             coarse_resolution=coarse_resolution_for(config.resolution))
    return mesh_metrics(meshes, config)
