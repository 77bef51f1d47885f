"""Evaluation of generated shapes and textures against held-out synthetic humans (`get3dhuman eval`).

Shapes are compared as surface point clouds in world coordinates (generated: points sampled
on the extracted mesh; reference: points on the analytic surface of held-out humans) by the
Chamfer distance (the mean squared nearest-neighbour distance, both ways, summed). From the
generated-by-reference distance matrix:
- COV: the fraction of reference shapes that are the nearest reference of some generated shape;
- MMD: the mean over reference shapes of the distance to their closest generated shape;
- 1-NNA: the leave-one-out accuracy of the 1-nearest-neighbour classifier telling generated
  from reference shapes in their union (0.5 is ideal, 1.0 fully separable).
Colour: for each generated shape and its nearest reference shape, the mean L1 RGB difference
between its sampled surface colours and the reference colours at the nearest reference points.
A generated mesh without a surface counts as a cloud of one point at the box centre.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from get3dhuman.mesh import TexturedMesh
from get3dhuman.ops import coarse_resolution_for
from get3dhuman.synthetic import human_color, human_parameters
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


def _nearest(a: torch.Tensor, b: torch.Tensor, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared distance [N] and index [N] of the nearest point of b [M, 3] to each point of a [N, 3]."""
    distances, indices = [], []
    for start in range(0, len(a), chunk):
        pairwise = torch.cdist(a[start:start + chunk].double(), b.double(), compute_mode="donot_use_mm_for_euclid_dist")
        value, index = pairwise.min(1)
        distances.append(value.square())
        indices.append(index)
    return torch.cat(distances), torch.cat(indices)


def chamfer_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean squared nearest-neighbour distance from a [N, 3] to b [M, 3] plus from b to a."""
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != 3 or b.shape[1] != 3 or not len(a) or not len(b):
        raise ValueError(f"a and b must be non-empty point clouds [N, 3], got {tuple(a.shape)} and {tuple(b.shape)}")
    return float(_nearest(a, b)[0].mean() + _nearest(b, a)[0].mean())


def distance_matrix(rows: list[torch.Tensor], columns: list[torch.Tensor]) -> torch.Tensor:
    """Chamfer distances [len(rows), len(columns)] between point clouds."""
    return torch.tensor([[chamfer_distance(r, c) for c in columns] for r in rows], dtype=torch.float64)


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


@torch.no_grad()
def evaluate_generator(generator, config: EvaluationConfig = EvaluationConfig(), batch_size: int = 4) -> dict[str, float]:
    """Metrics of `generator` (a get3dhuman.Generator; its samples seed .. seed + samples - 1)
    against the held-out humans: {'cov', 'mmd', '1-nna', 'color_l1', 'empty_fraction'}."""
    _, reference, reference_colors = reference_humans(config)
    meshes = generator.sample(config.samples, seed=config.seed, resolution=config.resolution, batch_size=batch_size,
                              coarse_resolution=coarse_resolution_for(config.resolution))
    sampled = [mesh_points(mesh, config.points, config.seed + i) for i, mesh in enumerate(meshes)]
    generated = [points for points, _ in sampled]
    references = list(reference)
    cross = distance_matrix(generated, references)
    cov, mmd = coverage_and_mmd(cross)
    nna = one_nearest_neighbour_accuracy(distance_matrix(generated, generated), distance_matrix(references, references), cross)
    color_errors = []
    for (points, colors), match in zip(sampled, cross.argmin(1).tolist()):
        _, nearest = _nearest(points, reference[match])
        color_errors.append((colors - reference_colors[match][nearest]).abs().mean().item())
    return {"cov": cov, "mmd": mmd, "1-nna": nna, "color_l1": float(np.mean(color_errors)),
            "empty_fraction": sum(mesh.is_empty for mesh in meshes) / len(meshes)}
