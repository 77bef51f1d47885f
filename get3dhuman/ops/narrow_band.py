"""Coarse-to-fine (narrow band) evaluation of a field near its iso-surface.

`narrow_band(field, resolution, ...)` evaluates `field` on a coarse lattice, keeps the cells the
iso-surface can cross (corners on both sides of the level, or within `band` * cell size of it),
splits them, evaluates only the new lattice points, and repeats up to `resolution` cells per
axis. At the finest level it keeps the crossing cells and closes the set: while a kept cell has
a crossing on a face whose neighbour is missing, the neighbour is added (this follows the
surface, so the mesh is watertight inside the box even where the coarse levels missed a part
that touches a found one). The result, a `SparseVolume`, feeds sparse marching cubes directly
(no dense volume is allocated) and answers trilinear queries.

Classification, compaction, child generation and the numbering of new points (each once, with
no sort or hash) are the `narrow_band_refine` kernel; finding the closure's missing neighbours is
the `narrow_band_open_faces` kernel (both CPU and CUDA). The cells the closure adds, usually few,
are merged with torch's sort.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable, Sequence

import torch

from get3dhuman._checks import check_int, is_finite_number
from get3dhuman.ops.marching_cubes import iso_threshold, marching_cubes_sparse

Field = Callable[[torch.Tensor], torch.Tensor]  # points [B, N, 3] -> values [B, N]

_OFFSETS = torch.tensor([[(c >> 2) & 1, (c >> 1) & 1, c & 1] for c in range(8)])
_PAST_LAST_KEY = torch.iinfo(torch.int64).max  # greater than any lattice point's or cell's key


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
        vertex_bounds, face_bounds = torch.stack([vertex_offsets[bounds], face_offsets[bounds]]).tolist()
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
                level: float = 0.0, coarse_resolution: int | None = None, band: float = 0.0,
                device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                chunk: int = 1 << 18) -> SparseVolume:
    """Samples `field` around its `level` set, coarse to fine (see the module docstring).

    Args:
        field: callable mapping world points [B, N, 3] (dtype, device) to values [B, N].
        resolution: finest cells per axis; coarse_resolution * 2^L for some L >= 0.
        batch_size: B, the number of fields evaluated together (one per batch row).
        bounds: (lower [3], upper [3]) corners of the box.
        level: the iso-value.
        coarse_resolution: cells per axis of the first, fully evaluated lattice (default
            `coarse_resolution_for(resolution)`: at most 32).
        band: also keep cells whose nearest corner is within band * (cell edge) of the level;
            for a signed distance with slope <= 1, band = sqrt(3) keeps every cell the surface can
            enter. 0 keeps sign changes only.
        chunk: most points per field call (per batch row).

    Returns:
        a SparseVolume; `fraction_evaluated` says how much of the dense lattice was evaluated.
    """
    resolution = check_int(resolution, "resolution", 1)
    if coarse_resolution is None:
        coarse_resolution = coarse_resolution_for(resolution)
    coarse_resolution = check_int(coarse_resolution, "coarse_resolution", 1)
    steps = math.log2(resolution / coarse_resolution) if resolution >= coarse_resolution else -1
    if steps < 0 or steps != int(steps):
        raise ValueError(f"resolution must be coarse_resolution ({coarse_resolution}) times a power of two, got {resolution}")
    batch_size = check_int(batch_size, "batch_size", 1)
    chunk = check_int(chunk, "chunk", 1)
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    if not (isinstance(band, numbers.Real) and not isinstance(band, bool) and band >= 0):  # inf: every cell
        raise ValueError(f"band must be a non-negative float, got {band!r}")
    if not is_finite_number(level):
        raise ValueError(f"level must be a finite float, got {level!r}")
    # Checked on the host, where bounds usually are (lists), so that a GPU need not be waited for.
    lower, upper = (torch.as_tensor(bounds[i], dtype=dtype).cpu() for i in (0, 1))
    if lower.shape != (3,) or upper.shape != (3,) or not bool((upper > lower).all()):
        raise ValueError(f"bounds must be (lower [3], upper [3]) with upper > lower, got {bounds!r}")
    longest_side = float((upper - lower).max())
    lower, upper = lower.to(device), upper.to(device)
    evaluator = _Evaluator(field, batch_size, lower, upper, chunk)

    n = coarse_resolution
    points = torch.arange(batch_size * (n + 1) ** 3, device=device)
    values = evaluator(points, n + 1)
    cells = torch.arange(batch_size * n ** 3, device=device)
    corner_values = values[_corner_points(cells, n)]
    levels = [(n, cells, corner_values)]
    while n < resolution:
        edge = longest_side / n
        cells, point_slots, new_points = torch.ops.get3dhuman.narrow_band_refine(
            cells, corner_values, [n, n, n], float(level), float(band) * edge)
        n *= 2
        table = torch.cat([evaluator(new_points, n + 1), corner_values.reshape(-1)])
        corner_values = table.index_select(0, point_slots.reshape(-1)).reshape(-1, 8)
        if n < resolution:
            levels.append((n, cells, corner_values))
    cells, corner_values = _close(evaluator, cells, corner_values, n, level)
    levels.append((n, cells, corner_values))
    return SparseVolume(resolution, lower, upper, batch_size, float(level), levels, evaluator.counts)


@torch.library.register_fake("get3dhuman::narrow_band_refine")
def _refine_fake(cells, corner_values, dims, level, threshold):
    ctx = torch.library.get_ctx()
    children = 8 * ctx.new_dynamic_size()
    return (cells.new_empty(children), cells.new_empty(children, 8, dtype=torch.int32),
            cells.new_empty(ctx.new_dynamic_size()))


@torch.library.register_fake("get3dhuman::narrow_band_open_faces")
def _open_faces_fake(frontier, frontier_values, closed, dims, level):
    return frontier.new_empty(torch.library.get_ctx().new_dynamic_size())


def _corner_points(cells: torch.Tensor, n: int) -> torch.Tensor:
    """Point keys [M, 8] over the (n + 1)^3 lattice of the corners of cells [M] over n^3."""
    coords = _decode(cells, n)
    corners = coords[:, None, 1:] + _OFFSETS.to(cells.device)
    return ((coords[:, None, 0] * (n + 1) + corners[..., 0]) * (n + 1) + corners[..., 1]) * (n + 1) + corners[..., 2]


def _decode(keys: torch.Tensor, n: int) -> torch.Tensor:
    """(batch, i, j, k) [M, 4] of keys over a batch of n^3 lattices."""
    above_k = keys // n  # three int64 divisions instead of seven: they dominate the cost
    above_j = above_k // n
    batch = above_j // n
    return torch.stack([batch, above_j - batch * n, above_k - above_j * n, keys - above_k * n], 1)


def _close(evaluator, cells, corner_values, n, level):
    """Keeps the crossing cells and adds missing face neighbours across crossed faces until none
    is missing. A new cell's corner takes its value from any cell evaluated so far that has the
    same lattice point (one value per point keeps the mesh watertight); the others are evaluated.
    Added cells are kept apart (small, cheap to re-sort) and merged once at the end."""
    above = corner_values > iso_threshold(level, corner_values.dtype)
    crossing = above.any(1) & ~above.all(1)
    band = (cells, corner_values)  # every finest cell the refinement evaluated, sorted
    kept = crossing.nonzero().squeeze(1)  # one wait for a GPU, where two masks would each wait
    cells, corner_values = cells[kept], corner_values[kept]
    added, added_values = cells[:0], corner_values[:0]
    frontier, frontier_values = cells, corner_values  # cells whose face neighbours are unchecked
    while True:
        candidates = torch.ops.get3dhuman.narrow_band_open_faces(frontier, frontier_values, cells, [n, n, n],
                                                                 float(level))
        frontier = _unique_except(candidates, _contains(added, candidates))
        if frontier.numel() == 0:
            break
        point_keys = _corner_points(frontier, n)
        frontier_values, known = _point_values([band, (added, added_values)], point_keys, n)
        new_points, inverse = _unique_except(point_keys.reshape(-1), known.reshape(-1), return_inverse=True)
        # Known points' inverse is the slot past the new ones: a zero there, replaced by their value.
        new_values = torch.cat([evaluator(new_points, n + 1), frontier_values.new_zeros(1)])
        frontier_values = torch.where(known, frontier_values, new_values[inverse].reshape(known.shape))
        added, order = torch.sort(torch.cat([added, frontier]))
        added_values = torch.cat([added_values, frontier_values])[order]
    if added.numel() == 0:
        return cells, corner_values
    cells, order = torch.sort(torch.cat([cells, added]))
    return cells, torch.cat([corner_values, added_values])[order]


def _unique_except(keys: torch.Tensor, dropped: torch.Tensor, return_inverse: bool = False):
    """torch.unique (sorted) of keys [K] without those where `dropped` [K]; with return_inverse,
    also each key's slot in it (the dropped ones': the slot past the last). One op sized by the
    values, where masking and then unique would be two, each a wait for a GPU: the dropped keys
    take a key past every other, appended once more so that it is always the last unique key."""
    marked = torch.cat([keys.masked_fill(dropped, _PAST_LAST_KEY), keys.new_full((1,), _PAST_LAST_KEY)])
    if not return_inverse:
        return torch.unique(marked)[:-1]
    unique, inverse = torch.unique(marked, return_inverse=True)
    return unique[:-1], inverse[:-1]


def _contains(sorted_keys: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Whether each of keys is in sorted_keys [bool, keys' shape]."""
    if sorted_keys.numel() == 0:
        return torch.zeros_like(keys, dtype=torch.bool)
    return _find(sorted_keys, keys)[1]


