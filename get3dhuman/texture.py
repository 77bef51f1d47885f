"""UV-textured meshes: decimation to a face count, an atlas unwrapped by xatlas, and a texture
baked from a colour field texel by texel.

`bake_texture` rasterizes each chart in UV space (`ops.rasterize`), so every texel whose centre
lies in a triangle gets the 3-D surface point under it; the colour field is queried there, in
chunks, and the charts are dilated by `dilation` texels so that mip-mapping shows no seams.
UV convention (OBJ, glTF after trimesh's flip): texel (row r, column c) of an S x S texture has
its centre at u = (c + 0.5) / S, v = 1 - (r + 0.5) / S.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from get3dhuman._checks import check_int
from get3dhuman.mesh import MIN_FACES, TexturedMesh, check_texture_size, vertex_normals
from get3dhuman.ops.rasterize import rasterize

ColorField = Callable[[torch.Tensor], torch.Tensor]  # points [N, 3] -> RGB [N, 3] in [0, 1]
def decimate(mesh: TexturedMesh, faces: int) -> TexturedMesh:
    """`mesh` with at most `faces` faces, by quadric-error edge collapses (fast-simplification,
    the Fast Quadric Mesh Simplification algorithm), open boundaries kept; a closed mesh stays
    closed. Vertex colours are those of the nearest original vertex. A mesh with no more faces
    than asked is returned as it is."""
    import fast_simplification
    from scipy.spatial import cKDTree

    faces = check_int(faces, "faces", MIN_FACES)
    if mesh.faces.shape[0] <= faces:
        return mesh
    positions = mesh.vertices.detach().cpu().double().numpy()
    vertices, triangles = fast_simplification.simplify(positions, mesh.faces.cpu().numpy(), target_count=faces,
                                                       preserve_border=True)
    nearest = cKDTree(positions).query(vertices)[1]
    vertices = torch.from_numpy(vertices.astype(np.float32)).to(mesh.vertices.device)
    triangles = torch.from_numpy(triangles.astype(np.int64)).to(mesh.faces.device)
    colors = mesh.colors[torch.from_numpy(nearest).to(mesh.colors.device)]
    return TexturedMesh.from_geometry(vertices, triangles, colors)


def unwrap(vertices: torch.Tensor, faces: torch.Tensor, size: int, padding: int = 4):
    """An atlas of the mesh by xatlas, packed for an S x S texture with `padding` texels between
    charts: (vertex_map [V'] int64, the original vertex of each atlas vertex; faces [F, 3] of
    the atlas vertices; uvs [V', 2] in [0, 1]; charted [F] bool, the faces xatlas placed). The
    faces it leaves out (slivers of no area, which decimation and marching cubes make) cover no
    texel; their vertices found in no placed face take the UV of the nearest one that is."""
    import xatlas

    atlas = xatlas.Atlas()
    atlas.add_mesh(vertices.detach().cpu().numpy().astype(np.float32), faces.cpu().numpy().astype(np.uint32))
    pack = xatlas.PackOptions()
    pack.resolution, pack.padding, pack.bilinear = size, padding, True
    atlas.generate(pack_options=pack)
    vertex_map, atlas_faces, uvs = atlas[0]
    # xatlas leaves faces of no area (marching cubes makes some, a vertex's length across) at
    # uv (0, 0): their vertices take the UV of the nearest vertex of a charted face.
    corners = uvs[atlas_faces]
    edge1, edge2 = corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]
    area = np.abs(edge1[:, 0] * edge2[:, 1] - edge1[:, 1] * edge2[:, 0])
    charted = np.zeros(len(uvs), bool)
    charted[atlas_faces[area > 0].reshape(-1)] = True
    if charted.any() and not charted.all():
        from scipy.spatial import cKDTree

        positions = vertices.detach().cpu().numpy()[vertex_map]
        nearest = cKDTree(positions[charted]).query(positions[~charted])[1]
        uvs[~charted] = uvs[charted][nearest]
    return (torch.from_numpy(vertex_map.astype(np.int64)), torch.from_numpy(atlas_faces.astype(np.int64)),
            torch.from_numpy(uvs.astype(np.float32)), torch.from_numpy(area > 0))


def texel_points(uvs: torch.Tensor, faces: torch.Tensor, vertices: torch.Tensor, size: int):
    """The surface points under the texels of an S x S texture: (covered [S, S] bool, the texels
    whose centre lies in a face of the atlas; points [K, 3], the 3-D point under each covered
    texel in row-major order), from uvs [V, 2], faces [F, 3] and vertices [V, 3] of the atlas."""
    # Texel centres at the rasterizer's pixel centres: u = (c + 0.5) / S -> x = -1 + 2c / (S - 1).
    ndc = torch.stack([(uvs[:, 0] * size - 0.5) * 2 / (size - 1) - 1,
                       ((1 - uvs[:, 1]) * size - 0.5) * 2 / (size - 1) - 1, torch.zeros_like(uvs[:, 0])], 1)
    drawn = rasterize(ndc.contiguous(), faces, size)
    covered = drawn.face_index >= 0
    corners = faces[drawn.face_index[covered]]  # [K, 3]
    points = (vertices[corners] * drawn.barycentric[covered].unsqueeze(-1).to(vertices.dtype)).sum(1)
    return covered, points


def dilate(texture: torch.Tensor, covered: torch.Tensor, texels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """texture [S, S, 3] with the texels within `texels` (Chebyshev distance) of the covered
    ones [S, S] filled, each pass giving every empty texel next to filled ones their mean; and
    the filled texels [S, S] bool."""
    filled = covered.float()[None, None]
    color = (texture.permute(2, 0, 1) * filled[0])[None]
    for _ in range(texels):
        count = F.avg_pool2d(filled, 3, 1, 1, count_include_pad=False)
        total = F.avg_pool2d(color, 3, 1, 1, count_include_pad=False)
        grow = (filled == 0) & (count > 0)
        color = torch.where(grow, total / count.clamp_min(1e-12), color)
        filled = torch.where(grow, torch.ones_like(filled), filled)
    return color[0].permute(1, 2, 0), filled[0, 0] > 0


# Barycentric weights of the points of each face splatted into the texels under them.
_SPLAT_WEIGHTS = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0.5, 0.5, 0], [0, 0.5, 0.5], [0.5, 0, 0.5],
                               [1 / 3, 1 / 3, 1 / 3]])


def _texel_of(uvs: torch.Tensor, size: int) -> torch.Tensor:
    """Row-major index of the texel holding each of uvs [N, 2]."""
    column = (uvs[:, 0] * size).floor().long().clamp(0, size - 1)
    row = ((1 - uvs[:, 1]) * size).floor().long().clamp(0, size - 1)
    return row * size + column


def _query(color_fn: ColorField, points: torch.Tensor, chunk: int) -> torch.Tensor:
    """color_fn at points [N, 3], `chunk` at a time, clamped to [0, 1]: [N, 3] float32."""
    if not len(points):
        return points.new_zeros(0, 3, dtype=torch.float32)
    return torch.cat([color_fn(part).float() for part in points.split(chunk)]).clamp(0, 1)


def bake_texture(mesh: TexturedMesh, color_fn: ColorField, size: int = 1024, *, padding: int = 4,
                 dilation: int = 4, chunk: int = 1 << 18, background: float = 0.5) -> TexturedMesh:
    """`mesh` with a UV atlas and a size x size texture of `color_fn` at the surface point under
    each texel (queried in chunks of `chunk` points, without gradients), charts dilated by
    `dilation` texels, `background` elsewhere. The vertices are split along the atlas's seams;
    each keeps its vertex colour. An empty mesh is returned as it is."""
    size = check_texture_size(size)
    padding, dilation = check_int(padding, "padding", 0), check_int(dilation, "dilation", 0)
    chunk = check_int(chunk, "chunk", 1)
    if mesh.is_empty:
        return mesh
    vertex_map, faces, uvs, charted = (tensor.to(mesh.vertices.device)
                                       for tensor in unwrap(mesh.vertices, mesh.faces, size, padding))
    vertices, placed = mesh.vertices[vertex_map], faces[charted]
    covered, points = texel_points(uvs, placed, vertices, size)
    # Charts too thin for a texel centre: texels under their corners, edge midpoints and centroids.
    splat_uvs, splat_points = (torch.einsum("kc,fcd->fkd", _SPLAT_WEIGHTS.to(values), values[placed])
                               .reshape(-1, values.shape[1]) for values in (uvs, vertices))
    splat_texels = _texel_of(splat_uvs, size)
    missed = ~covered.reshape(-1)[splat_texels]
    splat_texels, splat_points = splat_texels[missed], splat_points[missed]
    with torch.no_grad():
        colors = _query(color_fn, torch.cat([points, splat_points]), chunk)
    device = vertices.device
    texture = torch.zeros(size * size, 3, device=device)
    texture[covered.reshape(-1)] = colors[: len(points)]
    counts = torch.zeros(size * size, device=device).index_add_(0, splat_texels,
                                                                torch.ones_like(splat_texels, dtype=torch.float32))
    sums = torch.zeros(size * size, 3, device=device).index_add_(0, splat_texels, colors[len(points):])
    splatted = counts > 0
    texture[splatted] = sums[splatted] / counts[splatted].unsqueeze(1)
    texture, filled = dilate(texture.reshape(size, size, 3), covered | splatted.reshape(size, size), dilation)
    texture = torch.where(filled.unsqueeze(-1), texture, float(background))
    return TexturedMesh(vertices, faces, mesh.colors[vertex_map], vertex_normals(vertices, faces), uvs, texture)
