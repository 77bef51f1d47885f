"""Coarse-to-fine (narrow band) evaluation of a field near its iso-surface.

`narrow_band(field, resolution, ...)` evaluates `field` on a coarse lattice, keeps the cells the
iso-surface can cross (corners on both sides of the level, or within `band` * cell size of it),
splits them, evaluates only the new lattice points, and repeats up to `resolution` cells per
axis. At the finest level it keeps the crossing cells and closes the set: while a kept cell has
a crossing on a face whose neighbour is missing, the neighbour is added (this follows the
surface, so the mesh is watertight inside the box even where the coarse levels missed a part
that touches a found one). The result, a `SparseVolume`, feeds sparse marching cubes directly
(no dense volume is allocated) and answers trilinear queries.

Classification, compaction and child generation are the `narrow_band_refine` kernel (CPU and
CUDA); de-duplication of new points and the closure use torch's sort-based ops.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import torch

from get3dhuman.ops.marching_cubes import marching_cubes_sparse

Field = Callable[[torch.Tensor], torch.Tensor]  # points [B, N, 3] -> values [B, N]

_OFFSETS = torch.tensor([[(c >> 2) & 1, (c >> 1) & 1, c & 1] for c in range(8)])
# Child corner q of child n sits at a parent corner when all its doubled coordinates are even.
_KNOWN = torch.tensor([[bool(((_OFFSETS[n] + _OFFSETS[q]) % 2 == 0).all()) for q in range(8)] for n in range(8)])


@dataclasses.dataclass
class SparseVolume:
    """A field sampled on the narrow band of a batch of `resolution`^3 cell lattices.

    Attributes:
        resolution: cells per axis at the finest level (lattice points: resolution + 1).
        lower, upper: the box corners [3] (world coordinates of lattice points 0 and resolution).
        batch_size: fields sampled together.
        level: the iso-value the band was built around.
        levels: per level from coarse to fine, (cells per axis, cell keys [M] sorted, corner values
            [M, 8]); keys are ((b * n + i) * n + j) * n + k. The last level holds the closed set of
            crossing cells.
        evaluated_points: field evaluations, per batch item [B].
    """

    resolution: int
    lower: torch.Tensor
    upper: torch.Tensor
    batch_size: int
    level: float
    levels: list[tuple[int, torch.Tensor, torch.Tensor]]
    evaluated_points: torch.Tensor

    @property
    def cells(self) -> torch.Tensor:
        """Keys [M] of the finest level's cells."""
        return self.levels[-1][1]

    @property
    def corner_values(self) -> torch.Tensor:
        """Corner values [M, 8] of the finest level's cells."""
        return self.levels[-1][2]

    @property
    def fraction_evaluated(self) -> torch.Tensor:
        """Evaluated points over the dense lattice's (resolution + 1)^3, per batch item [B]."""
        return self.evaluated_points.double() / float((self.resolution + 1) ** 3)

    def query(self, points: torch.Tensor) -> torch.Tensor:
        """Trilinear values [B, N] at world points [B, N, 3] (clamped to the box), from the finest
        level whose cell holds the point: exact lattice interpolation in the band, the coarse
        interpolation away from it."""
        if points.dim() != 3 or points.shape[0] != self.batch_size or points.shape[2] != 3:
            raise ValueError(f"points must be [B, N, 3] with B = {self.batch_size}, got {tuple(points.shape)}")
        batch, count = points.shape[:2]
        values = torch.empty(batch, count, dtype=self.corner_values.dtype, device=points.device)
        todo = torch.ones(batch, count, dtype=torch.bool, device=points.device)
        unit = ((points - self.lower) / (self.upper - self.lower)).clamp(0, 1)
        batch_index = torch.arange(batch, device=points.device)[:, None].expand(batch, count)
        for cells_per_axis, keys, corners in reversed(self.levels):
            position = unit[todo] * cells_per_axis
            cell = position.floor().clamp(max=cells_per_axis - 1)
            frac = (position - cell).to(corners.dtype)
            cell = cell.long()
            key = ((batch_index[todo] * cells_per_axis + cell[:, 0]) * cells_per_axis + cell[:, 1]) * cells_per_axis + cell[:, 2]
            if keys.numel() == 0:
                continue
            slot = torch.searchsorted(keys, key).clamp(max=keys.numel() - 1)
            found = keys[slot] == key
            weights = torch.ones(found.shape[0], 8, dtype=corners.dtype, device=points.device)
            offsets = _OFFSETS.to(points.device)
            for axis in range(3):
                t = frac[:, axis:axis + 1]
                weights = weights * torch.where(offsets[:, axis] == 1, t, 1 - t)
            sampled = (weights * corners[slot]).sum(1)
            where = todo.nonzero(as_tuple=True)
            values[where[0][found], where[1][found]] = sampled[found]
            todo[where[0][found], where[1][found]] = False
            if not todo.any():
                break
        return values

    def marching_cubes(self, flip: bool = False) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The iso-surface of each batch item: [(vertices [V, 3] float32 world, faces [F, 3] int64)]."""
        n = self.resolution
        vertices, faces, vertex_offsets, face_offsets = marching_cubes_sparse(
            self.cells, self.corner_values, (n, n, n), self.level, flip=flip)
        bounds = torch.searchsorted(self.cells, torch.arange(self.batch_size + 1, device=self.cells.device) * n ** 3)
        vertex_bounds, face_bounds = vertex_offsets[bounds].tolist(), face_offsets[bounds].tolist()
        scale = ((self.upper - self.lower) / n).to(vertices)
        lower = self.lower.to(vertices)
        meshes = []
        for b in range(self.batch_size):
            v = vertices[vertex_bounds[b]:vertex_bounds[b + 1]]
            f = faces[face_bounds[b]:face_bounds[b + 1]] - vertex_bounds[b]
            meshes.append((torch.addcmul(lower, v, scale), f))
        return meshes


def coarse_resolution_for(resolution: int, largest: int = 32) -> int:
    """The finest coarse lattice for `resolution` that narrow_band accepts (resolution divided by
    a power of two) with at most `largest` cells per axis, or resolution itself when it is odd."""
    coarse = resolution
    while coarse > largest and coarse % 2 == 0:
        coarse //= 2
    return coarse


def narrow_band(field: Field, resolution: int = 256, *, batch_size: int = 1,
                bounds: tuple[Sequence[float], Sequence[float]] = ((-1.0, -1.0, -1.0), (1.0, 1.0, 1.0)),
                level: float = 0.0, coarse_resolution: int = 32, band: float = 0.0,
                device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                chunk: int = 1 << 18) -> SparseVolume:
    """Samples `field` around its `level` set, coarse to fine (see the module docstring).

    Args:
        field: callable mapping world points [B, N, 3] (dtype, device) to values [B, N].
        resolution: finest cells per axis; coarse_resolution * 2^L for some L >= 0.
        batch_size: B, the number of fields evaluated together (one per batch row).
        bounds: (lower [3], upper [3]) corners of the box.
        level: the iso-value.
        coarse_resolution: cells per axis of the first, fully evaluated lattice.
        band: also keep cells whose nearest corner is within band * (cell edge) of the level;
            for a signed distance with slope <= 1, band = sqrt(3) keeps every cell the surface can
            enter. 0 keeps sign changes only.
        chunk: most points per field call (per batch row).

    Returns:
        a SparseVolume; `fraction_evaluated` says how much of the dense lattice was evaluated.
    """
    if not isinstance(resolution, int) or not isinstance(coarse_resolution, int) or coarse_resolution < 1:
        raise ValueError(f"resolution and coarse_resolution must be positive ints, got {resolution!r}, {coarse_resolution!r}")
    steps = math.log2(resolution / coarse_resolution) if resolution >= coarse_resolution else -1
    if steps < 0 or steps != int(steps):
        raise ValueError(f"resolution must be coarse_resolution ({coarse_resolution}) times a power of two, got {resolution}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if not isinstance(band, (int, float)) or not band >= 0:
        raise ValueError(f"band must be a non-negative float, got {band!r}")
    if not isinstance(level, (int, float)) or not math.isfinite(level):
        raise ValueError(f"level must be a finite float, got {level!r}")
    lower = torch.as_tensor(bounds[0], dtype=dtype, device=device)
    upper = torch.as_tensor(bounds[1], dtype=dtype, device=device)
    if lower.shape != (3,) or upper.shape != (3,) or not bool((upper > lower).all()):
        raise ValueError(f"bounds must be (lower [3], upper [3]) with upper > lower, got {bounds!r}")
    evaluator = _Evaluator(field, batch_size, lower, upper, chunk)

    n = coarse_resolution
    points = torch.arange(batch_size * (n + 1) ** 3, device=device)
    values = evaluator(points, n + 1)
    cells = torch.arange(batch_size * n ** 3, device=device)
    point_keys = _corner_points(cells, n)
    corner_values = values[point_keys]
    levels = [(n, cells, corner_values)]
    while n < resolution:
        edge = float((upper - lower).max()) / n
        children, child_values, point_keys = torch.ops.get3dhuman.narrow_band_refine(
            cells, corner_values, [n, n, n], float(level), float(band) * edge)
        n *= 2
        unknown = ~_KNOWN.to(device).repeat(children.numel() // 8, 1)
        new_points, inverse = torch.unique(point_keys[unknown], return_inverse=True)
        child_values[unknown] = evaluator(new_points, n + 1)[inverse]
        order = torch.argsort(children)
        cells, corner_values, point_keys = children[order], child_values[order], point_keys[order]
        if n < resolution:
            levels.append((n, cells, corner_values))
    cells, corner_values = _close(evaluator, cells, corner_values, point_keys, n, level)
    levels.append((n, cells, corner_values))
    return SparseVolume(resolution, lower, upper, batch_size, float(level), levels, evaluator.counts)


@torch.library.register_fake("get3dhuman::narrow_band_refine")
def _refine_fake(cells, corner_values, dims, level, threshold):
    children = 8 * torch.library.get_ctx().new_dynamic_size()
    return cells.new_empty(children), corner_values.new_empty(children, 8), cells.new_empty(children, 8)


def _corner_points(cells: torch.Tensor, n: int) -> torch.Tensor:
    """Point keys [M, 8] over the (n + 1)^3 lattice of the corners of cells [M] over n^3."""
    coords = _decode(cells, n)
    corners = coords[:, None, 1:] + _OFFSETS.to(cells.device)
    return ((coords[:, None, 0] * (n + 1) + corners[..., 0]) * (n + 1) + corners[..., 1]) * (n + 1) + corners[..., 2]


def _decode(keys: torch.Tensor, n: int) -> torch.Tensor:
    """(batch, i, j, k) [M, 4] of keys over a batch of n^3 lattices."""
    return torch.stack([keys // n ** 3, keys // n ** 2 % n, keys // n % n, keys % n], 1)


def _close(evaluator, cells, corner_values, point_keys, n, level):
    """Keeps the crossing cells and adds missing face neighbours across crossed faces until none
    is missing. Known point values come from the finest level's table."""
    above = corner_values > level
    crossing = above.any(1) & ~above.all(1)
    cells, corner_values, point_keys = cells[crossing], corner_values[crossing], point_keys[crossing]
    if cells.numel() == 0:
        return cells, corner_values
    table_keys, inverse = torch.unique(point_keys.reshape(-1), return_inverse=True)
    table_values = corner_values.new_empty(table_keys.numel()).scatter_(0, inverse, corner_values.reshape(-1))
    offsets = _OFFSETS.to(cells.device)
    frontier, frontier_values = cells, corner_values  # cells whose face neighbours are unchecked
    while True:
        above = frontier_values > level
        coords = _decode(frontier, n)
        wanted = []
        for axis in range(3):
            for side in (0, 1):
                face_above = above[:, offsets[:, axis] == side]
                crossed = face_above.any(1) & ~face_above.all(1)
                neighbour = coords.clone()
                neighbour[:, axis + 1] += 2 * side - 1
                inside = (neighbour[:, axis + 1] >= 0) & (neighbour[:, axis + 1] < n)
                chosen = neighbour[crossed & inside]
                wanted.append(((chosen[:, 0] * n + chosen[:, 1]) * n + chosen[:, 2]) * n + chosen[:, 3])
        wanted = torch.unique(torch.cat(wanted))
        slot = torch.searchsorted(cells, wanted).clamp(max=cells.numel() - 1)
        missing = wanted[cells[slot] != wanted]
        if missing.numel() == 0:
            return cells, corner_values
        new_keys = _corner_points(missing, n)
        slot = torch.searchsorted(table_keys, new_keys).clamp(max=table_keys.numel() - 1)
        known = table_keys[slot] == new_keys
        new_points = torch.unique(new_keys[~known])
        new_values = evaluator(new_points, n + 1)
        table_keys, order = torch.sort(torch.cat([table_keys, new_points]))
        table_values = torch.cat([table_values, new_values])[order]
        frontier, frontier_values = missing, table_values[torch.searchsorted(table_keys, new_keys)]
        cells, order = torch.sort(torch.cat([cells, frontier]))
        corner_values = torch.cat([corner_values, frontier_values])[order]


