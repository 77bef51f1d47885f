"""Real training data for the Reconstructor: a folder of textured scans (DESIGN.md section 5).

`ScanSet.from_folder(DIR)` reads every mesh file in DIR (OBJ, PLY, GLB, ... through trimesh;
vertex colours, or texture colours sampled at the vertices, else grey), y up and facing +z
like the synthetic humans, and fits each into the box: centred, scaled to `height` metres
tall. A scan then plays the part of a synthetic human in `train.make_batch`: its orbit views
are the rasterized mesh shaded as `render.shade` shades the synthetic renders, its
occupancy samples are surface points (area-uniform) displaced by N(0, sigma^2) plus uniform box
points labelled by an exact inside test, and its colour samples surface points moved slightly
along the normal with the colour there.

The inside test counts the triangles a ray from each point towards +z crosses (odd: inside),
testing only the triangles registered in the point's cell of a grid over (x, y): exact for
closed (watertight) scans, whose vertices need not be welded. A scan through which more than
MAX_OPEN_FRACTION of the lines along z cross an odd number of times (holes) is refused.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from get3dhuman.mesh import TexturedMesh, vertex_normals
from get3dhuman.render import orbit_calibration, render_meshes, shade
from get3dhuman.synthetic.sampling import BOX, ColorSamples, OccupancySamples

SCAN_SUFFIXES = (".obj", ".ply", ".glb", ".gltf", ".off", ".stl")
DEFAULT_HEIGHT = 1.8  # metres: the height every scan is scaled to (the synthetic humans: 1.5 - 1.95)
GRID_CELLS = 256  # cells per side of the (x, y) grid of the inside test
UNCOLOURED = 0.7  # grey of scans without colours
MAX_OPEN_FRACTION = 0.01  # of lines along z crossing a scan's surface an odd number of times


def load_scan(path: str, height: float | None = DEFAULT_HEIGHT) -> TexturedMesh:
    """The mesh file at `path` as a TexturedMesh in the box: its bounding box centred on the
    origin and, unless `height` is None, scaled to `height` tall (y); faces wound outwards (a
    scan of negative signed volume has them flipped, so that its normals face out). Colours:
    the vertex colours, or the texture's at the vertices, else UNCOLOURED. Raises ValueError
    for a file without triangles, or one that does not fit [-1, 1]^3 once placed."""
    import trimesh

    try:
        mesh = trimesh.load(path, force="mesh", process=False)
    except Exception as error:  # trimesh raises many kinds for unreadable files
        raise ValueError(f"cannot read the scan {path}: {error}") from error
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise ValueError(f"the scan {path} holds no triangles")
    vertices = torch.as_tensor(mesh.vertices, dtype=torch.float64)
    low, high = vertices.min(0).values, vertices.max(0).values
    vertices = vertices - (low + high) / 2
    if height is not None:
        if not float(high[1] - low[1]) > 0:
            raise ValueError(f"the scan {path} has no height (y extent 0) to scale to {height}")
        vertices = vertices * (height / float(high[1] - low[1]))
    if float(vertices.abs().max()) > BOX:
        extent = [round(float(x), 3) for x in vertices.max(0).values - vertices.min(0).values]
        raise ValueError(f"the scan {path} does not fit the box [-{BOX}, {BOX}]^3 once placed (height {height}): "
                         f"it spans {extent} (x, y, z)")
    visual = mesh.visual.to_color() if mesh.visual.kind == "texture" else mesh.visual  # texture: its colours at the vertices
    colors = visual.vertex_colors[:, :3] / 255.0 if visual.kind is not None else None
    faces = torch.as_tensor(mesh.faces, dtype=torch.int64)
    corners = vertices[faces]
    if float(torch.linalg.det(corners).sum()) < 0:  # negative signed volume: wound inwards
        faces = faces[:, [0, 2, 1]]
    vertices = vertices.float()
    colors = (torch.full_like(vertices, UNCOLOURED) if colors is None or len(colors) != len(vertices)
              else torch.as_tensor(colors, dtype=torch.float32))
    return TexturedMesh(vertices, faces, colors, vertex_normals(vertices, faces))


class _ColumnIndex:
    """The faces of a mesh registered in every cell of a GRID_CELLS^2 grid over (x, y) in
    [-BOX, BOX]^2 that their (x, y) bounding box overlaps (CSR: offsets [C + 1], faces [K])."""

    def __init__(self, vertices: torch.Tensor, faces: torch.Tensor, cells: int = GRID_CELLS):
        self.cells = cells
        corners = vertices[faces][..., :2]  # [F, 3, 2]
        low = self._cell(corners.min(1).values)
        high = self._cell(corners.max(1).values)
        span = high - low + 1  # [F, 2]
        counts = span[:, 0] * span[:, 1]
        face = torch.repeat_interleave(torch.arange(len(faces)), counts)
        within = torch.arange(int(counts.sum())) - torch.repeat_interleave(counts.cumsum(0) - counts, counts)
        ix = low[face, 0] + within % span[face, 0]
        iy = low[face, 1] + within // span[face, 0]
        cell = iy * cells + ix
        order = torch.argsort(cell, stable=True)
        self.faces = face[order]
        self.offsets = torch.zeros(cells * cells + 1, dtype=torch.int64)
        self.offsets[1:] = torch.bincount(cell, minlength=cells * cells).cumsum(0)

    def _cell(self, xy: torch.Tensor) -> torch.Tensor:
        return ((xy + BOX) / (2 * BOX) * self.cells).floor().long().clamp(0, self.cells - 1)

    def candidates(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(point index [T], face index [T]): every registered face of each point's cell."""
        cell = self._cell(points[:, :2])
        cell = cell[:, 1] * self.cells + cell[:, 0]
        start, counts = self.offsets[cell], self.offsets[cell + 1] - self.offsets[cell]
        point = torch.repeat_interleave(torch.arange(len(points)), counts)
        slot = torch.arange(int(counts.sum())) - torch.repeat_interleave(counts.cumsum(0) - counts, counts)
        return point, self.faces[torch.repeat_interleave(start, counts) + slot]


