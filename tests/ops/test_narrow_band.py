"""Narrow band (coarse-to-fine) evaluation against dense evaluation on body-like fields."""

import numpy as np
import pytest
import torch
from inputs import CUDA_READY, assert_closed_oriented, humans
from scipy.spatial import cKDTree

from get3dhuman.ops import marching_cubes, narrow_band
from get3dhuman.synthetic import human_sdf


def dense_mesh(params, resolution):
    x = torch.linspace(-1, 1, resolution + 1)
    grid = torch.stack(torch.meshgrid(x, x, x, indexing="ij"), -1).reshape(1, -1, 3)
    volume = human_sdf(params.reshape(1, -1), grid).reshape((resolution + 1,) * 3)
    return marching_cubes(volume, 0.0, spacing=2 / resolution, origin=-1.0)


def hausdorff(a, b):
    return max(cKDTree(b.numpy()).query(a.numpy())[0].max(), cKDTree(a.numpy()).query(b.numpy())[0].max())


@pytest.mark.parametrize("resolution", [64, 128])
def test_sparse_matches_dense_on_humans(resolution):
    params = humans(2)
    volume = narrow_band(lambda p: human_sdf(params, p), resolution, batch_size=2, coarse_resolution=16, band=1.0)
    meshes = volume.marching_cubes()
    voxel = 2 / resolution
    for b, (vertices, faces) in enumerate(meshes):
        dense_vertices, dense_faces = dense_mesh(params[b], resolution)
        assert hausdorff(vertices, dense_vertices) <= voxel
        assert_closed_oriented(vertices, faces)
    fraction = volume.fraction_evaluated
    assert fraction.shape == (2,) and bool((fraction > 0).all()) and bool((fraction < 0.25).all())
    assert volume.evaluated_points.sum() < 2 * (resolution + 1) ** 3


def test_batch_rows_are_independent():
    params = humans(2, seed=1)
    together = narrow_band(lambda p: human_sdf(params, p), 64, batch_size=2, coarse_resolution=16).marching_cubes()
    for b in range(2):
        alone = narrow_band(lambda p: human_sdf(params[b:b + 1], p), 64, coarse_resolution=16).marching_cubes()[0]
        assert torch.equal(together[b][0], alone[0]) and torch.equal(together[b][1], alone[1])


def test_closure_follows_the_surface_past_coarse_misses():
    """A sphere with a thin fin that no coarse corner sees: the coarse levels find the sphere, and
    the closure follows the surface from the junction along the whole fin."""
    def field(p):
        sphere = p.norm(dim=-1) - 0.5
        q = (p - torch.tensor([0.7, 0.0, 0.03])).abs() - torch.tensor([0.25, 0.2, 0.01])
        fin = q.clamp(min=0).norm(dim=-1) + q.max(dim=-1).values.clamp(max=0)
        return torch.minimum(sphere, fin)

    volume = narrow_band(field, 128, coarse_resolution=16, band=0.0)
    first_fine_level = volume.levels[1]
    vertices, faces = volume.marching_cubes()[0]
    x = torch.linspace(-1, 1, 129)
    grid = torch.stack(torch.meshgrid(x, x, x, indexing="ij"), -1)
    dense_vertices, _ = marching_cubes(field(grid), 0.0, spacing=2 / 128, origin=-1.0)
    fin_tip = torch.tensor([0.9, 0.0, 0.0])
    assert (first_fine_level[1].numel() > 0) and (dense_vertices - fin_tip).norm(dim=-1).min() < 0.05
    assert len(vertices) == len(dense_vertices)
    assert hausdorff(vertices, dense_vertices) < 1e-5
    assert_closed_oriented(vertices, faces)


