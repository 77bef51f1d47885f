"""Ground-truth samples for training and evaluation, following PIFu's scheme.

Surface points come from points of a thin shell around the surface projected onto it (close
to area-uniform for a shell thin against the curvature); occupancy samples are surface points
displaced by N(0, sigma^2) plus uniform points in the box; colour samples are surface points
displaced slightly along the normal, labelled with the colour of their surface point.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from get3dhuman.synthetic.human import human_color, human_sdf

BOX = 1.0  # samples live in [-BOX, BOX]^3
SHELL = 0.05  # metres: half-width of the shell whose points are projected onto the surface
SURFACE_TOLERANCE = 1e-3
MAX_ROUNDS = 50  # candidate batches before sample_surface gives up


class OccupancySamples(NamedTuple):
    """points [B, N, 3] and inside [B, N] (1.0 inside, 0.0 outside)."""

    points: torch.Tensor
    inside: torch.Tensor


class ColorSamples(NamedTuple):
    """points [B, N, 3] near the surface and their colours [B, N, 3] in [0, 1]."""

    points: torch.Tensor
    colors: torch.Tensor


def _sdf_and_gradient(params, points):
    with torch.enable_grad():
        points = points.detach().requires_grad_()
        distance = human_sdf(params, points)
        (gradient,) = torch.autograd.grad(distance.sum(), points)
    return distance.detach(), gradient


def project_to_surface(params: torch.Tensor, points: torch.Tensor, iterations: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """Newton steps p <- p - sdf(p) grad / |grad|^2; returns (points, final |sdf|) [B, N, 3], [B, N]."""
    for _ in range(iterations):
        distance, gradient = _sdf_and_gradient(params, points)
        points = points - (distance / gradient.square().sum(-1).clamp_min(1e-12)).unsqueeze(-1) * gradient
    return points, human_sdf(params, points).abs()


def sample_surface(params: torch.Tensor, count: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """[B, count, 3] points on the surfaces (|sdf| < SURFACE_TOLERANCE) of the humans `params` [B, P]."""
    batch = params.shape[0]
    chosen = [[] for _ in range(batch)]
    found = [0] * batch
    for _ in range(MAX_ROUNDS):
        if min(found) >= count:
            break
        candidates = (torch.rand(batch, 8 * count, 3, generator=generator) * 2 - 1) * BOX
        near = human_sdf(params, candidates).abs() < SHELL
        # Shell points of each human, topped up to the same number with repeats for projection.
        picked = [candidates[b][near[b]] for b in range(batch)]
        width = max(1, max(len(p) for p in picked))
        padded = torch.stack([p[torch.arange(width) % max(1, len(p))] if len(p) else torch.zeros(width, 3) for p in picked])
        projected, residual = project_to_surface(params, padded)
        for b in range(batch):
            mine, error = projected[b][: len(picked[b])], residual[b][: len(picked[b])]  # drop the repeats
            good = mine[(error < SURFACE_TOLERANCE) & (mine.abs() <= BOX).all(-1)]
            chosen[b].append(good)
            found[b] += len(good)
    else:
        if min(found) < count:
            raise RuntimeError(f"found only {min(found)} of {count} surface points: is there a surface in the box?")
    return torch.stack([torch.cat(c)[:count] for c in chosen])


def sample_occupancy(params: torch.Tensor, count: int, sigma: float = 0.05, uniform_ratio: float = 1 / 16,
                     generator: torch.Generator | None = None) -> OccupancySamples:
    """PIFu's occupancy samples: surface points + N(0, sigma^2), and a `uniform_ratio` share of
    uniform points in the box, labelled inside/outside by the sign of the SDF."""
    uniform = int(round(count * uniform_ratio))
    surface = sample_surface(params, count - uniform, generator)
    near = surface + sigma * torch.randn(surface.shape, generator=generator)
    box = (torch.rand(params.shape[0], uniform, 3, generator=generator) * 2 - 1) * BOX
    points = torch.cat([near, box], 1)
    return OccupancySamples(points, (human_sdf(params, points) < 0).float())


def sample_surface_colors(params: torch.Tensor, count: int, offset: float = 0.005,
                          generator: torch.Generator | None = None) -> ColorSamples:
    """Colour samples: surface points moved by N(0, offset^2) along the normal, with the colour
    of the surface point they came from."""
    surface = sample_surface(params, count, generator)
    _, gradient = _sdf_and_gradient(params, surface)
    normal = gradient / gradient.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    shift = offset * torch.randn(surface.shape[:2], generator=generator).unsqueeze(-1)
    return ColorSamples(surface + shift * normal, human_color(params, surface))
