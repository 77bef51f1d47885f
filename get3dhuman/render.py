"""Orthographic sphere tracing of implicit fields: mask, depth, normal and colour maps.

Cameras share the pixel-aligned query's convention: a calibration [B, 4, 4] maps world points
to NDC, where x runs left to right and y top to bottom over the image (align_corners=True:
NDC -1 and 1 are the centres of the first and last pixels) and z grows towards the camera.
`orbit_calibration` builds the cameras of Get3DHuman's renders: rotated about the vertical
(y) axis, 0 degrees looking at the front (+z) of a human, 180 at the back.

The field is any callable ``sdf(points [B, N, 3]) -> [B, N]`` in world units, negative inside
and close to a true distance (sphere tracing steps by its value); for an occupancy field,
pass a signed-distance-like transform of it. Maps are differentiable with respect to the
parameters the callables close over: the hit point is re-attached to the graph by implicit
differentiation of f(x) = 0 along the ray, x = x* - d f(x*) / (grad f(x*) . d), exact to first
order; normals come from the field's gradient with create_graph, so normal losses train too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

Field = Callable[[torch.Tensor], torch.Tensor]


class Rendering(NamedTuple):
    """Maps of one rendering, each [B, H, W] or [B, H, W, 3]; background pixels hold zeros.

    mask: 1.0 where the ray hit the surface. depth: NDC z of the hit (the pixel-aligned depth
    feature's z). normal: unit surface normal in camera space (x right, y up, z towards the
    camera). color: colour_fn at the hit (zeros without one). points: world hit points.
    """

    mask: torch.Tensor
    depth: torch.Tensor
    normal: torch.Tensor
    color: torch.Tensor
    points: torch.Tensor


def orbit_calibration(angles_deg: torch.Tensor, extent: float = 1.0) -> torch.Tensor:
    """[B, 4, 4] world -> NDC calibrations of orthographic cameras rotated by `angles_deg` [B]
    about the y axis; the image covers [-extent, extent]^2 of the (rotated) x/y plane."""
    angles = torch.deg2rad(torch.as_tensor(angles_deg, dtype=torch.float32)).reshape(-1)
    cos, sin, scale = torch.cos(angles), torch.sin(angles), 1.0 / extent
    calib = torch.zeros(len(angles), 4, 4)
    calib[:, 0, 0], calib[:, 0, 2] = scale * cos, -scale * sin
    calib[:, 1, 1] = -scale  # image rows run downwards
    calib[:, 2, 0], calib[:, 2, 2] = scale * sin, scale * cos
    calib[:, 3, 3] = 1
    return calib


def _gradient(field: Field, points: torch.Tensor, create_graph: bool) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.enable_grad():
        if not points.requires_grad:
            points = points.requires_grad_()
        value = field(points)
        (gradient,) = torch.autograd.grad(value.sum(), points, create_graph=create_graph)
    return value, gradient


def sphere_trace(field: Field, calib: torch.Tensor, resolution: int = 256, color_fn: Field | None = None,
                 steps: int = 96, epsilon: float = 1e-4) -> Rendering:
    """Renders `field` through the orthographic cameras `calib` [B, 4, 4] at resolution^2.

    Rays start on the NDC plane z = +1 and march towards z = -1, stepping by the field value;
    a ray hits where |field| < epsilon. color_fn(points [B, N, 3]) -> [B, N, 3] colours hits.
    """
    if calib.dim() != 3 or calib.shape[1:] != (4, 4):
        raise ValueError(f"calib must be [B, 4, 4], got {tuple(calib.shape)}")
    if resolution < 2:
        raise ValueError(f"resolution must be >= 2, got {resolution}")
    batch, device = calib.shape[0], calib.device
    linear, offset = calib[:, :3, :3], calib[:, :3, 3]
    inverse = torch.linalg.inv(linear)
    coords = torch.linspace(-1, 1, resolution, device=device)
    v, u = torch.meshgrid(coords, coords, indexing="ij")
    ndc = torch.stack([u, v, torch.ones_like(u)], -1).reshape(1, -1, 3).expand(batch, -1, -1)
    origin = (ndc - offset.unsqueeze(1)) @ inverse.transpose(1, 2)  # world points on the z = +1 plane
    toward = torch.tensor([0.0, 0.0, -1.0], device=device).expand(batch, 3)
    direction = toward.unsqueeze(1) @ inverse.transpose(1, 2)  # world displacement per NDC unit of depth
    ndc_length = direction.norm(dim=-1, keepdim=True)  # [B, 1, 1]
    direction = direction / ndc_length
    far = 2 * ndc_length[..., 0]  # world length of the NDC depth range, [B, 1]

    count = resolution * resolution
    t = torch.zeros(batch, count, device=device)
    active = torch.ones(batch, count, dtype=torch.bool, device=device)
    with torch.no_grad():
        for _ in range(steps):
            if not active.any():
                break
            # Evaluate only the rays still marching, padded to a common count per batch row.
            counts = active.sum(1)
            width = int(counts.max())
            order = torch.argsort((~active).to(torch.int8), dim=1, stable=True)[:, :width]
            valid = torch.arange(width, device=device).unsqueeze(0) < counts.unsqueeze(1)
            t_active = torch.gather(t, 1, order)
            points = torch.gather(origin, 1, order.unsqueeze(-1).expand(-1, -1, 3)) + t_active.unsqueeze(-1) * direction
            value = field(points)
            t_new = torch.where(valid, t_active + value, t_active)
            t = t.scatter(1, order, t_new)
            done = valid & ((value.abs() < epsilon) | (t_new > far))
            active = active.scatter(1, order, torch.gather(active, 1, order) & ~done)

    # Implicit differentiation: re-attach the hit points to the field's parameters.
    surface = origin + t.unsqueeze(-1) * direction
    value, gradient = _gradient(field, surface.detach().clone(), create_graph=torch.is_grad_enabled())
    hit = (t < far) & (value.detach().abs() < 10 * epsilon)
    along = (gradient.detach() * direction).sum(-1)
    safe_along = torch.where(along.abs() > 1e-6, along, -torch.ones_like(along))
    surface = surface.detach() - direction * (value / safe_along).unsqueeze(-1)
    mask = hit.float()
    normal_world = gradient / gradient.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    # Camera axes: the calibration's rows without their scale, y flipped to point up.
    rotation = linear / linear.norm(dim=2, keepdim=True) * torch.tensor([1.0, -1.0, 1.0], device=device).reshape(1, 3, 1)
    normal = normal_world @ rotation.transpose(1, 2)
    depth = ((surface @ linear.transpose(1, 2)) + offset.unsqueeze(1))[..., 2]
    color = color_fn(surface) if color_fn is not None else torch.zeros_like(surface)

    def image(x):
        shape = (batch, resolution, resolution) + x.shape[2:]
        return torch.where(hit.reshape(batch, -1, *([1] * (x.dim() - 2))), x, torch.zeros_like(x)).reshape(shape)

    return Rendering(mask.reshape(batch, resolution, resolution), image(depth), image(normal), image(color), image(surface))
