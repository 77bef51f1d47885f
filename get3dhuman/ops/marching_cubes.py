"""Marching cubes on dense volumes and on sparse cell sets, and a pure-torch reference.

Conventions (shared with scikit-image, so results compare directly): a volume is [D, H, W];
vertex coordinates are array indices (axis 0, 1, 2), then scaled by `spacing` and shifted by
`origin`. A corner counts as above the surface when its value > level, compared as real numbers
(`iso_threshold`: not against the level rounded to the volume's dtype). Faces are oriented so
that their normals (right-hand rule) point towards increasing values: outward for a signed
distance that is negative inside; `flip=True` reverses them (outward for an occupancy that is
high inside).

Guarantees: one vertex per crossed lattice edge (welded), a closed 2-manifold wherever the
surface does not reach the volume's border (on a face whose above corners sit diagonally, the
above corners are always cut off separately, so neighbouring cells agree), deterministic order
(vertices by (i, j, k, axis) of the edge's start, triangles by cell), the same topology and
order on the CPU and CUDA. Memory beyond the output is one bit per voxel plus O(D * H) counts.
Not differentiable.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from get3dhuman._checks import is_finite_number

_DTYPES = (torch.float32, torch.float64)


def _triple(name: str, value, positive: bool = False) -> tuple[float, float, float]:
    values = (value,) * 3 if isinstance(value, numbers.Real) else tuple(value)
    if len(values) != 3 or not all(is_finite_number(v) and (v > 0 or not positive) for v in values):
        kind = "positive finite" if positive else "finite"
        raise ValueError(f"{name} must be a {kind} number or three {kind} numbers, got {value!r}")
    return tuple(float(v) for v in values)


def _check_level(level) -> float:
    if not is_finite_number(level):
        raise ValueError(f"level must be a finite float, got {level!r}")
    return float(level)


def iso_threshold(level: float, dtype: torch.dtype) -> float:
    """The largest value of `dtype` not above `level`: a value of that dtype exceeds it exactly
    when it exceeds `level` (as scikit-image compares a float32 volume with a float level; torch's
    `tensor > level` would round the level to the nearest float32 first). The kernels' twin is
    csrc/iso_level.h."""
    rounded = torch.tensor(level, dtype=dtype)
    if float(rounded) > level:
        rounded = torch.nextafter(rounded, torch.tensor(-math.inf, dtype=dtype))
    return float(rounded)


def marching_cubes(volume, level: float = 0.0, *, spacing: float | Sequence[float] = 1.0,
                   origin: float | Sequence[float] = 0.0, flip: bool = False,
                   pad_value: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The iso-surface `volume == level` as a welded triangle mesh.

    Args:
        volume: [D, H, W] float32/float64 tensor (CPU or CUDA) or numpy array.
        level: the iso-value.
        spacing, origin: vertex = origin + spacing * index, per axis (spacing > 0).
        flip: orient normals towards decreasing values instead.
        pad_value: when given, the volume is surrounded by one voxel of this value, so shapes
            that touch the border close (use +inf for an SDF, -inf for an occupancy: the cap then
            lies exactly on the border). Coordinates stay those of the unpadded volume.

    Returns:
        vertices [V, 3] float32 and faces [F, 3] int64 on the volume's device; empty when the
        level is not crossed. A volume holding NaN is refused (ValueError), as are NaN corner
        values by `marching_cubes_sparse`, and so a narrow band that read a NaN (which compares
        as below any level, so it looks like a crossing): no vertex is NaN.
    """
    if isinstance(volume, np.ndarray):
        volume = torch.from_numpy(volume)
    if not isinstance(volume, torch.Tensor):
        raise TypeError(f"volume must be a torch.Tensor or numpy array, got {type(volume).__name__}")
    if volume.dim() != 3:
        raise ValueError(f"volume must be [D, H, W], got shape {tuple(volume.shape)}")
    if volume.dtype not in _DTYPES:
        raise TypeError(f"volume must be float32 or float64, got {volume.dtype}")
    level = _check_level(level)
    nans = int(torch.isnan(volume).sum())
    if nans:  # a NaN voxel would place its edges' vertices at NaN
        raise ValueError(f"volume must not hold NaN, got {nans} NaN voxels (+-inf is allowed)")
    # A spacing <= 0 would fold or mirror the mesh (mirrored normals point inwards).
    spacing, origin = _triple("spacing", spacing, positive=True), _triple("origin", origin)
    if pad_value is not None:
        if not isinstance(pad_value, numbers.Real) or isinstance(pad_value, bool) or math.isnan(pad_value):
            raise ValueError(f"pad_value must be a number or None, got {pad_value!r}")
        volume = F.pad(volume.unsqueeze(0), (1, 1, 1, 1, 1, 1), value=float(pad_value))[0]
    vertices, faces = torch.ops.get3dhuman.marching_cubes_dense(volume, level, bool(flip))
    shift = -1.0 if pad_value is not None else 0.0
    return _place(vertices, spacing, tuple(o + shift * s for o, s in zip(origin, spacing))), faces