class _Evaluator:
    """Evaluates the field at point keys over a batch of p^3 lattices (p = cells + 1), batch rows
    padded to the longest, in chunks; counts evaluations per batch row."""

    def __init__(self, field: Field, batch_size: int, lower: torch.Tensor, upper: torch.Tensor, chunk: int):
        self.field, self.batch_size, self.lower, self.upper, self.chunk = field, batch_size, lower, upper, chunk
        self.counts = torch.zeros(batch_size, dtype=torch.int64)

    def __call__(self, keys: torch.Tensor, p: int) -> torch.Tensor:
        coords = _decode(keys, p)
        batch = coords[:, 0]
        per_row = torch.bincount(batch, minlength=self.batch_size)
        self.counts += per_row.cpu()
        longest = int(per_row.max()) if keys.numel() else 0
        starts = torch.cumsum(per_row, 0) - per_row
        column = torch.arange(keys.numel(), device=keys.device) - starts[batch]  # keys are sorted by batch
        world = self.lower + coords[:, 1:].to(self.lower.dtype) * ((self.upper - self.lower) / (p - 1))
        padded = self.lower.expand(self.batch_size, longest, 3).clone()
        padded[batch, column] = world
        values = []
        with torch.no_grad():
            for begin in range(0, longest, self.chunk):
                out = self.field(padded[:, begin:begin + self.chunk])
                expected = (self.batch_size, min(self.chunk, longest - begin))
                if not isinstance(out, torch.Tensor) or tuple(out.shape) != expected:
                    raise ValueError(f"field must return values [B, N] = {list(expected)}, got "
                                     f"{tuple(getattr(out, 'shape', ())) or type(out).__name__}")
                values.append(out)
        if not values:
            return torch.empty(0, dtype=self.lower.dtype, device=keys.device)
        return torch.cat(values, 1)[batch, column].to(self.lower.dtype)
