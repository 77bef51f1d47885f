"""Marching cubes (dense and sparse) against scikit-image, the pure-torch reference, and the
mesh properties it promises (welded, watertight, oriented, Euler characteristic)."""

import numpy as np
import pytest
import torch
from inputs import CUDA_READY, assert_closed_oriented, edge_use, signed_volume
from scipy.spatial import cKDTree

from get3dhuman.ops import marching_cubes, marching_cubes_sparse, narrow_band, reference_marching_cubes
from get3dhuman.ops.marching_cubes import iso_threshold

skimage_measure = pytest.importorskip("skimage.measure")


def lattice(n, lo=-1.0, hi=1.0):
    x = torch.linspace(lo, hi, n, dtype=torch.float64)
    return torch.stack(torch.meshgrid(x, x, x, indexing="ij"), -1)


def sphere(n, radius=0.6, centre=(0.0, 0.0, 0.0)):
    return (lattice(n) - torch.tensor(centre, dtype=torch.float64)).norm(dim=-1) - radius


def torus(n, major=0.55, minor=0.22):
    p = lattice(n)
    ring = torch.sqrt(p[..., 0] ** 2 + p[..., 1] ** 2) - major
    return torch.sqrt(ring ** 2 + p[..., 2] ** 2) - minor


def two_bodies(n):
    return torch.minimum(sphere(n, 0.35, (0.4, 0.0, 0.1)), sphere(n, 0.3, (-0.45, 0.1, -0.1)))


def smooth_random(n, seed):
    """A sum of a few random low-frequency waves minus a sphere-like bowl: blobs of varied topology."""
    generator = torch.Generator().manual_seed(seed)
    p = lattice(n)
    field = p.norm(dim=-1) - 0.7
    for _ in range(4):
        direction = torch.randn(3, generator=generator, dtype=torch.float64)
        phase = torch.rand(1, generator=generator, dtype=torch.float64) * 6.28
        field = field + 0.12 * torch.sin(3 * p @ direction + phase)
    return field


def ambiguous_faces(volume, level=0.0):
    """Number of lattice faces whose above corners sit diagonally."""
    above = (volume > level).numpy()
    count = 0
    for axis in range(3):
        a, b = [ax for ax in range(3) if ax != axis]
        s = [slice(None)] * 3

        def corner(da, db):
            index = list(s)
            index[a] = slice(da, above.shape[a] - 1 + da)
            index[b] = slice(db, above.shape[b] - 1 + db)
            return above[tuple(index)]

        c00, c10, c01, c11 = corner(0, 0), corner(1, 0), corner(0, 1), corner(1, 1)
        count += int(((c00 == c11) & (c10 == c01) & (c00 != c10)).sum())
    return count


def euler(vertices, faces):
    keys, _ = edge_use(faces)
    return len(vertices) - len(keys) // 2 + len(faces)


def assert_same_vertices(ours, theirs, tolerance=1e-5):
    assert ours.shape == theirs.shape
    distance, index = cKDTree(theirs).query(ours.numpy())
    assert distance.max() <= tolerance
    assert len(np.unique(index)) == len(ours)  # a bijection


@pytest.mark.parametrize("name, field, expected_euler", [
    ("sphere", lambda: sphere(48), 2),
    ("torus", lambda: torus(56), 0),
    ("two bodies", lambda: two_bodies(52), 4),
])
def test_matches_skimage_on_analytic_fields(name, field, expected_euler):
    volume = field()
    assert ambiguous_faces(volume) == 0
    vertices, faces = marching_cubes(volume.float())
    sk_vertices, sk_faces, _, _ = skimage_measure.marching_cubes(volume.float().numpy(), 0.0, method="lorensen")
    assert len(faces) == len(sk_faces)
    assert_same_vertices(vertices, sk_vertices)
    assert_closed_oriented(vertices, faces)
    assert euler(vertices, faces) == expected_euler
    assert signed_volume(vertices, faces) > 0  # outward for a field negative inside


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_skimage_on_smooth_random_fields(seed):
    volume = smooth_random(40, seed).float()
    assert ambiguous_faces(volume) == 0
    vertices, faces = marching_cubes(volume, 0.0, pad_value=float("inf"))
    padded = np.pad(volume.numpy(), 1, constant_values=np.float32(1e9))
    sk_vertices, sk_faces, _, _ = skimage_measure.marching_cubes(padded, 0.0, method="lorensen")
    assert len(faces) == len(sk_faces)
    assert_same_vertices(vertices, sk_vertices - 1, tolerance=1e-4)
    assert_closed_oriented(vertices, faces)