def _cross2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def line_crossings(mesh: TexturedMesh, points: torch.Tensor, point: torch.Tensor | None = None,
                   face: torch.Tensor | None = None, above_only: bool = True) -> torch.Tensor:
    """How many triangles of `mesh` the line along z through each of points [N, 3] crosses
    (beyond the point towards +z only, with above_only) -> [N] int64, testing the (point, face)
    index pairs given (default: every point against every face, the oracle of the grid's
    candidates). Triangles seen edge-on from z are never crossed."""
    points = points.double()
    if point is None:
        point = torch.arange(len(points)).repeat_interleave(len(mesh.faces))
        face = torch.arange(len(mesh.faces)).repeat(len(points))
    a, b, c = mesh.vertices.double()[mesh.faces[face]].unbind(1)
    p = points[point]
    area = _cross2(b[:, :2] - a[:, :2], c[:, :2] - a[:, :2])
    safe = torch.where(area == 0, torch.ones_like(area), area)
    u = _cross2(p[:, :2] - a[:, :2], c[:, :2] - a[:, :2]) / safe
    v = _cross2(b[:, :2] - a[:, :2], p[:, :2] - a[:, :2]) / safe
    w = 1 - u - v
    crossed = (area != 0) & (u >= 0) & (v >= 0) & (w >= 0)
    if above_only:
        crossed &= a[:, 2] * w + b[:, 2] * u + c[:, 2] * v > p[:, 2]
    return torch.bincount(point[crossed], minlength=len(points))


