"""UV-textured meshes: decimation to a face count, a UV atlas, and a texture baked from a colour
field texel by texel.

`unwrap` cuts the mesh into charts by face normal and projects each along its mean normal (the
way Blender's "smart UV project" does), then xatlas packs them. xatlas's own chart computation
took 8-15 s for a 50k-face human on this project's CPU (0.4-0.5 s this way) and crashed on an
80k-face sphere; the projected charts keep one texel density everywhere.

`bake_texture` rasterizes each chart in UV space (`ops.rasterize`), so every texel whose centre
lies in a triangle gets the 3-D surface point under it; the colour field is queried there, in
chunks, and the charts are dilated by `dilation` texels so that mip-mapping shows no seams.
UV convention (OBJ, glTF after trimesh's flip): texel (row r, column c) of an S x S texture has
its centre at u = (c + 0.5) / S, v = 1 - (r + 0.5) / S.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from get3dhuman._checks import check_int
from get3dhuman.mesh import MIN_FACES, TexturedMesh, check_texture_size, vertex_normals
from get3dhuman.ops.rasterize import rasterize

ColorField = Callable[[torch.Tensor], torch.Tensor]  # points [N, 3] -> RGB [N, 3] in [0, 1]


def decimate(mesh: TexturedMesh, faces: int, color_fn: ColorField | None = None) -> TexturedMesh:
    """`mesh` with at most `faces` faces, by quadric-error edge collapses (fast-simplification,
    the Fast Quadric Mesh Simplification algorithm), open boundaries kept; a closed mesh stays
    closed. Vertex colours are `color_fn` at the new vertices (without gradients, clamped to
    [0, 1]), or without one those of the nearest original vertex. A mesh with no more faces than
    asked is returned as it is."""
    import fast_simplification

    faces = check_int(faces, "faces", MIN_FACES)
    if mesh.faces.shape[0] <= faces:
        return mesh
    positions = mesh.vertices.detach().cpu().double().numpy()
    vertices, triangles = fast_simplification.simplify(positions, mesh.faces.cpu().numpy(), target_count=faces,
                                                       preserve_border=True)
    if color_fn is None:
        from scipy.spatial import cKDTree

        colors = mesh.colors[torch.from_numpy(cKDTree(positions).query(vertices)[1]).to(mesh.colors.device)]
    vertices = torch.from_numpy(vertices.astype(np.float32)).to(mesh.vertices.device)
    triangles = torch.from_numpy(triangles.astype(np.int64)).to(mesh.faces.device)
    if color_fn is not None:
        with torch.no_grad():
            colors = color_fn(vertices).float().clamp(0, 1).to(mesh.colors)
    return TexturedMesh.from_geometry(vertices, triangles, colors)


# Charts start as the faces nearest each axis direction, connected through edges.
_DIRECTIONS = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], np.float64)
_SMOOTHING_PASSES = 3  # neighbour votes that merge marching cubes' speckled labels into regions
_MIN_COSINE = 0.5      # a face within 60 degrees of its chart's axis: projected at most 2x smaller
_SMALL_CHART = 32     # charts of fewer faces join a neighbour where they can
_SPLIT_ROUNDS = 6      # rounds of splitting charts whose projection overlaps, before their faces go apart


def _edge_neighbours(faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The pairs (a [E], b [E]) of faces [F, 3] that share an edge."""
    edges = np.sort(faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2), 1)
    owner = np.repeat(np.arange(len(faces)), 3)
    order = np.lexsort((edges[:, 1], edges[:, 0]))
    edges, owner = edges[order], owner[order]
    same = (edges[1:] == edges[:-1]).all(1)
    return owner[:-1][same], owner[1:][same]