def tied_sphere(level):
    """A float32 sphere field around `level` with every voxel within 0.02 of it set to
    float32(level), which for 0.1 lies just above the level (float32(0.1) > 0.1)."""
    volume = (sphere(40) + level).float()
    tie = np.float32(level)
    volume[(volume - tie).abs() < 0.02] = float(tie)
    return volume


@pytest.mark.parametrize("level", [0.1, 0.7, 1 / 3])
def test_ties_with_a_level_float32_cannot_hold_match_skimage(level):
    """skimage compares float32 voxels with the level as a double: a voxel equal to the level's
    float32 rounding is above when that rounding is (0.1, 1/3), below when it is not (0.7)."""
    volume = tied_sphere(level)
    ties = volume == np.float32(level)
    assert int(ties.sum()) > 1000
    assert ambiguous_faces(volume.double(), level) == 0
    vertices, faces = marching_cubes(volume, level)
    sk_vertices, sk_faces, _, _ = skimage_measure.marching_cubes(volume.numpy(), level, method="lorensen")
    assert len(vertices) == len(sk_vertices) and len(faces) == len(sk_faces)
    # A voxel at the level puts the vertices of all its crossed edges within 1e-8 of it: no
    # bijection by nearest neighbours, but each mesh's vertices lie on the other's.
    assert max(cKDTree(sk_vertices).query(vertices.numpy())[0].max(),
               cKDTree(vertices.numpy()).query(sk_vertices)[0].max()) <= 1e-5
    reference = reference_marching_cubes(volume, level)
    assert torch.equal(faces, reference[1])
    torch.testing.assert_close(vertices, reference[0], rtol=0, atol=1e-5)