def _find(sorted_keys: torch.Tensor, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(slot, present): where each of keys is in the non-empty sorted_keys (or would go, clamped
    to the last slot), and whether it is there; both shaped like keys."""
    slot = torch.searchsorted(sorted_keys, keys).clamp_(max=sorted_keys.numel() - 1)
    return slot, sorted_keys[slot] == keys


def _point_values(evaluated, point_keys: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Values and found-masks (shaped like point_keys over the (n + 1)^3 lattice) of points that are
    corners of a cell in any of the evaluated (sorted cells, corner values [M, 8]) sets. Dense
    selects, no masked indexing: on a GPU nothing here waits for the device."""
    coords = _decode(point_keys.reshape(-1), n + 1)
    values = torch.zeros(coords.shape[0], dtype=evaluated[0][1].dtype, device=point_keys.device)
    found = torch.zeros(coords.shape[0], dtype=torch.bool, device=point_keys.device)
    offsets = _OFFSETS.to(coords.device)
    for corner in range(8):
        cell = coords[:, 1:] - offsets[corner]
        inside = ((cell >= 0) & (cell < n)).all(1)
        keys = ((coords[:, 0] * n + cell[:, 0]) * n + cell[:, 1]) * n + cell[:, 2]
        for cells, corner_values in evaluated:
            if cells.numel() == 0:
                continue
            slot, present = _find(cells, keys)
            hit = inside & ~found & present
            values = torch.where(hit, corner_values[slot, corner], values)
            found |= hit
    return values.reshape(point_keys.shape), found.reshape(point_keys.shape)


class _Evaluator:
    """Evaluates the field at point keys over a batch of p^3 lattices (p = cells + 1), batch rows
    padded to the longest, in chunks; counts evaluations per batch row."""

    def __init__(self, field: Field, batch_size: int, lower: torch.Tensor, upper: torch.Tensor, chunk: int):
        self.field, self.batch_size, self.lower, self.upper, self.chunk = field, batch_size, lower, upper, chunk
        self.counts = torch.zeros(batch_size, dtype=torch.int64)

    def __call__(self, keys: torch.Tensor, p: int) -> torch.Tensor:
        coords = _decode(keys, p)  # keys are batch-major
        if self.batch_size == 1:  # the one row's count is the size: no wait for the device
            per_row = torch.tensor([coords.shape[0]])
        else:
            per_row = torch.bincount(coords[:, 0], minlength=self.batch_size).cpu()
        self.counts += per_row
        ends = torch.cumsum(per_row, 0).tolist()
        rows = [(b, ends[b] - int(per_row[b]), ends[b]) for b in range(self.batch_size)]
        longest = int(per_row.max()) if keys.numel() else 0
        world = self.lower + coords[:, 1:].to(self.lower.dtype) * ((self.upper - self.lower) / (p - 1))
        if self.batch_size == 1:
            padded = world[None]
        else:
            padded = self.lower.expand(self.batch_size, longest, 3).clone()
            for b, begin, end in rows:
                padded[b, :end - begin] = world[begin:end]
        values = []
        with torch.no_grad():
            for begin in range(0, longest, self.chunk):
                out = self.field(padded[:, begin:begin + self.chunk])
                expected = (self.batch_size, min(self.chunk, longest - begin))
                if not isinstance(out, torch.Tensor) or tuple(out.shape) != expected:
                    got = tuple(out.shape) if isinstance(out, torch.Tensor) else f"a {type(out).__name__}"
                    raise ValueError(f"field must return a tensor of values [B, N] = {list(expected)}, got {got}")
                values.append(out)
        if not values:
            return torch.empty(0, dtype=self.lower.dtype, device=keys.device)
        values = torch.cat(values, 1)
        return torch.cat([values[b, :end - begin] for b, begin, end in rows]).to(self.lower.dtype)