def _components(key: np.ndarray, neighbours: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Chart index [F] of faces joined through shared edges when their `key` [F] is equal."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    a, b = neighbours
    joined = key[a] == key[b]
    graph = coo_matrix((np.ones(joined.sum(), np.int8), (a[joined], b[joined])), shape=(len(key), len(key)))
    return connected_components(graph, directed=False)[1]


def _chart_axes(normals: np.ndarray, chart: np.ndarray) -> np.ndarray:
    """The unit mean normal [C, 3] of each chart, weighted by area (normals [F, 3] are area-long);
    +z for a chart of no area."""
    axes = np.zeros((chart.max() + 1, 3))
    np.add.at(axes, chart, normals)
    lengths = np.linalg.norm(axes, axis=1, keepdims=True)
    return np.where(lengths > 0, axes / np.where(lengths > 0, lengths, 1), [[0.0, 0.0, 1.0]])


def _merge_small_charts(chart: np.ndarray, unit: np.ndarray, normals: np.ndarray, flat: np.ndarray,
                        neighbours) -> np.ndarray:
    """chart [F] with each chart of fewer than _SMALL_CHART faces joined to the large chart it
    shares most edges with, among those whose axis all its faces are within _MIN_COSINE of
    (each chart costs its padding in the atlas). unit [F, 3]: unit face normals; normals [F, 3]
    area-long; flat [F]: faces of no area."""
    sizes = np.bincount(chart)
    a, b = neighbours
    across = chart[a] != chart[b]
    pairs, shared = np.unique(np.stack([chart[a][across], chart[b][across]], 1), axis=0, return_counts=True)
    pairs, shared = np.concatenate([pairs, pairs[:, ::-1]]), np.concatenate([shared, shared])
    candidate = (sizes[pairs[:, 0]] < _SMALL_CHART) & (sizes[pairs[:, 1]] >= _SMALL_CHART)
    pairs, shared = pairs[candidate], shared[candidate]
    axes = _chart_axes(normals, chart)
    target = np.arange(len(sizes))
    for small, large in pairs[np.lexsort((-shared, pairs[:, 0]))]:  # most shared edges first
        if target[small] == small:
            faces = (chart == small) & ~flat
            if (unit[faces] @ axes[large] >= _MIN_COSINE).all():
                target[small] = large
    return target[chart]


def _segment(normals: np.ndarray, neighbours) -> np.ndarray:
    """Chart index [F] of each face (normals [F, 3], area-long): faces labelled by their nearest
    axis direction, smoothed by neighbour votes, joined through edges, then split until every
    face of a chart is within _MIN_COSINE of the chart's mean normal (a face's own normal always is)."""
    lengths = np.linalg.norm(normals, axis=1)
    flat = lengths == 0  # faces of no area follow their neighbours
    score = normals @ _DIRECTIONS.T
    labels = score.argmax(1)
    a, b = neighbours
    rows = np.arange(len(normals))
    for _ in range(_SMOOTHING_PASSES):
        votes = np.zeros_like(score)
        np.add.at(votes, (a, labels[b]), 1)
        np.add.at(votes, (b, labels[a]), 1)
        votes[rows, labels] += 1.5  # a tie keeps the face's label
        votes[(score <= 0) & ~flat[:, None]] = -1  # never a direction the face turns from
        labels = votes.argmax(1)
    unit = normals / np.maximum(lengths, 1e-30)[:, None]
    chart = _merge_small_charts(_components(labels, neighbours), unit, normals, flat, neighbours)
    while True:
        turned = ((unit * _chart_axes(normals, chart)[chart]).sum(1) < _MIN_COSINE) & ~flat
        if not turned.any():
            return chart
        chart = _components(chart * 2 + turned, neighbours)


def _project(positions: np.ndarray, faces: np.ndarray, chart: np.ndarray, axes: np.ndarray):
    """Each chart's own copy of its vertices, projected along its axis: (vertex_map [V'], the
    original vertex of each copy; faces [F, 3] of the copies; plane [V', 2], coordinates in the
    plane of (e1, e2) with (e1, e2, axis) right-handed, so outward faces stay counter-clockwise;
    depth [V'] along the axis; owner [V'], the chart of each copy)."""
    copies = chart.repeat(3).astype(np.int64) * len(positions) + faces.reshape(-1)
    unique, inverse = np.unique(copies, return_inverse=True)
    vertex_map, owner = unique % len(positions), unique // len(positions)
    helper = np.where(np.abs(axes[:, :1]) < 0.9, [[1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]])
    e1 = np.cross(helper, axes)
    e1 /= np.linalg.norm(e1, axis=1, keepdims=True)
    e2 = np.cross(axes, e1)
    points = positions[vertex_map]
    plane = np.stack([(points * e1[owner]).sum(1), (points * e2[owner]).sum(1)], 1)
    return vertex_map, inverse.reshape(-1, 3), plane, (points * axes[owner]).sum(1), owner


def _doubled_areas(uvs: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Twice the signed area [F] of each face [F, 3] in UV space (uvs [V, 2]), counter-clockwise positive."""
    corners = uvs[faces]
    edge1, edge2 = corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]
    return edge1[:, 0] * edge2[:, 1] - edge1[:, 1] * edge2[:, 0]


def _largest_packing(plane: np.ndarray, faces: np.ndarray, size: int, padding: int, texels_per_unit: float):
    """(xatlas.Atlas, texels per unit) of the charts (plane [V, 2], faces [F, 3]) packed at the
    largest scale that fits an S x S texture with `padding` texels between charts (bracketed
    from `texels_per_unit`, in at most 16 packings; the padding does not scale), or None."""
    import xatlas

    options = xatlas.PackOptions()
    options.padding, options.bilinear, options.texels_per_unit = padding, True, 1.0
    fits, too_big, best = 0.0, np.inf, None
    for _ in range(16):
        atlas = xatlas.Atlas()  # charts in texels, so that xatlas's area threshold drops no sliver it need not
        atlas.add_uv_mesh((plane * texels_per_unit).astype(np.float32), faces.astype(np.uint32))
        atlas.generate(pack_options=options)
        side = max(atlas.width, atlas.height)
        if side <= size:
            fits, best = texels_per_unit, (atlas, texels_per_unit)
            if side >= 0.9 * size:
                break
        else:
            too_big = texels_per_unit
        texels_per_unit *= 0.99 * size / side
        if not fits < texels_per_unit < too_big:
            texels_per_unit = np.sqrt(fits * too_big) if fits else too_big / 2
    return best


def _pack(plane: np.ndarray, faces: np.ndarray, owner: np.ndarray, size: int, padding: int) -> np.ndarray:
    """uvs [V, 2] in [0, 1] of the charts (plane [V, 2], faces [F, 3], owner [V] the chart of
    each vertex) packed by xatlas into an S x S texture at the largest one scale that fits, with
    `padding` texels between charts, or half as many (down to none) where those do not fit.

    xatlas moves, turns, mirrors and rounds each chart to whole texels, but drops the faces it
    finds of no area and leaves their corners elsewhere: each chart is placed by the affine map
    that best carries its vertices to where xatlas put them (least squares, refitted without
    the corners more than a texel off)."""
    # xatlas joins vertices at one position: the charts go to cells of a grid, apart.
    charts = owner.max() + 1
    low = np.full((charts, 2), np.inf)
    np.minimum.at(low, owner, plane)
    high = np.full((charts, 2), -np.inf)
    np.maximum.at(high, owner, plane)
    cell, columns = (high - low).max() * 1.5 + 1e-9, int(np.ceil(np.sqrt(charts)))
    corner = np.stack([np.arange(charts) % columns, np.arange(charts) // columns], 1) * cell
    plane = plane - low[owner] + corner[owner]
    area = 0.5 * np.abs(_doubled_areas(plane, faces)).sum()
    if area == 0:  # nothing to texture: every face of no area
        return np.zeros_like(plane)
    for tried_padding in sorted({padding >> halvings for halvings in range(padding.bit_length() + 1)}, reverse=True):
        packing = _largest_packing(plane, faces, size, tried_padding, size * np.sqrt(0.55 / area))
        if packing is not None:
            break
    else:
        raise ValueError(f"texture_size {size} cannot hold the {charts} charts even without padding: "
                         "ask for a larger texture_size or fewer faces")
    atlas, texels_per_unit = packing
    copy_map, atlas_faces, packed = atlas[0]
    if not np.array_equal(copy_map[atlas_faces], faces):
        raise RuntimeError("xatlas reordered the charts' faces")
    source = plane[copy_map] * texels_per_unit  # each of xatlas's vertices, in texels
    target = packed * np.array([atlas.width, atlas.height])
    chart = owner[copy_map]
    # Fit on the corners of faces xatlas kept about their size (it rounds small charts to whole texels).
    ratio = np.abs(_doubled_areas(target, atlas_faces)) / np.maximum(np.abs(_doubled_areas(source, atlas_faces)), 1e-30)
    weight = np.zeros(len(copy_map))
    weight[atlas_faces[(ratio > 0.5) & (ratio < 2)]] = 1
    for _ in range(2):
        total = np.maximum(np.bincount(chart, weight, charts), 1e-30)[:, None]
        source_mean, target_mean = (np.stack([np.bincount(chart, weight * points[:, k], charts) for k in (0, 1)], 1)
                                    / total for points in (source, target))
        centred_source, centred_target = source - source_mean[chart], target - target_mean[chart]
        second_moment = np.zeros((charts, 2, 2))
        np.add.at(second_moment, chart, weight[:, None, None] * centred_source[:, :, None] * centred_source[:, None, :])
        cross_moment = np.zeros((charts, 2, 2))
        np.add.at(cross_moment, chart, weight[:, None, None] * centred_source[:, :, None] * centred_target[:, None, :])
        linear = np.linalg.pinv(second_moment) @ cross_moment  # [C, 2, 2]: uv = (p - mean) @ linear + mean
        moved = np.einsum("vk,vkd->vd", centred_source, linear[chart]) + target_mean[chart]
        weight = (np.abs(moved - target).max(1) <= 1).astype(np.float64)
    return (np.einsum("vk,vkd->vd", plane * texels_per_unit - source_mean[owner], linear[owner])
            + target_mean[owner]) / size


def _overlapping_faces(uvs: np.ndarray, faces: np.ndarray, depth: np.ndarray, size: int) -> np.ndarray:
    """Pairs [P, 2] of faces (no shared vertex) that hold one texel centre of an S x S texture:
    drawn with the chart depth, then with its negation, a texel shows the same face both times
    unless two overlap there."""
    ndc = torch.from_numpy(np.stack([(uvs[:, 0] * size - 0.5) * 2 / (size - 1) - 1,
                                     ((1 - uvs[:, 1]) * size - 0.5) * 2 / (size - 1) - 1, depth], 1)).float()
    faces_t = torch.from_numpy(faces.astype(np.int64))
    nearest = rasterize(ndc, faces_t, size).face_index
    ndc[:, 2] = -ndc[:, 2]
    farthest = rasterize(ndc, faces_t, size).face_index
    differ = (nearest != farthest).reshape(-1)
    pairs = torch.stack([nearest.reshape(-1)[differ], farthest.reshape(-1)[differ]], 1).numpy()
    if not len(pairs):
        return pairs
    shared = (faces[pairs[:, 0]][:, :, None] == faces[pairs[:, 1]][:, None, :]).any((1, 2))
    return np.unique(pairs[~shared], axis=0)


def default_padding(size: int) -> int:
    """Texels between charts in an S x S atlas unless asked otherwise: 4 at 1024, 1 up to 256."""
    return max(1, size // 256)


def unwrap(vertices: torch.Tensor, faces: torch.Tensor, size: int, padding: int | None = None):
    """A UV atlas of the mesh vertices [V, 3], faces [F, 3] for an S x S texture: (vertex_map
    [V'] int64, the original vertex of each atlas vertex; faces [F, 3] of the atlas vertices, in
    the input's order; uvs [V', 2] in [0, 1]; charted [F] bool, the faces placed in a chart
    with nonzero UV area). padding: texels between charts; None: `default_padding(size)`.

    Charts are the faces nearest one of the six axis directions, joined through edges, split
    where a face turns more than 60 degrees from the chart's mean normal or where the chart's
    projection overlaps itself; each is projected orthographically along its mean normal (one
    texel density everywhere, stretched at most 2x across steep faces) and xatlas packs them
    with `padding` texels between charts (fewer, down to none, where the texture cannot hold the
    charts with as many). The few faces xatlas drops as of no area (slivers) are not charted:
    each such chart has all its corners at one UV, that of a neighbour's copy of one of them."""
    padding = default_padding(size) if padding is None else padding
    positions = vertices.detach().cpu().double().numpy()
    triangles = faces.cpu().numpy()
    neighbours = _edge_neighbours(triangles)
    corners = positions[triangles]
    normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    chart = _segment(normals, neighbours)
    for split_round in range(_SPLIT_ROUNDS + 1):
        axes = _chart_axes(normals, chart)
        vertex_map, atlas_faces, plane, depth, owner = _project(positions, triangles, chart, axes)
        uvs = _pack(plane, atlas_faces, owner, size, padding)
        # Charts xatlas dropped (slivers of no area, or below its threshold) lie collapsed: each
        # goes to one point, where a chart placed whole has a copy of one of its vertices (else
        # texel (0, 0)), so that its faces keep no area and their corners about their colour.
        face_chart = owner[atlas_faces[:, 0]]
        plane_area = np.bincount(face_chart, np.abs(_doubled_areas(plane, atlas_faces)), len(axes))
        uv_area = np.bincount(face_chart, np.abs(_doubled_areas(uvs, atlas_faces)), len(axes))
        scale = uv_area / np.where(plane_area > 0, plane_area, 1)
        lost_chart = (plane_area == 0) | (scale < 0.5 * uv_area.sum() / max(plane_area.sum(), 1e-300))
        lost = lost_chart[owner]
        if lost.any():
            kept_copy = np.full(len(positions), -1)
            kept_copy[vertex_map[~lost]] = np.flatnonzero(~lost)
            point = np.full(len(axes), -1)
            np.maximum.at(point, owner[lost], kept_copy[vertex_map[lost]])
            uvs[lost] = np.where(point[owner[lost], None] >= 0, uvs[np.maximum(point[owner[lost]], 0)], 0.5 / size)
        charted = _doubled_areas(uvs, atlas_faces) != 0  # a dropped chart lies at one point
        drawn = np.flatnonzero(charted)
        pairs = drawn[_overlapping_faces(uvs, atlas_faces[drawn], depth, size)]
        if not len(pairs):
            break
        if split_round == _SPLIT_ROUNDS:
            raise RuntimeError(f"unwrap: charts still overlap after {_SPLIT_ROUNDS} splits")
        crowded = np.unique(chart[pairs])
        face_depth = depth[atlas_faces].mean(1)
        if split_round == _SPLIT_ROUNDS - 1:  # last resort: a face alone never overlaps itself
            apart = np.isin(chart, crowded) * (np.arange(len(chart)) + 1)
        else:  # split each overlapping chart at the mean depth between its overlapping faces
            middle = np.zeros(chart.max() + 1)
            np.add.at(middle, chart[pairs[:, 0]], face_depth[pairs].mean(1))
            middle /= np.maximum(np.bincount(chart[pairs[:, 0]], minlength=len(middle)), 1)
            apart = np.isin(chart, crowded) & (face_depth > middle[chart])
        chart = _components(chart * (len(chart) + 2) + apart, neighbours)
    return (torch.from_numpy(vertex_map), torch.from_numpy(atlas_faces),
            torch.from_numpy(uvs.astype(np.float32)), torch.from_numpy(charted))


def _texel_barycentrics(uvs: torch.Tensor, faces: torch.Tensor, size: int):
    """(covered [S, S] bool, the texels of an S x S texture whose centre lies in one of faces
    [F, 3] in UV space (uvs [V, 2]); face [K], the face under each covered texel in row-major
    order; barycentric [K, 3], the texel centre's weights of its corners)."""
    # Texel centres at the rasterizer's pixel centres: u = (c + 0.5) / S -> x = -1 + 2c / (S - 1).
    ndc = torch.stack([(uvs[:, 0] * size - 0.5) * 2 / (size - 1) - 1,
                       ((1 - uvs[:, 1]) * size - 0.5) * 2 / (size - 1) - 1, torch.zeros_like(uvs[:, 0])], 1)
    drawn = rasterize(ndc.float().contiguous(), faces, size)
    covered = drawn.face_index >= 0
    return covered, drawn.face_index[covered], drawn.barycentric[covered]


def texel_points(uvs: torch.Tensor, faces: torch.Tensor, vertices: torch.Tensor, size: int):
    """The surface points under the texels of an S x S texture: (covered [S, S] bool, the texels
    whose centre lies in a face of the atlas; points [K, 3], the 3-D point under each covered
    texel in row-major order), from uvs [V, 2], faces [F, 3] and vertices [V, 3] of the atlas."""
    covered, face, barycentric = _texel_barycentrics(uvs, faces, size)
    return covered, (vertices[faces[face]] * barycentric.unsqueeze(-1).to(vertices.dtype)).sum(1)


def drawn_faces(mesh: TexturedMesh) -> torch.Tensor:
    """[F] bool: the faces of `mesh`'s atlas that own texels, those of nonzero UV area at about
    the atlas's one scale (UV over 3-D area within 4x of the median): an atlas of another tool
    may put faces it leaves out anywhere."""
    corners3, corners2 = mesh.vertices.double()[mesh.faces], mesh.uvs.double()[mesh.faces]
    area = torch.linalg.cross(corners3[:, 1] - corners3[:, 0], corners3[:, 2] - corners3[:, 0]).norm(dim=1)
    edge1, edge2 = corners2[:, 1] - corners2[:, 0], corners2[:, 2] - corners2[:, 0]
    uv_area = (edge1[:, 0] * edge2[:, 1] - edge1[:, 1] * edge2[:, 0]).abs()
    ratio = uv_area / area.clamp_min(1e-300)
    candidate = (uv_area > 0) & (area > 0)
    if not candidate.any():
        return candidate
    typical = ratio[candidate].median()
    return candidate & (ratio <= 4 * typical) & (ratio >= typical / 4)


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


SurfaceColor = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""(points [N, 3], unit normals [N, 3], the texture's current colours [N, 3]) -> RGB [N, 3] in [0, 1]."""


def rebake_texture(mesh: TexturedMesh, surface_color: SurfaceColor, *, dilation: int = 4, chunk: int = 1 << 18,
                   background: float = 0.5) -> TexturedMesh:
    """`mesh` (UV-textured, e.g. by `bake_texture`) with every texel under its atlas (see
    `drawn_faces`) recomputed by `surface_color` from the surface point, the unit normal
    (interpolated from the vertex normals) and the texel's current colour, `chunk` texels at a
    time without gradients; the charts dilated again by `dilation` texels, `background`
    elsewhere. Vertices, faces, UVs and vertex colours stay as they are."""
    if mesh.texture is None or mesh.uvs is None:
        raise ValueError("mesh must have uvs and a texture (bake_texture makes them), got an untextured mesh")
    dilation, chunk = check_int(dilation, "dilation", 0), check_int(chunk, "chunk", 1)
    if mesh.is_empty:
        return mesh
    return _fill_texels(mesh, surface_color, True, dilation, chunk, background)


def _fill_texels(mesh: TexturedMesh, color, surface: bool, dilation: int, chunk: int, background: float) -> TexturedMesh:
    """`rebake_texture` of a non-empty textured mesh: `color` a SurfaceColor when `surface`,
    else a ColorField (the normals and current colours, which it does not take, are not made)."""
    size, device = mesh.texture.shape[0], mesh.vertices.device
    placed = mesh.faces[drawn_faces(mesh)]
    covered, face, barycentric = _texel_barycentrics(mesh.uvs, placed, size)
    attributes = (mesh.vertices, mesh.normals) if surface else (mesh.vertices,)
    at_texels = [(values[placed[face]] * barycentric.unsqueeze(-1).to(values.dtype)).sum(1) for values in attributes]
    # Charts too thin for a texel centre: texels under their corners, edge midpoints and centroids.
    splat_uvs, *at_splats = (torch.einsum("kc,fcd->fkd", _SPLAT_WEIGHTS.to(values), values[placed])
                             .reshape(-1, values.shape[1]) for values in (mesh.uvs, *attributes))
    splat_texels = _texel_of(splat_uvs, size)
    missed = ~covered.reshape(-1)[splat_texels]
    splat_texels = splat_texels[missed]
    inputs = [torch.cat([texel_values, splat_values[missed]]) for texel_values, splat_values in zip(at_texels, at_splats)]
    if surface:
        texels = torch.cat([covered.reshape(-1).nonzero()[:, 0], splat_texels])
        inputs = [inputs[0], F.normalize(inputs[1], dim=1), mesh.texture.reshape(-1, 3)[texels].float()]
    with torch.no_grad():
        colors = (torch.cat([color(*parts).float() for parts in zip(*(values.split(chunk) for values in inputs))])
                  if len(inputs[0]) else inputs[0].new_zeros(0, 3, dtype=torch.float32)).clamp(0, 1)
    texture = torch.zeros(size * size, 3, device=device)
    texture[covered.reshape(-1)] = colors[: int(covered.sum())]
    counts = torch.zeros(size * size, device=device).index_add_(0, splat_texels,
                                                                torch.ones_like(splat_texels, dtype=torch.float32))
    sums = torch.zeros(size * size, 3, device=device).index_add_(0, splat_texels, colors[int(covered.sum()):])
    splatted = counts > 0
    texture[splatted] = sums[splatted] / counts[splatted].unsqueeze(1)
    texture, filled = dilate(texture.reshape(size, size, 3), covered | splatted.reshape(size, size), dilation)
    return dataclasses.replace(mesh, texture=torch.where(filled.unsqueeze(-1), texture, float(background)))


def bake_texture(mesh: TexturedMesh, color_fn: ColorField, size: int = 1024, *, padding: int | None = None,
                 dilation: int = 4, chunk: int = 1 << 18, background: float = 0.5) -> TexturedMesh:
    """`mesh` with a UV atlas (`unwrap`) and a size x size texture of `color_fn` at the surface
    point under each texel (queried in chunks of `chunk` points, without gradients), charts
    `padding` texels apart (None: `default_padding(size)`) and dilated by `dilation` texels,
    `background` elsewhere. The vertices are split along the atlas's seams; each keeps its vertex
    colour. An empty mesh is returned as it is."""
    size = check_texture_size(size)
    padding = check_int(padding, "padding", 0, none_ok=True)
    dilation, chunk = check_int(dilation, "dilation", 0), check_int(chunk, "chunk", 1)
    if mesh.is_empty:
        return mesh
    vertex_map, faces, uvs, _ = (tensor.to(mesh.vertices.device) for tensor in unwrap(mesh.vertices, mesh.faces,
                                                                                        size, padding))
    vertices = mesh.vertices[vertex_map]
    atlas = TexturedMesh(vertices, faces, mesh.colors[vertex_map], vertex_normals(vertices, faces), uvs,
                         torch.full((size, size, 3), float(background), device=vertices.device))
    return _fill_texels(atlas, color_fn, False, dilation, chunk, background)