def test_vertices_are_placed_with_the_level_itself_not_its_float32_rounding():
    """One corner at float32(0.1), just above 0.1, the others one float32 step lower, below it:
    the level lies a fifth of the way along each edge (float32(0.1) - 0.1 is a fifth of the
    step), which the level rounded to float32 (either way) would put at an end."""
    above = np.float32(0.1)
    below = np.nextafter(above, np.float32(0))
    fraction = (0.1 - float(above)) / (float(below) - float(above))
    assert 0.15 < fraction < 0.25
    volume = torch.full((2, 2, 2), float(below))
    volume[0, 0, 0] = float(above)
    vertices, faces = marching_cubes(volume, 0.1)
    expected = torch.eye(3) * fraction
    torch.testing.assert_close(vertices, expected, rtol=0, atol=1e-6)
    sk_vertices, sk_faces, _, _ = skimage_measure.marching_cubes(volume.numpy(), 0.1, method="lorensen")
    assert len(faces) == len(sk_faces) == 1
    assert_same_vertices(vertices, sk_vertices, tolerance=1e-6)
    cells = torch.zeros(1, dtype=torch.int64)
    sparse_vertices = marching_cubes_sparse(cells, volume.reshape(1, 8), (1, 1, 1), 0.1)[0]
    torch.testing.assert_close(sparse_vertices, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_iso_threshold_is_the_largest_value_of_the_dtype_not_above_the_level(dtype):
    levels = np.concatenate([np.random.default_rng(0).normal(size=200) * 10.0 ** np.arange(-4, 4).repeat(25),
                             [0.0, 0.5, -0.1, 0.1, 1 / 3, 1e300, -1e300]])
    for level in levels.tolist():
        threshold = torch.tensor(iso_threshold(level, dtype), dtype=dtype)
        above = torch.nextafter(threshold, torch.tensor(np.inf, dtype=dtype))
        assert float(threshold) <= level < float(above)


def test_shape_touching_the_border_closes_with_padding():
    volume = sphere(32, radius=0.9, centre=(0.5, 0.0, 0.0)).float()  # cut by the x = 1 face
    vertices, faces = marching_cubes(volume)
    keys, counts = edge_use(faces)
    reverse = {tuple(k) for k in keys}
    assert not all((b, a) in reverse for a, b in keys)  # open without padding
    vertices, faces = marching_cubes(volume, pad_value=float("inf"))
    assert_closed_oriented(vertices, faces)
    assert euler(vertices, faces) == 2
    assert vertices.min() >= 0 and vertices.max() <= 31  # the cap lies on the border
    assert signed_volume(vertices, faces) > 0


def test_noise_with_closed_border_is_a_closed_manifold():
    generator = torch.Generator().manual_seed(3)
    volume = torch.rand(30, 31, 33, generator=generator) - 0.5
    assert ambiguous_faces(volume) > 100
    vertices, faces = marching_cubes(volume, pad_value=1.0)
    assert_closed_oriented(vertices, faces)
    # Normals point to increasing values, i.e. out of the below-level parts: their volume is positive.
    assert 0 < signed_volume(vertices, faces) < 30 * 31 * 33


@pytest.mark.parametrize("shape", [(9, 10, 11), (4, 3, 130), (6, 5, 64), (2, 2, 2), (1, 5, 5)])
@pytest.mark.parametrize("flip", [False, True])
def test_matches_the_reference_exactly(shape, flip):
    generator = torch.Generator().manual_seed(sum(shape))
    volume = torch.rand(shape, generator=generator, dtype=torch.float64) - 0.4
    vertices, faces = marching_cubes(volume, 0.1, flip=flip)
    ref_vertices, ref_faces = reference_marching_cubes(volume, 0.1, flip)
    assert torch.equal(faces, ref_faces)
    torch.testing.assert_close(vertices, ref_vertices, rtol=0, atol=1e-5)


def test_flip_spacing_origin_and_numpy_input():
    volume = sphere(24)
    vertices, faces = marching_cubes(volume.numpy(), spacing=(0.5, 1.0, 2.0), origin=(1.0, -2.0, 3.0), flip=True)
    base_vertices, base_faces = marching_cubes(volume)
    torch.testing.assert_close(vertices, base_vertices * torch.tensor([0.5, 1.0, 2.0]) + torch.tensor([1.0, -2.0, 3.0]))
    assert torch.equal(faces, base_faces[:, [0, 2, 1]])
    assert signed_volume(vertices, faces) < 0


def test_deterministic_and_empty():
    volume = smooth_random(33, 5).float()
    first, second = marching_cubes(volume), marching_cubes(volume)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    vertices, faces = marching_cubes(torch.ones(8, 8, 8))
    assert vertices.shape == (0, 3) and faces.shape == (0, 3) and faces.dtype == torch.int64


@pytest.mark.parametrize("bad, match", [
    (torch.zeros(4, 4), "volume must be"),
    (torch.zeros(4, 4, 4, dtype=torch.int32), "float32 or float64"),
    ([1.0, 2.0], "torch.Tensor or numpy"),
])
def test_bad_volume(bad, match):
    with pytest.raises((TypeError, ValueError), match=match):
        marching_cubes(bad)


def test_nan_is_refused_not_meshed():
    """A NaN voxel next to the surface used to give NaN vertices; it is named instead, in the
    dense and the sparse op and through the narrow band. +-inf stays allowed."""
    volume = sphere(24)
    volume[12, 12, 19] = float("nan")  # next to the sphere's surface
    with pytest.raises(ValueError, match="^volume must not hold NaN, got 1 NaN voxels"):
        marching_cubes(volume)
    cells, corner_values = crossing_cells(volume.nan_to_num(0.5))
    corner_values[0, 3] = float("nan")
    with pytest.raises(ValueError, match="^corner_values must not be NaN, got 1 NaN corners"):
        marching_cubes_sparse(cells, corner_values, (23, 23, 23))
    lattice = torch.linspace(-1, 1, 33)
    grid = torch.stack(torch.meshgrid(lattice, lattice, lattice, indexing="ij"), -1)

    def field(points):  # the sphere's distance, NaN in one spot next to its surface
        values = points.norm(dim=-1) - 0.6
        return values.masked_fill((points - torch.tensor([0.6, 0.0, 0.0])).norm(dim=-1) < 0.05, float("nan"))

    assert torch.isnan(field(grid.reshape(1, -1, 3))).any()
    with pytest.raises(ValueError, match="corner_values must not be NaN"):
        narrow_band(field, 32).marching_cubes()
    infinite = sphere(16)
    infinite[0] = float("inf")
    assert torch.isfinite(marching_cubes(infinite)[0]).all()


def test_bad_arguments():
    volume = torch.zeros(4, 4, 4)
    with pytest.raises(ValueError, match="level"):
        marching_cubes(volume, float("nan"))
    with pytest.raises(ValueError, match="spacing"):
        marching_cubes(volume, spacing=(1.0, 2.0))
    for spacing in (0.0, (1.0, -1.0, 1.0), float("inf")):  # folded, mirrored (normals inwards), unbounded
        with pytest.raises(ValueError, match=r"^spacing must be a positive finite number or three positive finite"):
            marching_cubes(volume, spacing=spacing)
    ball = sphere(12)
    numpy_scalars = marching_cubes(ball, np.float32(0.0), spacing=np.float32(0.5), origin=np.float64(1.0))
    python_floats = marching_cubes(ball, 0.0, spacing=0.5, origin=1.0)
    assert len(python_floats[1]) > 0 and all(torch.equal(a, b) for a, b in zip(numpy_scalars, python_floats))
    with pytest.raises(ValueError, match="pad_value"):
        marching_cubes(volume, pad_value=float("nan"))


def crossing_cells(volume, level=0.0):
    """All cells of a dense volume whose corners straddle the level: keys [M], corner values [M, 8]."""
    d, h, w = volume.shape
    corners = torch.stack([volume[di:d - 1 + di, dj:h - 1 + dj, dk:w - 1 + dk]
                           for di in (0, 1) for dj in (0, 1) for dk in (0, 1)], -1).reshape(-1, 8)
    above = corners > level
    keep = above.any(1) & ~above.all(1)
    return keep.nonzero()[:, 0], corners[keep]


def canonical_triangles(vertices, faces):
    """Triangles as sorted-by-rotation tuples of rounded vertex positions (orientation kept)."""
    points = [tuple(p) for p in np.round(vertices.numpy(), 4).tolist()]
    triangles = set()
    for a, b, c in faces.tolist():
        t = [points[a], points[b], points[c]]
        start = t.index(min(t))
        triangles.add(tuple(t[start:] + t[:start]))
    return triangles


def test_sparse_equals_dense_on_all_crossing_cells(device):
    volume = smooth_random(37, 7).float()
    cells, corner_values = crossing_cells(volume)
    vertices, faces, vertex_offsets, face_offsets = marching_cubes_sparse(
        cells.to(device), corner_values.to(device), (36, 36, 36))
    dense_vertices, dense_faces = marching_cubes(volume)
    assert len(vertices) == len(dense_vertices) and len(faces) == len(dense_faces)
    assert vertex_offsets[-1] == len(vertices) and face_offsets[-1] == len(faces)
    assert canonical_triangles(vertices.cpu(), faces.cpu()) == canonical_triangles(dense_vertices, dense_faces)


def test_sparse_batches_do_not_connect():
    volume = smooth_random(21, 8).float()
    cells, corner_values = crossing_cells(volume)
    n = 20 ** 3
    vertices, faces, vertex_offsets, _ = marching_cubes_sparse(
        torch.cat([cells, cells + n]), torch.cat([corner_values, corner_values]), (20, 20, 20))
    half = len(vertices) // 2
    assert torch.equal(vertices[:half], vertices[half:])
    assert torch.equal(faces[: len(faces) // 2] + half, faces[len(faces) // 2:])


def test_sparse_rejects_open_or_unsorted_sets(device):
    volume = sphere(20).float()
    cells, corner_values = (tensor.to(device) for tensor in crossing_cells(volume))
    with pytest.raises(ValueError, match="closed"):
        marching_cubes_sparse(cells[::2].contiguous(), corner_values[::2].contiguous(), (19, 19, 19))
    with pytest.raises(ValueError, match="increasing"):
        marching_cubes_sparse(cells.flip(0), corner_values, (19, 19, 19))
    with pytest.raises(ValueError, match="non-negative"):
        marching_cubes_sparse(torch.cat([cells.new_tensor([-1]), cells[1:]]), corner_values, (19, 19, 19))
    with pytest.raises(ValueError, match=r"\[M, 8\]"):
        marching_cubes_sparse(cells, corner_values[:, :4], (19, 19, 19))


def test_sparse_rejects_corner_values_that_disagree(device):
    volume = sphere(20).float()
    cells, corner_values = crossing_cells(volume)
    above = corner_values > 0
    # A cell whose corner 0 and the three corners next to it (1, 2, 4) lie outside: moving corner
    # 0 inside crosses its three edges, which the neighbours owning them see uncrossed.
    cell = (above[:, [0, 1, 2, 4]].all(1) & ~above.all(1)).nonzero()[0, 0]
    disagreeing = corner_values.clone()
    disagreeing[cell, 0] = -1.0
    cells, corner_values, disagreeing = cells.to(device), corner_values.to(device), disagreeing.to(device)
    assert len(marching_cubes_sparse(cells, corner_values, (19, 19, 19))[1]) > 0
    with pytest.raises(ValueError, match="closed"):
        marching_cubes_sparse(cells, disagreeing, (19, 19, 19))


@pytest.mark.skipif(not CUDA_READY, reason="needs a GPU and the CUDA kernels")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_matches_cpu_exactly(dtype):
    for volume, level in [(smooth_random(70, 9).to(dtype), 0.01), (tied_sphere(0.1).to(dtype), 0.1)]:
        cpu = marching_cubes(volume, level)
        cuda = marching_cubes(volume.cuda(), level)
        assert torch.equal(cpu[1], cuda[1].cpu())
        torch.testing.assert_close(cpu[0], cuda[0].cpu(), rtol=0, atol=1e-5)


def test_opcheck_dense_and_sparse():
    volume = smooth_random(12, 1).float()
    torch.library.opcheck(torch.ops.get3dhuman.marching_cubes_dense.default, (volume, 0.0, False))
    cells, corner_values = crossing_cells(volume)
    torch.library.opcheck(torch.ops.get3dhuman.marching_cubes_sparse.default,
                          (cells, corner_values, [11, 11, 11], 0.0, True))
