"""Signed distance primitives and their smooth union: points [B, N, 3] -> distances [B, N].

Negative inside. Each primitive is exact or within a few percent of the true distance near the
surface (|gradient| close to 1), which the renderer's sphere tracing and the smooth union rely on.

The synthetic humans are tables of primitives (`PRIMITIVE_WIDTH` floats a row, kind `KINDS`,
one part each): `sdf_union` evaluates such a table in one compiled pass per point (CPU and CUDA
kernels, csrc/sdf_union: distance, gradient with respect to the points, nearest part), and
`reference_sdf_union` with the torch functions below (the oracle, and the path for gradients
with respect to the table).
"""

from __future__ import annotations

from typing import NamedTuple

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


ELLIPSOID, CAPSULE, CONE, CUT_ELLIPSOID = range(4)
KINDS = ("ellipsoid", "capsule", "cone", "cut_ellipsoid")  # names of the kinds 0..3
# Floats per primitive row; the last is 1 where the primitive is active for that batch row.
# ellipsoid: centre (3), radii (3); capsule: start (3), end (3), radius at start and at end;
# cone: bottom y, top y, radius at bottom and at top; cut_ellipsoid: centre (3), radii (3),
# y0, z0, slope: max(ellipsoid, plane (y0 + slope (z - z0) - y) / sqrt(1 + slope^2)).
PRIMITIVE_WIDTH = 12
MAX_PRIMITIVES = 64  # per table (the kernels keep a part's distance per primitive on the stack)


class UnionDistances(NamedTuple):
    """distance [B, N] of a smooth union of parts and the index of the nearest part [B, N] (int64)."""

    distance: torch.Tensor
    nearest: torch.Tensor


def check_union_tables(kinds: torch.Tensor, parts: torch.Tensor) -> None:
    """Raises ValueError naming the argument unless kinds [Q] lie in KINDS' range and parts [Q]
    grow from 0 in steps of 0 or 1 (every part has a primitive). Reads the values: on a CUDA
    device a host synchronisation each, so callers that query one table many times check it
    once (on its CPU copy) and pass check_tables=False to `sdf_union`."""
    if int(kinds.min()) < 0 or int(kinds.max()) >= len(KINDS):
        raise ValueError(f"kinds must lie in [0, {len(KINDS)}) ({', '.join(KINDS)}), got "
                         f"[{int(kinds.min())}, {int(kinds.max())}]")
    steps = parts[1:] - parts[:-1]
    if int(parts[0]) != 0 or (steps.numel() and (int(steps.min()) < 0 or int(steps.max()) > 1)):
        raise ValueError("parts must start at 0 and grow by 0 or 1 from one primitive to the next")


def check_union_inputs(points: torch.Tensor, primitives: torch.Tensor, kinds: torch.Tensor,
                       parts: torch.Tensor, check_tables: bool = True) -> None:
    """Raises naming the argument unless points is [B, N, 3], primitives [B, Q, PRIMITIVE_WIDTH]
    (1 <= Q <= MAX_PRIMITIVES), kinds and parts integer [Q], all on one device, and (with
    `check_tables`) the tables' values are valid (`check_union_tables`)."""
    if not isinstance(points, torch.Tensor) or points.dim() != 3 or points.shape[2] != 3:
        raise ValueError(f"points must be a [B, N, 3] tensor, got {tuple(getattr(points, 'shape', ()))}")
    if primitives.dim() != 3 or primitives.shape[0] != points.shape[0] or primitives.shape[2] != PRIMITIVE_WIDTH:
        raise ValueError(f"primitives must be [B, Q, {PRIMITIVE_WIDTH}] with B = {points.shape[0]}, "
                         f"got {tuple(primitives.shape)}")
    count = primitives.shape[1]
    for name, index in (("kinds", kinds), ("parts", parts)):
        if index.dim() != 1 or index.shape[0] != count or index.dtype.is_floating_point:
            raise ValueError(f"{name} must be an integer [Q] tensor with Q = {count}, got "
                             f"{index.dtype} {tuple(index.shape)}")
    if not 1 <= count <= MAX_PRIMITIVES:
        raise ValueError(f"primitives must hold 1 to {MAX_PRIMITIVES} primitives (Q), got {count}")
    for name, tensor in (("primitives", primitives), ("kinds", kinds), ("parts", parts)):
        if tensor.device != points.device:
            raise ValueError(f"{name} must be on the device of points ({points.device}), got {tensor.device}")
    if check_tables:
        check_union_tables(kinds, parts)


