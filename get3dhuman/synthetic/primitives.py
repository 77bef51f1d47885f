"""Signed distance primitives, batched: points [B, N, 3], shape parameters [B, ...] -> [B, N].

Negative inside. Each is exact or within a few percent of the true distance near the surface
(|gradient| close to 1), which the renderer's sphere tracing and the smooth union rely on.
"""

from __future__ import annotations

import torch

_TINY = 1e-18  # squared metres: keeps square roots differentiable at exactly zero


def safe_norm(vectors: torch.Tensor) -> torch.Tensor:
    """Euclidean norm over the last dimension whose gradient is finite at zero (an exact zero
    would give 0 * inf = NaN in the backward of every part of a union)."""
    return vectors.square().sum(-1).clamp_min(_TINY).sqrt()


def tapered_capsule(points: torch.Tensor, start: torch.Tensor, end: torch.Tensor, radius_start: torch.Tensor,
                    radius_end: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Segment start -> end [B, 3] swept by a sphere whose radius [B] varies linearly along it.

    Returns (distance [B, N], t [B, N]): t in [0, 1] is the position of the closest segment
    point (used to restrict clothing to part of a limb). For mild tapers the distance is
    within a few percent of exact.
    """
    axis = end - start
    length_sq = axis.square().sum(-1).clamp_min(1e-12)
    offset = points - start.unsqueeze(1)
    t = ((offset * axis.unsqueeze(1)).sum(-1) / length_sq.unsqueeze(1)).clamp(0, 1)
    closest = start.unsqueeze(1) + t.unsqueeze(-1) * axis.unsqueeze(1)
    radius = radius_start.unsqueeze(1) + t * (radius_end - radius_start).unsqueeze(1)
    return safe_norm(points - closest) - radius, t


def ellipsoid(points: torch.Tensor, center: torch.Tensor, radii: torch.Tensor) -> torch.Tensor:
    """Axis-aligned ellipsoid, center [B, 3], radii [B, 3]: the distance bound
    k0 (k0 - 1) / k1, exact on the surface with a unit gradient there."""
    local = points - center.unsqueeze(1)
    scaled = local / radii.unsqueeze(1)
    k0 = safe_norm(scaled)
    k1 = safe_norm(local / radii.square().unsqueeze(1)).clamp_min(1e-9)
    return k0 * (k0 - 1) / k1


def smooth_union(distances: torch.Tensor, blend: float) -> torch.Tensor:
    """Smooth minimum over the last dimension: -blend * logsumexp(-d / blend). Joins parts with
    fillets of about `blend` and stays 1-Lipschitz."""
    return -blend * torch.logsumexp(-distances / blend, dim=-1)


def capped_cone(points: torch.Tensor, bottom: torch.Tensor, top: torch.Tensor, radius_bottom: torch.Tensor,
                radius_top: torch.Tensor) -> torch.Tensor:
    """Vertical (y-axis) cone frustum between heights bottom < top [B] on the axis x = z = 0
    with radii [B] at each end; flat caps. Exact distance."""
    half = ((top - bottom) / 2).unsqueeze(1)
    radial = safe_norm(points[..., [0, 2]])
    axial = points[..., 1] - ((top + bottom) / 2).unsqueeze(1)
    r_bottom, r_top = radius_bottom.unsqueeze(1), radius_top.unsqueeze(1)
    # Distance to the nearer cap disc, and to the slanted side segment, in the (radial, axial) plane.
    cap_radius = torch.where(axial < 0, r_bottom, r_top)
    cap = torch.stack([radial - torch.minimum(radial, cap_radius), axial.abs() - half], -1)
    # Side segment: top rim - t * side_dir, t in [0, 1], reaches the bottom rim at t = 1.
    side_dir = torch.stack([(r_top - r_bottom).expand_as(radial), 2 * half.expand_as(radial)], -1)
    to_rim = torch.stack([radial - r_top, axial - half], -1)
    along = ((-to_rim * side_dir).sum(-1) / side_dir.square().sum(-1)).clamp(0, 1)
    side = to_rim + side_dir * along.unsqueeze(-1)
    inside = (side[..., 0] < 0) & (cap[..., 1] < 0)
    distance = torch.minimum(cap.square().sum(-1), side.square().sum(-1)).clamp_min(_TINY).sqrt()
    return torch.where(inside, -distance, distance)