class ScanSet:
    """Textured scans (TexturedMeshes in the box, e.g. of `load_scan`) as training subjects:
    orbit views, exact inside tests and surface samples. On the CPU."""

    def __init__(self, meshes: Sequence[TexturedMesh], names: Sequence[str] | None = None,
                 max_open_fraction: float = MAX_OPEN_FRACTION):
        """Raises ValueError naming a scan without triangles, or one whose `open_fraction`
        exceeds `max_open_fraction` (its inside test would mislabel what its holes let through)."""
        if not meshes:
            raise ValueError("meshes must hold at least one scan")
        self.meshes = [mesh.to("cpu") for mesh in meshes]
        self.names = list(names) if names is not None else [f"scan-{i}" for i in range(len(meshes))]
        if len(self.names) != len(self.meshes):
            raise ValueError(f"names must name every mesh: {len(self.names)} names for {len(self.meshes)} meshes")
        for name, mesh in zip(self.names, self.meshes):
            if mesh.is_empty:
                raise ValueError(f"the scan {name} has no triangles")
        self._columns = [_ColumnIndex(mesh.vertices.double(), mesh.faces) for mesh in self.meshes]
        self._areas = [self._face_areas(mesh) for mesh in self.meshes]
        for index, name in enumerate(self.names):
            fraction = self.open_fraction(index)
            if fraction > max_open_fraction:
                raise ValueError(f"the scan {name} is not closed: {fraction:.1%} of the lines along z through it cross "
                                 f"its surface an odd number of times (at most {max_open_fraction:.1%} allowed): "
                                 "close its holes (e.g. Poisson reconstruction) so that inside and outside are defined")

    @classmethod
    def from_folder(cls, folder: str, height: float | None = DEFAULT_HEIGHT) -> ScanSet:
        """Every file of `folder` with a suffix of SCAN_SUFFIXES (sorted by name), read by load_scan."""
        if not os.path.isdir(folder):
            raise ValueError(f"scans must be a folder of mesh files, got {folder!r}")
        files = sorted(f for f in os.listdir(folder) if os.path.splitext(f)[1].lower() in SCAN_SUFFIXES)
        if not files:
            raise ValueError(f"the folder {folder} holds no scan ({', '.join(SCAN_SUFFIXES)})")
        return cls([load_scan(os.path.join(folder, f), height) for f in files], files)

    def __len__(self) -> int:
        return len(self.meshes)

    @staticmethod
    def _face_areas(mesh: TexturedMesh) -> torch.Tensor:
        corners = mesh.vertices.double()[mesh.faces]
        return torch.linalg.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]).norm(dim=-1) / 2

    def _check(self, indices: Sequence[int]) -> list[int]:
        indices = [int(i) for i in indices]
        if any(not 0 <= i < len(self) for i in indices):
            raise ValueError(f"indices must lie in [0, {len(self)}), got {indices}")
        return indices

    def views(self, indices: Sequence[int], angles: torch.Tensor, resolution: int, background: float = 0.0) -> torch.Tensor:
        """Shaded views [B, resolution, resolution, 3] in [0, 1] of scans `indices` through the
        orbit cameras at `angles` [B] degrees (render.orbit_calibration), `background` elsewhere."""
        indices = self._check(indices)
        calib = orbit_calibration(torch.as_tensor(angles, dtype=torch.float32).reshape(len(indices)))
        return shade(render_meshes([self.meshes[i] for i in indices], calib, resolution), background)

    def inside(self, indices: Sequence[int], points: torch.Tensor) -> torch.Tensor:
        """Whether points [B, N, 3] lie inside scans `indices` -> bool [B, N] (odd crossings of
        the ray towards +z)."""
        indices = self._check(indices)
        if points.dim() != 3 or points.shape[0] != len(indices) or points.shape[2] != 3:
            raise ValueError(f"points must be [B, N, 3] with B = {len(indices)}, got {tuple(points.shape)}")
        return torch.stack([self._crossings(i, p, above_only=True) % 2 == 1 for i, p in zip(indices, points)])

    def _crossings(self, index: int, points: torch.Tensor, above_only: bool) -> torch.Tensor:
        point, face = self._columns[index].candidates(points.double())
        return line_crossings(self.meshes[index], points, point, face, above_only)

    def open_fraction(self, index: int, lines: int = 4096) -> float:
        """The fraction of `lines` lines along z, drawn uniformly (seeded) over scan `index`'s
        (x, y) extent, that cross its surface an odd number of times: 0 for a closed scan,
        whose inside test is then exact; holes facing z make it positive."""
        mesh = self.meshes[self._check([index])[0]]
        low, high = mesh.vertices.min(0).values, mesh.vertices.max(0).values
        points = low + (high - low) * torch.rand(lines, 3, generator=torch.Generator().manual_seed(0))
        return float((self._crossings(index, points, above_only=False) % 2 == 1).float().mean())

    def surface(self, indices: Sequence[int], count: int,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Area-uniform surface points of scans `indices`: (points, unit face normals, colours
        interpolated from the vertices), each [B, count, 3]."""
        results = []
        for index in self._check(indices):
            mesh = self.meshes[index]
            face = torch.multinomial(self._areas[index], count, replacement=True, generator=generator)
            root, v = torch.rand(count, generator=generator).sqrt(), torch.rand(count, generator=generator)
            weights = torch.stack([1 - root, root * (1 - v), root * v], -1).unsqueeze(-1)  # [count, 3, 1]
            corners = mesh.faces[face]
            triangle = mesh.vertices[corners]
            normal = torch.linalg.cross(triangle[:, 1] - triangle[:, 0], triangle[:, 2] - triangle[:, 0])
            results.append(((triangle * weights).sum(1), torch.nn.functional.normalize(normal, dim=-1),
                            (mesh.colors[corners] * weights).sum(1)))
        return tuple(torch.stack(parts) for parts in zip(*results))

    def occupancy_samples(self, indices: Sequence[int], count: int, sigma: float = 0.05, uniform_ratio: float = 1 / 16,
                          generator: torch.Generator | None = None) -> OccupancySamples:
        """As synthetic.sample_occupancy: surface points + N(0, sigma^2) and a `uniform_ratio`
        share of uniform box points, labelled by `inside`."""
        uniform = round(count * uniform_ratio)
        surface = self.surface(indices, count - uniform, generator)[0]
        near = surface + sigma * torch.randn(surface.shape, generator=generator)
        box = (torch.rand(len(indices), uniform, 3, generator=generator) * 2 - 1) * BOX
        points = torch.cat([near, box], 1)
        return OccupancySamples(points, self.inside(indices, points).float())

    def color_samples(self, indices: Sequence[int], count: int, offset: float = 0.005,
                      generator: torch.Generator | None = None) -> ColorSamples:
        """As synthetic.sample_surface_colors: surface points moved by N(0, offset^2) along the
        normal, with the colour of the surface point they came from."""
        points, normals, colors = self.surface(indices, count, generator)
        shift = offset * torch.randn(points.shape[:2], generator=generator).unsqueeze(-1)
        return ColorSamples(points + shift * normals, colors)
