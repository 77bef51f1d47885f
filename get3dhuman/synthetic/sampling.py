"""Ground-truth samples for training and evaluation, following PIFu's scheme.

Surface points come from points of a thin shell around the surface projected onto it (close
to area-uniform for a shell thin against the curvature; the shell points are drawn only in the
coarse cells it can cross, which is the same distribution at a fraction of the SDF calls);
occupancy samples are surface points displaced by N(0, sigma^2) plus uniform points in the box;
colour samples are surface points displaced slightly along the normal, labelled with the colour
of their surface point.

Samples live on the device of the parameters; the random numbers are always drawn on the CPU
(from `generator`, or torch's default CPU generator), so a seed gives the same draws on any
device.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from get3dhuman.synthetic.human import HumanField

BOX = 1.0  # samples live in [-BOX, BOX]^3
SHELL = 0.05  # metres: half-width of the shell whose points are projected onto the surface
SURFACE_TOLERANCE = 1e-3
MAX_ROUNDS = 50  # candidate batches before sample_surface gives up
CELLS = 16  # lattice cells per box side from which sample_surface draws its candidates
CELL_MARGIN = 1.0  # cell diagonals of slack in candidate_cells


class OccupancySamples(NamedTuple):
    """points [B, N, 3] and inside [B, N] (1.0 inside, 0.0 outside)."""

    points: torch.Tensor
    inside: torch.Tensor


class ColorSamples(NamedTuple):
    """points [B, N, 3] near the surface and their colours [B, N, 3] in [0, 1]."""

    points: torch.Tensor
    colors: torch.Tensor


def _uniform(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    return torch.rand(shape, generator=generator).to(device)


def _normal(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    return torch.randn(shape, generator=generator).to(device)


def _field_of(params: torch.Tensor | HumanField) -> HumanField:
    return params if isinstance(params, HumanField) else HumanField(params)


def _sdf_and_gradient(field: HumanField, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.enable_grad():
        points = points.detach().requires_grad_()
        distance = field.sdf(points)
        (gradient,) = torch.autograd.grad(distance.sum(), points)
    return distance.detach(), gradient


def project_to_surface(params: torch.Tensor | HumanField, points: torch.Tensor, iterations: int = 6,
                       tolerance: float = SURFACE_TOLERANCE / 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Newton steps p <- p - sdf(p) grad / |grad|^2 on the humans `params` [B, P] (or their
    HumanField), up to `iterations`, stopping early once every |sdf| < `tolerance`. Returns
    (points, final |sdf|) [B, N, 3], [B, N]."""
    field = _field_of(params)
    for _ in range(iterations):
        distance, gradient = _sdf_and_gradient(field, points)
        if (distance.abs() < tolerance).all():
            break
        points = points - (distance / gradient.square().sum(-1).clamp_min(1e-12)).unsqueeze(-1) * gradient
    else:
        distance = field.sdf(points)
    return points, distance.abs()


def candidate_cells(params: torch.Tensor | HumanField) -> torch.Tensor:
    """[B, CELLS^3] bool: the cells of a CELLS^3 lattice over the box that may hold points of
    the shell |sdf| < SHELL of the humans `params` [B, P] (or their HumanField): |sdf(centre)| <
    SHELL + CELL_MARGIN cell diagonals, which misses no shell point while the SDF's slope stays
    below 2 * CELL_MARGIN (tests check the cover)."""
    field = _field_of(params)
    side = 2 * BOX / CELLS
    axis = -BOX + side * (torch.arange(CELLS, dtype=torch.float32, device=field.params.device) + 0.5)
    centres = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(1, -1, 3)
    distance = field.sdf(centres.expand(field.params.shape[0], -1, -1))
    return distance.abs() < SHELL + CELL_MARGIN * side * 3**0.5