def primitive_distance(kind: int, rows: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Distances [B, N] of one primitive of kind `kind` (rows [B, PRIMITIVE_WIDTH]) at points
    [B, N, 3], by the torch functions of this module."""
    if kind == ELLIPSOID:
        return ellipsoid(points, rows[:, 0:3], rows[:, 3:6])
    if kind == CAPSULE:
        return tapered_capsule(points, rows[:, 0:3], rows[:, 3:6], rows[:, 6], rows[:, 7])[0]
    if kind == CONE:
        return capped_cone(points, rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3])
    if kind == CUT_ELLIPSOID:
        y0, z0, slope = (rows[:, i].unsqueeze(1) for i in (6, 7, 8))
        plane = (y0 + slope * (points[..., 2] - z0) - points[..., 1]) / (1 + slope.square()).sqrt()
        return ellipsoid(points, rows[:, 0:3], rows[:, 3:6]).maximum(plane)
    raise ValueError(f"kind must lie in [0, {len(KINDS)}), got {kind!r}")


def reference_part_distances(points: torch.Tensor, primitives: torch.Tensor, kinds: torch.Tensor,
                             parts: torch.Tensor, absent: float) -> torch.Tensor:
    """Per-part distances [B, N, P]: the minimum over each part's active primitives, `absent`
    where a batch row has none (whole-array torch operations; differentiable)."""
    check_union_inputs(points, primitives, kinds, parts)
    kinds, parts = kinds.tolist(), parts.tolist()
    columns = []
    for q, (kind, part) in enumerate(zip(kinds, parts)):
        rows = primitives[:, q]
        active = (rows[:, -1] != 0).unsqueeze(1)
        distance = torch.where(active, primitive_distance(kind, rows, points), torch.full_like(points[..., 0], absent))
        if part == len(columns):
            columns.append(distance)
        else:
            columns[part] = columns[part].minimum(distance)
    return torch.stack(columns, -1)


def reference_sdf_union(points: torch.Tensor, primitives: torch.Tensor, kinds: torch.Tensor, parts: torch.Tensor,
                        blend: float, absent: float) -> UnionDistances:
    """`sdf_union` by whole-array torch operations: smooth_union of reference_part_distances, and
    their argmin. The test oracle, differentiable with respect to points and primitives."""
    distances = reference_part_distances(points, primitives, kinds, parts, absent)
    return UnionDistances(smooth_union(distances, blend), distances.argmin(-1))


def _setup_union_context(ctx, inputs, output):
    # The analytic gradient of the distance [B, N, 3], a constant of the backward: no second derivatives.
    ctx.save_for_backward(output[1].detach())


def _union_backward(ctx, grad_distance, grad_gradient, grad_nearest):
    (gradient,) = ctx.saved_tensors
    return grad_distance.unsqueeze(-1) * gradient, None, None, None, None, None, None


torch.library.register_autograd("get3dhuman::sdf_union", _union_backward, setup_context=_setup_union_context)


def sdf_union(points: torch.Tensor, primitives: torch.Tensor, kinds: torch.Tensor, parts: torch.Tensor,
              blend: float, absent: float, check_tables: bool = True) -> UnionDistances:
    """The smooth union -blend * logsumexp(-d / blend) over parts of the primitive table at
    points, and the nearest part, by the compiled kernels (CPU or CUDA, float32).

    Args:
        points: [B, N, 3] float32. primitives: [B, Q, PRIMITIVE_WIDTH] float32 rows (see
            PRIMITIVE_WIDTH; a row whose last entry is 0 is skipped). kinds: [Q] integer kinds
            (KINDS). parts: [Q] part of each primitive, nondecreasing from 0: a part's distance
            is the minimum over its active primitives, `absent` where it has none.
        blend: fillet size of the union (> 0). absent: distance of a part with no active primitive.
        check_tables: check the values of kinds and parts (`check_union_tables`: on CUDA, host
            synchronisations); False for tables the caller has checked, which then launches
            without any (invalid tables then give wrong distances, not an error).

    Returns:
        UnionDistances (distance [B, N], nearest [B, N] int64: the first part of least
        distance), equal to reference_sdf_union up to float rounding. Differentiable once with
        respect to points (the analytic gradient; one taken with create_graph has no graph of
        its own); not with respect to the table.
    """
    check_union_inputs(points, primitives, kinds, parts, check_tables)
    if points.dtype != torch.float32 or primitives.dtype != torch.float32:
        raise TypeError(f"points and primitives must be float32, got {points.dtype} and {primitives.dtype}")
    if primitives.requires_grad:
        raise ValueError("primitives must not require grad: sdf_union differentiates with respect to points only "
                         "(reference_sdf_union differentiates both)")
    if not blend > 0:
        raise ValueError(f"blend must be > 0, got {blend!r}")
    with_gradient = points.requires_grad and torch.is_grad_enabled()
    distance, _, nearest = torch.ops.get3dhuman.sdf_union(points, primitives, kinds.to(torch.int32),
                                                          parts.to(torch.int32), float(blend), float(absent), with_gradient)
    return UnionDistances(distance, nearest)


@torch.library.register_fake("get3dhuman::sdf_union")
def _sdf_union_fake(points, primitives, kinds, parts, blend, absent, with_gradient):
    batch, count = points.shape[:2]
    return (points.new_empty(batch, count), points.new_empty(batch if with_gradient else 0, count, 3),
            points.new_empty(batch, count, dtype=torch.int64))