def _place(vertices: torch.Tensor, spacing, origin) -> torch.Tensor:
    if spacing == (1.0, 1.0, 1.0) and origin == (0.0, 0.0, 0.0):
        return vertices
    scale = torch.tensor(spacing, dtype=vertices.dtype, device=vertices.device)
    shift = torch.tensor(origin, dtype=vertices.dtype, device=vertices.device)
    return torch.addcmul(shift, vertices, scale)


def marching_cubes_sparse(cells: torch.Tensor, corner_values: torch.Tensor, dims: Sequence[int], level: float = 0.0,
                          *, flip: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Marching cubes on a sparse set of cells (no dense volume).

    Args:
        cells: [M] int64 keys ((b * R0 + i) * R1 + j) * R2 + k, strictly increasing, over a batch
            of R0 x R1 x R2 cell lattices (cell (i, j, k) spans lattice points i..i+1, ...).
        corner_values: [M, 8] float32/float64; corner c at offset ((c >> 2) & 1, (c >> 1) & 1, c & 1).
        dims: (R0, R1, R2).
        level, flip: as for `marching_cubes`.

    The set must be closed: every cell around a crossed edge present (the narrow band builds
    such sets), otherwise a ValueError is raised.

    Returns:
        vertices [V, 3] float32 in lattice-point coordinates, faces [F, 3] int64 (all batch items
        together, ordered by cell), and vertex_offsets / face_offsets [M + 1]: cell m's vertices
        and faces start there.
    """
    if not isinstance(cells, torch.Tensor) or cells.dim() != 1 or cells.dtype != torch.int64:
        raise ValueError(f"cells must be an int64 [M] tensor, got {getattr(cells, 'dtype', type(cells).__name__)}")
    if not isinstance(corner_values, torch.Tensor) or corner_values.shape != (cells.shape[0], 8):
        raise ValueError(f"corner_values must be [M, 8] = [{cells.shape[0]}, 8], got "
                         f"{tuple(getattr(corner_values, 'shape', ()))}")
    if corner_values.dtype not in _DTYPES:
        raise TypeError(f"corner_values must be float32 or float64, got {corner_values.dtype}")
    if corner_values.device != cells.device:
        raise ValueError(f"corner_values must be on the device of cells ({cells.device}), got {corner_values.device}")
    dims = [int(d) for d in dims]
    if len(dims) != 3 or min(dims) < 1:
        raise ValueError(f"dims must be three positive cell counts, got {dims}")
    if cells.numel():
        ordered = (cells[1:] > cells[:-1]).all() & (cells[0] >= 0)
        ordered, nans = torch.stack([ordered.long(), torch.isnan(corner_values).sum()]).tolist()  # one read
        if not ordered:
            raise ValueError("cells must be non-negative and strictly increasing")
        if nans:  # a NaN corner would place its edges' vertices at NaN
            raise ValueError(f"corner_values must not be NaN, got {nans} NaN corners: the field is NaN where its "
                             "surface may cross")
    return torch.ops.get3dhuman.marching_cubes_sparse(cells, corner_values, dims, _check_level(level), bool(flip))


@torch.library.register_fake("get3dhuman::marching_cubes_dense")
def _dense_fake(volume, level, flip):
    ctx = torch.library.get_ctx()
    return (volume.new_empty(ctx.new_dynamic_size(), 3, dtype=torch.float32),
            volume.new_empty(ctx.new_dynamic_size(), 3, dtype=torch.int64))


@torch.library.register_fake("get3dhuman::marching_cubes_sparse")
def _sparse_fake(cells, corner_values, dims, level, flip):
    ctx = torch.library.get_ctx()
    count = cells.shape[0] + 1
    return (corner_values.new_empty(ctx.new_dynamic_size(), 3, dtype=torch.float32),
            cells.new_empty(ctx.new_dynamic_size(), 3), cells.new_empty(count), cells.new_empty(count))


# ---------------------------------------------------------------------------------------------
# Reference: the same conventions written with whole-array torch operations and a case table
# derived here independently (by tracing contours on the six faces), the oracle of the tests.

_CORNERS = np.array([[(c >> 2) & 1, (c >> 1) & 1, c & 1] for c in range(8)])


def _edges() -> list[tuple[int, int]]:
    """Edges as (start corner, end corner), in the kernels' numbering: axis-major, then the
    start's offsets on the two other axes."""
    edges = []
    for axis in range(3):
        others = [a for a in range(3) if a != axis]
        for q in range(4):
            start = [0, 0, 0]
            start[others[0]], start[others[1]] = q >> 1, q & 1
            end = list(start)
            end[axis] = 1
            edges.append((4 * start[0] + 2 * start[1] + start[2], 4 * end[0] + 2 * end[1] + end[2]))
    return edges


def reference_case_table() -> list[list[tuple[int, int, int]]]:
    """Triangles (edge ids) of each of the 256 corner configurations (bit c = corner c above)."""
    edges = _edges()
    edge_of = {frozenset(e): n for n, e in enumerate(edges)}
    faces = []  # corner cycles, counter-clockwise seen from outside the cube
    for axis in range(3):
        for side in (0, 1):
            normal = np.zeros(3)
            normal[axis] = 2 * side - 1
            corners = [c for c in range(8) if _CORNERS[c][axis] == side]
            centre = _CORNERS[corners].mean(0)
            u = _CORNERS[corners[0]] - centre
            v = np.cross(normal, u)  # u rotated a quarter turn counter-clockwise about the normal
            angle = {c: math.atan2(np.dot(_CORNERS[c] - centre, v), np.dot(_CORNERS[c] - centre, u)) for c in corners}
            faces.append(sorted(corners, key=angle.get))
    table = []
    for config in range(256):
        above = [(config >> c) & 1 for c in range(8)]
        following = {}
        for cycle in faces:
            crossings = [(edge_of[frozenset((p, q))], above[p])
                         for p, q in zip(cycle, cycle[1:] + cycle[:1]) if above[p] != above[q]]
            for n, (edge, leaves) in enumerate(crossings):
                if leaves:
                    following[edge] = crossings[n - 1][0]
        triangles, seen = [], set()
        for start in sorted(following):
            if start in seen:
                continue
            loop, edge = [], start
            while edge not in seen:
                seen.add(edge)
                loop.append(edge)
                edge = following[edge]
            apex = next(a for a in range(len(loop))
                        if not any(_on_one_face(edges[loop[a]], edges[loop[(a + i) % len(loop)]])
                                   for i in range(2, len(loop) - 1)))
            loop = loop[apex:] + loop[:apex]
            triangles += [(loop[0], loop[i], loop[i + 1]) for i in range(1, len(loop) - 1)]
        table.append(triangles)
    return table


def _on_one_face(e1, e2) -> bool:
    points = _CORNERS[[*e1, *e2]]
    return bool(((points == points[0]).all(0)).any())


def reference_marching_cubes(volume: torch.Tensor, level: float = 0.0, flip: bool = False):
    """Pure-torch marching cubes with the op's conventions and order: (vertices [V, 3] float32
    in index coordinates, faces [F, 3] int64)."""
    volume = volume.detach().cpu()
    depth, height, width = volume.shape
    above = volume > iso_threshold(level, volume.dtype)
    # Crossed edges: key = voxel index * 3 + axis, sorted, is the kernels' vertex order.
    keys, starts, ends, axes = [], [], [], []
    index = torch.arange(volume.numel()).reshape(volume.shape)
    for axis in range(3):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(0, -1), slice(1, None)
        crossed = above[tuple(lo)] != above[tuple(hi)]
        start = index[tuple(lo)][crossed]
        keys.append(start * 3 + axis)
        starts.append(start)
        ends.append(index[tuple(hi)][crossed])
        axes.append(torch.full_like(start, axis))
    keys, starts, ends, axes = (torch.cat(t) for t in (keys, starts, ends, axes))
    order = torch.argsort(keys)
    keys, starts, ends, axes = keys[order], starts[order], ends[order], axes[order]
    flat = volume.reshape(-1).double()
    a, b = flat[starts], flat[ends]
    t = ((level - a) / (b - a)).float()
    t = torch.where(torch.isinf(a) | torch.isinf(b), torch.where(torch.isinf(a), 1.0, 0.0), t)
    t = torch.where(torch.isinf(a) & torch.isinf(b), 0.5, t)
    coords = torch.stack([starts // (height * width), (starts // width) % height, starts % width], 1).float()
    vertices = coords + t[:, None] * F.one_hot(axes, 3).float()

    table = reference_case_table()
    cells = index[:-1, :-1, :-1].reshape(-1)
    config = torch.zeros_like(cells)
    for c, (di, dj, dk) in enumerate(_CORNERS):
        config |= above.reshape(-1)[cells + (di * height + dj) * width + dk].long() << c
    mixed = (config != 0) & (config != 255)
    cells, config = cells[mixed], config[mixed]
    edge_list = _edges()
    faces = []
    for cell, case in zip(cells.tolist(), config.tolist()):
        for triangle in table[case]:
            ids = []
            for edge in triangle:
                start, end = edge_list[edge]
                axis = int(np.argmax(_CORNERS[end] - _CORNERS[start]))
                di, dj, dk = _CORNERS[start]
                key = (cell + (di * height + dj) * width + dk) * 3 + axis
                ids.append(int(torch.searchsorted(keys, key)))
            faces.append([ids[0], ids[2], ids[1]] if flip else ids)
    return vertices, torch.tensor(faces, dtype=torch.int64).reshape(-1, 3)
