"""Mesh extraction: narrow band -> sparse marching cubes -> vertex colours -> TexturedMesh.

`extract_textured_meshes` works for any batch of fields given as callables (the Generator's
fused queries, analytic fields); `Generator.extract_mesh` and `Generator.sample` call it.
"""

from __future__ import annotations

import dataclasses
import numbers
import os
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from get3dhuman._checks import check_int
from get3dhuman.claims import write_file_atomically
from get3dhuman.ops.narrow_band import narrow_band

Field = Callable[[torch.Tensor], torch.Tensor]
# The mesh formats `TexturedMesh.export` writes (through trimesh). OFF and STL carry no colours; STL
# stores every triangle with its own three corners (a mesh read back from it is not welded).
EXPORT_FILE_TYPES = ("ply", "obj", "glb", "off", "stl")
UP_AXES = ("y", "z")  # the up axes of exported files (`TexturedMesh.placed`)


@dataclasses.dataclass
class TexturedMesh:
    """A triangle mesh with per-vertex colours, and optionally a UV-mapped texture.

    Attributes:
        vertices: [V, 3] float32 positions.
        faces: [F, 3] int64 vertex indices, counter-clockwise seen from outside.
        colors: [V, 3] float32 RGB in [0, 1].
        normals: [V, 3] float32 unit outward normals (area-weighted face normals).
        uvs: [V, 2] float32 texture coordinates in [0, 1] (u right, v up), or None.
        texture: [S, S, 3] float32 RGB in [0, 1], row 0 at v = 1 (`texture.bake_texture`), or None.
    """

    vertices: torch.Tensor
    faces: torch.Tensor
    colors: torch.Tensor
    normals: torch.Tensor
    uvs: torch.Tensor | None = None
    texture: torch.Tensor | None = None

    @classmethod
    def from_geometry(cls, vertices: torch.Tensor, faces: torch.Tensor, colors: torch.Tensor) -> TexturedMesh:
        """Builds the mesh and its vertex normals from vertices [V, 3], faces [F, 3], colours [V, 3]."""
        return cls(vertices, faces, colors, vertex_normals(vertices, faces))

    @classmethod
    def load(cls, path: str | os.PathLike, file_type: str | None = None) -> TexturedMesh:
        """Reads a mesh file through trimesh: what `export` wrote (GLB, PLY, OBJ) or any mesh
        trimesh reads (a scene's meshes are concatenated). Vertices and faces as stored (no
        merging or reordering), vertex colours as stored (8-bit: within 1/510 of the colours
        exported; grey, 0.5, where the file has none; with a texture, its colour at each vertex's
        UV, and the UVs and texture), normals recomputed from the geometry as `from_geometry`
        makes them (so equal to those exported)."""
        import trimesh

        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"path must be a mesh file, got {path!r}")
        try:
            loaded = trimesh.load(path, file_type=file_type, force="mesh", process=False)
        except (ValueError, IndexError, KeyError, TypeError, AttributeError, EOFError, NotImplementedError) as error:
            # what trimesh's readers raise on a malformed or unknown file
            raise ValueError(f"{path} is not a mesh file trimesh reads ({type(error).__name__}: {error})") from error
        vertices = torch.from_numpy(np.asarray(loaded.vertices, dtype=np.float32).reshape(-1, 3))
        faces = torch.from_numpy(np.asarray(loaded.faces, dtype=np.int64).reshape(-1, 3))
        image = getattr(getattr(loaded.visual, "material", None), "baseColorTexture", None) or \
            getattr(getattr(loaded.visual, "material", None), "image", None)
        if loaded.visual.kind == "texture" and loaded.visual.uv is not None and image is not None:
            uvs = torch.from_numpy(np.asarray(loaded.visual.uv, dtype=np.float32).reshape(-1, 2))
            texture = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255)
            mesh = cls.from_geometry(vertices, faces, sample_texture(texture, uvs))
            return dataclasses.replace(mesh, uvs=uvs, texture=texture)
        if loaded.visual.kind == "vertex":
            colors = torch.from_numpy(np.asarray(loaded.visual.vertex_colors[:, :3], dtype=np.float32) / 255)
        else:
            colors = torch.full_like(vertices, 0.5)
        return cls.from_geometry(vertices, faces, colors)

    @property
    def is_empty(self) -> bool:
        """True when the mesh has no faces (the field never crossed its level)."""
        return self.faces.shape[0] == 0

    def to(self, device: str | torch.device) -> TexturedMesh:
        """The mesh with every tensor on `device`."""
        return TexturedMesh(*(None if getattr(self, field.name) is None else getattr(self, field.name).to(device)
                              for field in dataclasses.fields(self)))

    def to_trimesh(self, texture_name: str = "texture"):
        """A trimesh.Trimesh (vertices and faces as they are): with a texture, its UVs and a PBR
        material whose baseColorTexture is the texture (named `texture_name`), else 8-bit RGBA
        vertex colours."""
        import trimesh

        normals = self.normals.detach().cpu().numpy() if len(self.vertices) else None
        arrays = (self.vertices.detach().cpu().numpy(), self.faces.cpu().numpy())
        if self.texture is not None:
            from PIL import Image

            image = Image.fromarray((self.texture.detach().clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8))
            material = trimesh.visual.material.PBRMaterial(name=texture_name, baseColorTexture=image,
                                                           metallicFactor=0.0, roughnessFactor=1.0)
            visual = trimesh.visual.TextureVisuals(uv=self.uvs.detach().cpu().numpy(), material=material)
            return trimesh.Trimesh(*arrays, visual=visual, vertex_normals=normals, process=False)
        colors = (self.colors.detach().clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
        rgba = np.concatenate([colors, np.full((len(colors), 1), 255, np.uint8)], 1)
        return trimesh.Trimesh(*arrays, vertex_colors=rgba, vertex_normals=normals, process=False)

    def placed(self, ground: bool = False, up: str = "y") -> TexturedMesh:
        """The mesh moved for a file: with `ground`, its lowest point at y = 0 and its bounding
        box centred in x and z; with `up` 'z', turned a quarter about x so that its up (+y) is
        +z (y -> z, z -> -y), as z-up tools (Blender, Unreal) expect. 'y' keeps y up (glTF)."""
        if up not in UP_AXES:
            raise ValueError(f"up must be one of {', '.join(UP_AXES)}, got {up!r}")
        vertices, normals = self.vertices, self.normals
        if ground and len(vertices):
            lower, upper = vertices.min(0).values, vertices.max(0).values
            vertices = vertices - torch.stack([(lower[0] + upper[0]) / 2, lower[1], (lower[2] + upper[2]) / 2])
        if up == "z":
            vertices, normals = (torch.stack([t[:, 0], -t[:, 2], t[:, 1]], 1) for t in (vertices, normals))
        return dataclasses.replace(self, vertices=vertices, normals=normals)

    def export(self, path: str | os.PathLike, file_type: str | None = None, *, ground: bool = False,
               up: str = "y") -> None:
        """Writes the mesh (`placed(ground, up)`) through trimesh as one of EXPORT_FILE_TYPES
        (from the suffix or `file_type`), making its folder if missing. GLB and OBJ keep a texture (GLB: embedded
        as a PBR baseColorTexture; OBJ: beside it, STEM.mtl and STEM-texture.png), else the
        vertex colours; PLY keeps the vertex colours. Each file appears complete or not at all:
        it is written under a temporary name, then renamed (an OBJ after its material files)."""
        import trimesh

        path = os.fspath(path)
        file_type = (file_type or os.path.splitext(path)[1].lstrip(".")).lower()
        if file_type not in EXPORT_FILE_TYPES:
            raise ValueError(f"path must end in a mesh suffix ({', '.join('.' + t for t in EXPORT_FILE_TYPES)}) or "
                             f"file_type be one of them, got {path!r} (file_type {file_type!r})")
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        stem = os.path.splitext(os.path.basename(path))[0]
        textured = self.texture is not None and file_type in ("glb", "obj")
        placed = self.placed(ground, up)
        mesh = (placed if textured else dataclasses.replace(placed, uvs=None, texture=None)).to_trimesh(
            f"{stem}-texture")
        if textured and file_type == "obj":
            text, files = trimesh.exchange.obj.export_obj(mesh, include_texture=True, return_texture=True,
                                                          mtl_name=f"{stem}.mtl")
            for name, data in files.items():
                data = data.encode() if isinstance(data, str) else data
                write_file_atomically(os.path.join(directory, name), lambda temporary, data=data: _write_bytes(temporary, data))
            write_file_atomically(path, lambda temporary: _write_bytes(temporary, text.encode()))
        else:
            write_file_atomically(path, lambda temporary: mesh.export(temporary, file_type=file_type))


def _write_bytes(path: str, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)


def sample_texture(texture: torch.Tensor, uvs: torch.Tensor) -> torch.Tensor:
    """Bilinear samples [N, 3] of texture [S, S, 3] at uvs [N, 2] (u right, v up: texel (r, c)
    centred at u = (c + 0.5) / S, v = 1 - (r + 0.5) / S)."""
    grid = torch.stack([uvs[:, 0] * 2 - 1, (1 - uvs[:, 1]) * 2 - 1], -1)  # align_corners=False: texel edges
    sampled = F.grid_sample(texture.permute(2, 0, 1)[None], grid[None, None], mode="bilinear",
                            padding_mode="border", align_corners=False)
    return sampled[0, :, 0].T


def vertex_normals(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Unit area-weighted vertex normals [V, 3] of a mesh (zero for unused vertices)."""
    corners = vertices[faces]  # [F, 3, 3]
    face_normals = torch.linalg.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    normals = torch.zeros_like(vertices).index_add_(0, faces.reshape(-1), face_normals.repeat_interleave(3, 0))
    return torch.nn.functional.normalize(normals, dim=1)


TEXTURE_SIZES = (64, 8192)  # the powers of two a texture's side may be
MIN_FACES = 100  # fewer cannot draw a human


def check_texture_size(size: int) -> int:
    """`size` if it is a power of two within TEXTURE_SIZES; ValueError naming `texture_size` otherwise."""
    size = check_int(size, "texture_size", 1)
    if size & (size - 1) or not TEXTURE_SIZES[0] <= size <= TEXTURE_SIZES[1]:
        raise ValueError(f"texture_size must be a power of two from {TEXTURE_SIZES[0]} to {TEXTURE_SIZES[1]}, "
                         f"got {size}")
    return size


@dataclasses.dataclass(frozen=True)
class MeshingOptions:
    """How a field becomes a mesh (`extract_textured_meshes`, `Generator.extract_mesh`,
    `dataset.write_samples`), apart from the resolution.

    coarse_resolution: the narrow band's first lattice (None: `ops.coarse_resolution_for`).
    band: extra width of the band refined around the surface, in coarse cells (`ops.narrow_band`).
    chunk: points per field evaluation.
    compute_dtype: of the decoders' matrix products (`ops.query_field`); None: the model's
        weights' dtype. torch.bfloat16 meshes differ from float32's in a few faces in 10^4.
    faces: decimate each mesh to at most this many faces (`texture.decimate`; None: keep all).
    texture_size: bake a texture of this side (a power of two in TEXTURE_SIZES) on a UV atlas
        (`texture.bake_texture`); None: vertex colours only.
    """

    coarse_resolution: int | None = None
    band: float = 0.0
    chunk: int = 1 << 18
    compute_dtype: torch.dtype | None = None
    faces: int | None = None
    texture_size: int | None = None

    def __post_init__(self) -> None:  # checked and made plain Python values, as settings record them
        object.__setattr__(self, "coarse_resolution", check_int(self.coarse_resolution, "coarse_resolution", 1,
                                                                none_ok=True))
        object.__setattr__(self, "chunk", check_int(self.chunk, "chunk", 1))
        if not (isinstance(self.band, numbers.Real) and not isinstance(self.band, bool) and self.band >= 0):
            raise ValueError(f"band must be a non-negative float, got {self.band!r}")  # inf: every cell
        object.__setattr__(self, "band", float(self.band))
        if self.compute_dtype is not None and not (isinstance(self.compute_dtype, torch.dtype)
                                                   and self.compute_dtype.is_floating_point):
            raise ValueError(f"compute_dtype must be None or a floating torch.dtype, got {self.compute_dtype!r}")
        object.__setattr__(self, "faces", check_int(self.faces, "faces", MIN_FACES, none_ok=True))
        if self.texture_size is not None:
            object.__setattr__(self, "texture_size", check_texture_size(self.texture_size))

    def settings(self, weights_dtype: torch.dtype | None = None) -> dict:
        """The options that differ from the defaults, dtypes as text ('torch.bfloat16'), as a
        dataset's settings.json records them; a compute_dtype equal to `weights_dtype` is the
        default."""
        recorded = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value != field.default and not (field.name == "compute_dtype" and value == weights_dtype):
                recorded[field.name] = str(value) if isinstance(value, torch.dtype) else value
        return recorded


@dataclasses.dataclass
class ExtractionTimings:
    """Seconds spent per stage of `extract_textured_meshes` (summed over the batch)."""

    networks: float = 0.0         # latents -> feature volumes (Generator.extract_mesh)
    queries: float = 0.0          # field evaluations
    narrow_band: float = 0.0      # classification, child generation, de-duplication, closure
    marching_cubes: float = 0.0
    colors: float = 0.0
    texture: float = 0.0          # decimation, UV unwrapping, baking (MeshingOptions faces, texture_size)
    evaluated_fraction: list[float] = dataclasses.field(default_factory=list)  # per mesh


def extract_textured_meshes(field: Field, color: Field | None, batch_size: int, resolution: int = 256, *,
                            level: float = 0.5, inside_is_above: bool = True,
                            bounds: tuple[Sequence[float], Sequence[float]] = ((-1.0,) * 3, (1.0,) * 3),
                            meshing: MeshingOptions | None = None, device: torch.device | str = "cpu",
                            timings: ExtractionTimings | None = None) -> list[TexturedMesh]:
    """Meshes of `batch_size` fields evaluated together.

    Args:
        field: points [B, N, 3] -> values [B, N] (e.g. occupancy probability).
        color: points [B, N, 3] -> RGB [B, N, 3] in [0, 1], or None for grey.
        level: the iso-value; inside_is_above: whether inside means values above it (occupancy)
            or below (signed distance); faces are oriented outward either way.
        resolution, bounds: as for `ops.narrow_band`; meshing: its coarse_resolution, band and
            chunk (MeshingOptions; compute_dtype is the fields' business).
        timings: filled with the time per stage when given.

    Returns:
        one TexturedMesh per batch row; empty (no faces) where the field never crosses the level.
    """
    timings = timings if timings is not None else ExtractionTimings()
    meshing = meshing if meshing is not None else MeshingOptions()
    query_seconds = 0.0

    def timed_field(points):
        nonlocal query_seconds
        start = time.perf_counter()
        values = field(points)
        query_seconds += time.perf_counter() - start
        return values

    start = time.perf_counter()
    volume = narrow_band(timed_field, resolution, batch_size=batch_size, bounds=bounds, level=level,
                         coarse_resolution=meshing.coarse_resolution, band=meshing.band, device=device,
                         chunk=meshing.chunk)
    timings.queries += query_seconds
    timings.narrow_band += time.perf_counter() - start - query_seconds
    timings.evaluated_fraction += volume.fraction_evaluated.tolist()

    start = time.perf_counter()
    geometry = volume.marching_cubes(flip=inside_is_above)
    timings.marching_cubes += time.perf_counter() - start

    start = time.perf_counter()
    longest = max(len(vertices) for vertices, _ in geometry)
    if color is None or longest == 0:
        colors = [torch.full_like(vertices, 0.5) for vertices, _ in geometry]
    else:
        padded = torch.zeros(batch_size, longest, 3, device=geometry[0][0].device)
        for b, (vertices, _) in enumerate(geometry):
            padded[b, : len(vertices)] = vertices
        with torch.no_grad():
            rgb = torch.cat([color(part) for part in padded.split(meshing.chunk, dim=1)], 1)
        colors = [rgb[b, : len(vertices)].float().clamp(0, 1) for b, (vertices, _) in enumerate(geometry)]
    timings.colors += time.perf_counter() - start
    return [TexturedMesh.from_geometry(vertices, faces, rgb) for (vertices, faces), rgb in zip(geometry, colors)]


def back_projected_colors(points: torch.Tensor, normals: torch.Tensor, colors: torch.Tensor, images: torch.Tensor,
                          calib: torch.Tensor, depth: torch.Tensor, mask: torch.Tensor,
                          tolerance: float = 0.02) -> torch.Tensor:
    """Colours [N, 3] of surface points [N, 3] with normals [N, 3] taken from views of the
    surface: images [K, H, W, 3] seen through orthographic cameras calib [K, 4, 4] (world ->
    NDC, as render.Rendering), with their depth and mask maps [K, H, W]. A point takes the
    colour at its projection in every view where it is visible (inside the mask, NDC z within
    `tolerance` of the depth map's), weighted by how squarely its normal faces the camera;
    points seen by no view keep `colors` [N, 3]."""
    views = images.shape[0]
    if images.dim() != 4 or images.shape[-1] != 3 or calib.shape != (views, 4, 4) or depth.shape != images.shape[:3] \
            or mask.shape != images.shape[:3]:
        raise ValueError(f"images must be [K, H, W, 3] with calib [K, 4, 4] and depth, mask [K, H, W], got "
                         f"{tuple(images.shape)}, {tuple(calib.shape)}, {tuple(depth.shape)}, {tuple(mask.shape)}")
    ndc = points.to(images).unsqueeze(0) @ calib[:, :3, :3].transpose(1, 2) + calib[:, :3, 3].unsqueeze(1)  # [K, N, 3]
    grid = ndc[..., :2].unsqueeze(2)  # [K, N, 1, 2]

    def sample(maps):  # [K, H, W, C] -> [K, N, C]
        return torch.nn.functional.grid_sample(maps.permute(0, 3, 1, 2), grid, align_corners=True)[..., 0].transpose(1, 2)

    seen_colors, seen_depth, seen = sample(images), sample(depth.unsqueeze(-1))[..., 0], sample(mask.unsqueeze(-1))[..., 0]
    turned = normals.to(images).unsqueeze(0) @ calib[:, :3, :3].transpose(1, 2)
    facing = (turned[..., 2] / turned.norm(dim=-1).clamp_min(1e-12)).clamp_min(0)  # NDC z points at the camera
    visible = (seen > 0.999) & ((ndc[..., 2] - seen_depth).abs() < tolerance) & (ndc[..., :2].abs() <= 1).all(-1)
    weight = visible * facing  # [K, N]
    total = weight.sum(0)
    blended = (weight.unsqueeze(-1) * seen_colors).sum(0) / total.clamp_min(1e-12).unsqueeze(-1)
    return torch.where((total > 0).unsqueeze(-1), blended, colors.to(images)).to(colors)


def back_project_colors(mesh: TexturedMesh, images: torch.Tensor, calib: torch.Tensor, depth: torch.Tensor,
                        mask: torch.Tensor, tolerance: float = 0.02) -> TexturedMesh:
    """The mesh with vertex colours `back_projected_colors` from views of it (images [K, H, W,
    3], calib [K, 4, 4], depth and mask [K, H, W]); vertices seen by no view keep their colour.
    A UV-textured mesh keeps its atlas and texture (see `texture.rebake_texture` for those)."""
    if mesh.is_empty:
        return mesh
    return dataclasses.replace(mesh, colors=back_projected_colors(mesh.vertices, mesh.normals, mesh.colors, images,
                                                                  calib, depth, mask, tolerance))