@pytest.mark.parametrize("band", [0.0, float("inf")])
def test_ties_with_a_level_float32_cannot_hold_mesh_as_dense(band, device):
    """Lattice values equal to float32(0.1), which is above 0.1: the refinement, the closure and
    sparse marching cubes must all count them as dense marching cubes does (as skimage does)."""
    level = 0.1

    def field(p):
        values = p.norm(dim=-1) - 0.6 + level
        return torch.where((values - level).abs() < 0.03, torch.full_like(values, level), values)

    volume = narrow_band(field, 64, coarse_resolution=16, band=band, level=level, device=device)
    vertices, faces = (tensor.cpu() for tensor in volume.marching_cubes()[0])
    x = torch.linspace(-1, 1, 65)
    grid = torch.stack(torch.meshgrid(x, x, x, indexing="ij"), -1)
    dense_vertices, dense_faces = marching_cubes(field(grid), level, spacing=2 / 64, origin=-1.0)
    assert len(vertices) == len(dense_vertices) and len(faces) == len(dense_faces)
    assert hausdorff(vertices, dense_vertices) < 1e-5
    assert_closed_oriented(vertices, faces)


def test_query_is_exact_on_the_band_and_close_elsewhere():
    params = humans(1, seed=2)
    field = lambda p: human_sdf(params, p)  # noqa: E731
    volume = narrow_band(field, 64, coarse_resolution=16, band=1.0)
    vertices, _ = volume.marching_cubes()[0]
    # A vertex lies on a lattice edge where the trilinear interpolant is linear: exactly the level.
    on_surface = volume.query(vertices[None])
    assert on_surface.abs().max() < 1e-5
    points = torch.rand(1, 2000, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert (volume.query(points) - field(points)).abs().max() < 0.1


def test_empty_field_gives_no_cells_and_empty_mesh():
    volume = narrow_band(lambda p: p.norm(dim=-1) + 1.0, 64, coarse_resolution=16)
    vertices, faces = volume.marching_cubes()[0]
    assert volume.cells.numel() == 0 and vertices.shape == (0, 3) and faces.shape == (0, 3)
    assert int(volume.evaluated_points[0]) == 17 ** 3


def reference_refine(cells, corner_values, dims, level, threshold):
    """Pure-torch narrow_band_refine: the kept cells' children in parent order: keys [K], corner
    point keys [K, 8] over the (2 * dims + 1) point lattice, whether each corner is a parent corner
    [K, 8], and the kept mask [M]."""
    above = corner_values.double() > level  # as real numbers, not against the level rounded to float32
    keep = (above.any(1) & ~above.all(1)) | ((corner_values - level).abs() <= threshold).any(1)
    d0, d1, d2 = dims
    offsets = torch.tensor([[(c >> 2) & 1, (c >> 1) & 1, c & 1] for c in range(8)])
    coords = torch.stack([cells // (d1 * d2) % d0, cells // d2 % d1, cells % d2], 1)[keep]
    batch = (cells // (d0 * d1 * d2))[keep]
    child = 2 * coords[:, None, :] + offsets  # [K, 8, 3]
    keys = ((batch[:, None] * 2 * d0 + child[..., 0]) * 2 * d1 + child[..., 1]) * 2 * d2 + child[..., 2]
    corner = child[:, :, None, :] + offsets  # [K, 8, 8, 3]
    points = ((batch[:, None, None] * (2 * d0 + 1) + corner[..., 0]) * (2 * d1 + 1) + corner[..., 1]) * (2 * d2 + 1) \
        + corner[..., 2]
    at_parent_corner = (corner % 2 == 0).all(-1)
    return keys.reshape(-1), points.reshape(-1, 8), at_parent_corner.reshape(-1, 8), keep


@pytest.mark.parametrize("dims", [(6, 6, 6), (3, 4, 5), (1, 2, 7)])
def test_refine_kernel_matches_reference(device, dims):
    """Children in key order, parent-corner values carried over, every other child corner pointing
    at its lattice point in new_points, and each such point listed exactly once, batch-major."""
    generator = torch.Generator().manual_seed(4)
    lattice = 2 * dims[0] * dims[1] * dims[2]
    cells = torch.randperm(lattice, generator=generator)[: lattice * 2 // 3].sort().values  # some neighbours absent
    corner_values = torch.randn(cells.numel(), 8, generator=generator, dtype=torch.float64) + 1.5
    keys, slots, new_points = (t.cpu() for t in torch.ops.get3dhuman.narrow_band_refine(
        cells.to(device), corner_values.to(device), list(dims), 0.0, 0.3))
    ref_keys, ref_points, at_parent_corner, keep = reference_refine(cells, corner_values, dims, 0.0, 0.3)
    assert 0 < keep.sum() < keep.numel()
    order = torch.argsort(ref_keys)
    assert torch.equal(keys, ref_keys[order])
    ref_points, at_parent_corner = ref_points[order], at_parent_corner[order]
    new_slots = slots[~at_parent_corner]
    assert bool((new_slots >= 0).all()) and bool((new_slots < new_points.numel()).all())
    assert torch.equal(new_points[new_slots], ref_points[~at_parent_corner])
    assert torch.equal(new_points.sort().values, ref_points[~at_parent_corner].unique())
    points_per_batch = (2 * dims[0] + 1) * (2 * dims[1] + 1) * (2 * dims[2] + 1)
    assert bool((torch.diff(new_points // points_per_batch) >= 0).all())
    # Known child corners read the parent's value: child n, corner q at doubled offsets.
    table_values = torch.cat([torch.full((new_points.numel(),), float("nan"), dtype=torch.float64),
                              corner_values.reshape(-1)])
    child_values = table_values[slots][torch.argsort(order)]  # parent order
    parents = corner_values[keep]
    offsets = np.array([[(c >> 2) & 1, (c >> 1) & 1, c & 1] for c in range(8)])
    for child in range(8):
        for q in range(8):
            position = offsets[child] + offsets[q]
            if (position % 2 == 0).all():
                parent_corner = int(position[0] // 2 * 4 + position[1] // 2 * 2 + position[2] // 2)
                assert torch.equal(child_values[child::8, q], parents[:, parent_corner])


def reference_open_faces(frontier, frontier_values, closed, dims, level):
    """Pure-torch narrow_band_open_faces, in frontier order then face order."""
    d0, d1, d2 = dims
    coords = torch.stack([frontier // (d1 * d2) % d0, frontier // d2 % d1, frontier % d2], 1)
    offsets = torch.tensor([[(c >> 2) & 1, (c >> 1) & 1, c & 1] for c in range(8)])
    strides = (d1 * d2, d2, 1)
    above = frontier_values > level
    per_face = []
    for axis in range(3):
        for side in (0, 1):
            face_above = above[:, offsets[:, axis] == side]
            crossed = face_above.any(1) & ~face_above.all(1)
            inside = (coords[:, axis] + 2 * side - 1 >= 0) & (coords[:, axis] + 2 * side - 1 < dims[axis])
            neighbour = frontier + (2 * side - 1) * strides[axis]
            absent = ~torch.isin(neighbour, closed)
            per_face.append(torch.where(crossed & inside & absent, neighbour, -1))
    neighbours = torch.stack(per_face, 1).reshape(-1)
    return neighbours[neighbours >= 0]


@pytest.mark.parametrize("dims", [(6, 6, 6), (3, 4, 5), (1, 2, 7)])
def test_open_faces_kernel_matches_reference(device, dims):
    generator = torch.Generator().manual_seed(6)
    lattice = 2 * dims[0] * dims[1] * dims[2]
    closed = torch.randperm(lattice, generator=generator)[: lattice // 2].sort().values
    frontier = closed[torch.randperm(closed.numel(), generator=generator)[: closed.numel() // 2]]  # any order
    values = torch.randn(frontier.numel(), 8, generator=generator)
    expected = reference_open_faces(frontier, values, closed, dims, 0.0)
    assert expected.numel() > 0
    got = torch.ops.get3dhuman.narrow_band_open_faces(frontier.to(device), values.to(device), closed.to(device),
                                                      list(dims), 0.0)
    assert torch.equal(got.cpu(), expected)
    everything = torch.arange(lattice)
    assert torch.ops.get3dhuman.narrow_band_open_faces(frontier, values, everything, list(dims), 0.0).numel() == 0
    nothing = torch.ops.get3dhuman.narrow_band_open_faces(frontier, values, everything[:0], list(dims), 0.0)
    assert torch.equal(nothing, reference_open_faces(frontier, values, everything[:0], dims, 0.0))


def test_refine_refuses_unsorted_cells():
    with pytest.raises(ValueError, match="sorted and unique"):
        torch.ops.get3dhuman.narrow_band_refine(torch.tensor([3, 1]), torch.zeros(2, 8), [2, 2, 2], 0.0, 1.0)
    with pytest.raises(ValueError, match="closed must be sorted and unique"):
        torch.ops.get3dhuman.narrow_band_open_faces(torch.tensor([1]), torch.zeros(1, 8), torch.tensor([3, 3]),
                                                    [2, 2, 2], 0.0)


def test_bad_arguments():
    field = lambda p: p.norm(dim=-1) - 0.5  # noqa: E731
    with pytest.raises(ValueError, match="power of two"):
        narrow_band(field, 100, coarse_resolution=32)
    with pytest.raises(ValueError, match="bounds"):
        narrow_band(field, 64, bounds=((0, 0, 0), (0, 1, 1)))
    expected = r"^field must return a tensor of values \[B, N\] = \[1, 35937\], got "
    with pytest.raises(ValueError, match=expected + r"\(1, 35937, 3\)$"):
        narrow_band(lambda p: p, 64)
    with pytest.raises(ValueError, match=expected + "a ndarray$"):
        narrow_band(lambda p: field(p).numpy(), 64)
    with pytest.raises(ValueError, match="band"):
        narrow_band(field, 64, band=-1.0)
    for chunk in (0, 100.5):
        with pytest.raises(ValueError, match=f"^chunk must be an int >= 1, got {chunk}$"):
            narrow_band(field, 64, chunk=chunk)
    with pytest.raises(TypeError, match="^dtype must be torch.float32 or torch.float64, got torch.int64$"):
        narrow_band(field, 64, dtype=torch.int64)


@pytest.mark.skipif(not CUDA_READY, reason="needs a GPU and the CUDA kernels")
def test_cuda_matches_cpu():
    params = humans(1, seed=3)
    cpu = narrow_band(lambda p: human_sdf(params, p), 64, coarse_resolution=16).marching_cubes()[0]
    params_cuda = params.cuda()
    cuda = narrow_band(lambda p: human_sdf(params_cuda, p), 64, coarse_resolution=16, device="cuda").marching_cubes()[0]
    assert torch.equal(cpu[1], cuda[1].cpu())
    torch.testing.assert_close(cpu[0], cuda[0].cpu(), rtol=0, atol=1e-5)


def test_no_refinement_when_resolution_is_coarse():
    volume = narrow_band(lambda p: p.norm(dim=-1) - 0.5, 16, coarse_resolution=16)
    vertices, faces = volume.marching_cubes()[0]
    x = torch.linspace(-1, 1, 17)
    grid = torch.stack(torch.meshgrid(x, x, x, indexing="ij"), -1)
    dense_vertices, dense_faces = marching_cubes(grid.norm(dim=-1) - 0.5, 0.0, spacing=2 / 16, origin=-1.0)
    assert len(vertices) == len(dense_vertices) and len(faces) == len(dense_faces)
    assert int(volume.evaluated_points[0]) == 17 ** 3


def test_opcheck_refine_and_open_faces():
    values = torch.randn(27, 8, generator=torch.Generator().manual_seed(5))
    torch.library.opcheck(torch.ops.get3dhuman.narrow_band_refine.default, (torch.arange(27), values, [3, 3, 3], 0.0, 0.5))
    torch.library.opcheck(torch.ops.get3dhuman.narrow_band_open_faces.default,
                          (torch.arange(27), values, torch.arange(0, 27, 2), [3, 3, 3], 0.0))


def test_coarse_resolution_for_divides_by_powers_of_two():
    from get3dhuman.ops import coarse_resolution_for

    assert [coarse_resolution_for(r) for r in (16, 32, 48, 64, 512, 96, 33)] == [16, 32, 24, 32, 32, 24, 33]
    assert coarse_resolution_for(256, largest=64) == 64


def test_the_default_coarse_lattice_fits_any_resolution():
    field = lambda p: p.norm(dim=-1) - 0.5  # noqa: E731
    for resolution, coarse in ((48, 24), (16, 16), (256, 32)):
        default = narrow_band(field, resolution)
        explicit = narrow_band(field, resolution, coarse_resolution=coarse)
        assert [level[0] for level in default.levels] == [level[0] for level in explicit.levels]
        assert torch.equal(default.cells, explicit.cells) and torch.equal(default.levels[-1][2], explicit.levels[-1][2])