def sample_surface(params: torch.Tensor | HumanField, count: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """[B, count, 3] points on the surfaces (|sdf| < SURFACE_TOLERANCE) of the humans `params`
    [B, P] (or their HumanField).

    Points drawn uniformly in the cells that may hold the shell |sdf| < SHELL (candidate_cells)
    are kept when inside the shell and projected onto the surface (project_to_surface); each
    round draws as many candidates as the yield so far says are still needed."""
    field = _field_of(params)
    batch, side, device = field.params.shape[0], 2 * BOX / CELLS, field.params.device
    cells = candidate_cells(field)
    cell_count = cells.sum(1)
    # Lower corners of each human's cells, padded to a common length (the padding is never drawn).
    order = torch.sort((~cells).byte(), dim=1, stable=True).indices[:, : max(1, int(cell_count.max()))]
    corners = torch.stack([order // CELLS**2, order // CELLS % CELLS, order % CELLS], -1) * side - BOX
    chosen = [[] for _ in range(batch)]
    found = torch.zeros(batch, dtype=torch.long)
    drawn = kept = 0
    for _ in range(MAX_ROUNDS):
        missing = (count - found).clamp_min(0)
        if int(missing.max()) == 0 or int(cell_count.min()) == 0:
            break
        yield_so_far = max(kept / drawn, 0.05) if drawn else 0.25
        number = min(int(int(missing.max()) / yield_so_far * 1.2) + 16, 64 * count)
        which = (_uniform((batch, number), generator, device) * cell_count.unsqueeze(1)).long()
        candidates = corners.gather(1, which.unsqueeze(-1).expand(-1, -1, 3)) + _uniform((batch, number, 3), generator, device) * side
        near = field.sdf(candidates).abs() < SHELL
        # Shell points of each human, topped up to the same number with repeats for projection.
        picked = [candidates[b][near[b]] for b in range(batch)]
        width = max(1, max(len(p) for p in picked))
        padded = torch.stack([p[torch.arange(width, device=device) % max(1, len(p))] if len(p)
                              else torch.zeros(width, 3, device=device) for p in picked])
        projected, residual = project_to_surface(field, padded)
        for b in range(batch):
            mine, error = projected[b][: len(picked[b])], residual[b][: len(picked[b])]  # drop the repeats
            good = mine[(error < SURFACE_TOLERANCE) & (mine.abs() <= BOX).all(-1)]
            chosen[b].append(good)
            found[b] += len(good)
        drawn, kept = drawn + number * batch, kept + sum(len(c[-1]) for c in chosen)
    if int(found.min()) < count:
        raise RuntimeError(f"found only {int(found.min())} of {count} surface points: is there a surface in the box?")
    return torch.stack([torch.cat(c)[:count] for c in chosen])


def sample_occupancy(params: torch.Tensor | HumanField, count: int, sigma: float = 0.05, uniform_ratio: float = 1 / 16,
                     generator: torch.Generator | None = None) -> OccupancySamples:
    """PIFu's occupancy samples of the humans `params` [B, P] (or their HumanField): surface
    points + N(0, sigma^2), and a `uniform_ratio` share of uniform points in the box, labelled
    inside/outside by the sign of the SDF."""
    field = _field_of(params)
    batch, device = field.params.shape[0], field.params.device
    uniform = int(round(count * uniform_ratio))
    surface = sample_surface(field, count - uniform, generator)
    near = surface + sigma * _normal(surface.shape, generator, device)
    box = (_uniform((batch, uniform, 3), generator, device) * 2 - 1) * BOX
    points = torch.cat([near, box], 1)
    return OccupancySamples(points, (field.sdf(points) < 0).float())


def sample_surface_colors(params: torch.Tensor | HumanField, count: int, offset: float = 0.005,
                          generator: torch.Generator | None = None) -> ColorSamples:
    """Colour samples of the humans `params` [B, P] (or their HumanField): surface points moved
    by N(0, offset^2) along the normal, with the colour of the surface point they came from."""
    field = _field_of(params)
    surface = sample_surface(field, count, generator)
    _, gradient = _sdf_and_gradient(field, surface)
    normal = gradient / gradient.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    shift = offset * _normal(surface.shape[:2], generator, field.params.device).unsqueeze(-1)
    return ColorSamples(surface + shift * normal, field.color(surface))
