"""Z-buffer rasterization: get3dhuman.ops.rasterize against the float64 reference and analytic cases."""

import pytest
import torch

from get3dhuman.ops import marching_cubes, rasterize, reference_rasterize


def triangle_soup(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` independent triangles of random size, position and depth, some past the border."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.rand(count, 1, 3, generator=generator) * 2.4 - 1.2
    vertices = (centres + torch.randn(count, 3, 3, generator=generator) * 0.3).reshape(-1, 3)
    return vertices, torch.arange(3 * count).reshape(count, 3)


def pixel_grid_mesh(cells: int, spacing: int, height: int, width: int, jitter: float = 0.0,
                    seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A welded lattice of cells x cells squares of `spacing` pixels, its corners on pixel
    centres from (2, 2) on, two triangles per square (diagonals through pixel centres when
    spacing > 1), in the NDC of a height x width image; interior vertices moved by up to
    `jitter` pixels."""
    corner = torch.arange(cells + 1, dtype=torch.float64) * spacing + 2
    r, c = torch.meshgrid(corner, corner, indexing="ij")
    shift = (torch.rand(cells + 1, cells + 1, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
             * 2 - 1) * jitter
    shift[[0, -1]] = 0
    shift[:, [0, -1]] = 0
    x = (c + shift[..., 0]) * 2 / (width - 1) - 1
    y = (r + shift[..., 1]) * 2 / (height - 1) - 1
    vertices = torch.stack([x, y, torch.zeros_like(x)], -1).reshape(-1, 3).float()
    index = torch.arange((cells + 1) ** 2).reshape(cells + 1, cells + 1)
    a, b, c_, d = index[:-1, :-1], index[:-1, 1:], index[1:, :-1], index[1:, 1:]
    faces = torch.cat([torch.stack([a, b, d], -1).reshape(-1, 3), torch.stack([a, d, c_], -1).reshape(-1, 3)])
    return vertices, faces


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rasterize_matches_the_reference_on_triangle_soups(seed):
    vertices, faces = triangle_soup(60, seed)
    height, width = 23, 31  # not square: rows and columns must not be swapped
    result = rasterize(vertices, faces, height, width)
    expected = reference_rasterize(vertices, faces, height, width)
    assert result.face_index.shape == (height, width) and result.barycentric.shape == (height, width, 3)
    assert bool((expected.face_index >= 0).any()) and bool((expected.face_index < 0).any())
    torch.testing.assert_close(result.face_index, expected.face_index, rtol=0, atol=0)
    torch.testing.assert_close(result.barycentric, expected.barycentric, rtol=0, atol=1e-5)


def test_barycentric_weights_sum_to_one_and_interpolate_the_corners_to_the_pixel_centre():
    vertices, faces = triangle_soup(40, 3)
    side = 29
    face_index, weights = rasterize(vertices, faces, side)
    drawn = face_index >= 0
    torch.testing.assert_close(weights[drawn].sum(-1), torch.ones(int(drawn.sum())), rtol=0, atol=1e-5)
    assert bool((weights[drawn] >= 0).all()) and bool((weights[~drawn] == 0).all())
    corners = vertices[faces[face_index[drawn]]][..., :2]  # [P, 3, 2]
    rows, columns = torch.nonzero(drawn, as_tuple=True)
    centres = torch.stack([columns, rows], -1).float() * 2 / (side - 1) - 1
    torch.testing.assert_close((weights[drawn].unsqueeze(-1) * corners).sum(1), centres, rtol=0, atol=1e-5)


# Sizes where edge functions taken from either end of the shared diagonals round differently
# (found by emulating the kernel's float32 arithmetic): the lower-index rule must close them.
@pytest.mark.parametrize("cells, spacing, height, width, jitter",
                         [(8, 6, 57, 59, 0.0), (12, 1, 16, 21, 0.0), (12, 1, 16, 21, 0.45), (9, 5, 50, 52, 0.3)])
def test_a_welded_mesh_has_no_cracks(cells, spacing, height, width, jitter):
    vertices, faces = pixel_grid_mesh(cells, spacing, height, width, jitter, seed=4)
    face_index, _ = rasterize(vertices, faces, height, width)
    end = 2 + cells * spacing  # the last corners' pixel
    inside = torch.zeros(height, width, dtype=torch.bool)
    inside[3:end, 3:end] = True  # pixels strictly inside the lattice's boundary
    assert bool((face_index[inside] >= 0).all())
    assert bool((face_index[:2] < 0).all()) and bool((face_index[:, :2] < 0).all())


def test_the_nearest_triangle_wins_and_equal_depths_go_to_the_lowest_face():
    square = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]]) * 1.1
    far, near = (torch.cat([square, torch.full((4, 1), z)], 1) for z in (-0.5, 0.25))
    vertices = torch.cat([far, near, far])
    quad = torch.tensor([[0, 1, 2], [0, 2, 3]])
    faces = torch.cat([quad, quad + 4, quad + 8])  # faces 0-1 far, 2-3 near, 4-5 far again
    face_index, _ = rasterize(vertices, faces, 9)
    assert set(face_index.unique().tolist()) <= {2, 3}
    face_index, _ = rasterize(vertices, faces[[4, 5, 0, 1]], 9)  # two copies of the far quad
    assert set(face_index.unique().tolist()) <= {0, 1}


def test_both_orientations_are_drawn_and_bad_faces_skipped():
    triangle = torch.tensor([[-0.8, -0.8, 0.0], [0.8, -0.8, 0.0], [0.0, 0.8, 0.0]])
    counter, clockwise = torch.tensor([[0, 1, 2]]), torch.tensor([[0, 2, 1]])
    drawn = rasterize(triangle, counter, 16).face_index >= 0
    assert int(drawn.sum()) > 50
    assert torch.equal(rasterize(triangle, clockwise, 16).face_index >= 0, drawn)
    degenerate = torch.tensor([[-0.8, -0.8, 0.0], [0.0, 0.0, 0.0], [0.8, 0.8, 0.0]])
    assert bool((rasterize(degenerate, counter, 16).face_index < 0).all())
    broken = triangle.clone()
    broken[2, 2] = float("nan")
    assert bool((rasterize(broken, counter, 16).face_index < 0).all())
    empty = rasterize(triangle, torch.zeros(0, 3, dtype=torch.int64), 8)
    assert bool((empty.face_index == -1).all()) and bool((empty.barycentric == 0).all())


def test_a_sphere_mesh_draws_its_disc_at_its_depth():
    side, radius = 48, 0.6
    axis = torch.linspace(-1, 1, 65)
    volume = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).norm(dim=-1) - radius
    vertices, faces = marching_cubes(volume, spacing=2 / 64, origin=-1.0)  # index order: (x, y, z) here
    face_index, weights = rasterize(vertices, faces, side)
    ndc = torch.linspace(-1, 1, side)
    distance = (ndc[:, None] ** 2 + ndc[None, :] ** 2).sqrt()
    pixel = 2 / (side - 1)
    drawn = face_index >= 0
    assert bool(drawn[distance < radius - pixel].all()) and not bool(drawn[distance > radius + 0.1 * pixel].any())
    depth = (weights * vertices[faces[face_index.clamp_min(0)]][..., 2]).sum(-1)
    visible = distance < radius - 2 * pixel
    analytic = (radius**2 - distance**2).clamp_min(0).sqrt()  # the near side: larger z is nearer
    assert float((depth[visible] - analytic[visible]).abs().max()) < 0.02


def test_bad_inputs_name_the_argument():
    vertices, faces = triangle_soup(2, 0)
    with pytest.raises(ValueError, match=r"vertices must be a \[V, 3\] tensor"):
        rasterize(vertices[:, :2], faces, 8)
    with pytest.raises(TypeError, match="vertices must be float32"):
        rasterize(vertices.double(), faces, 8)
    with pytest.raises(ValueError, match=r"faces must be a \[F, 3\] tensor"):
        rasterize(vertices, faces.reshape(-1), 8)
    with pytest.raises(TypeError, match="faces must be int64"):
        rasterize(vertices, faces.int(), 8)
    with pytest.raises(ValueError, match=r"faces must index vertices in \[0, 6\), got indices in \[1, 6\]"):
        rasterize(vertices, faces + 1, 8)
    with pytest.raises(ValueError, match="height must be an int >= 2, got 1"):
        rasterize(vertices, faces, 1)
    with pytest.raises(ValueError, match="width must be an int >= 2, got 1.5"):
        rasterize(vertices, faces, 8, 1.5)


def test_non_contiguous_inputs_and_opcheck():
    vertices, faces = triangle_soup(20, 5)
    strided = torch.zeros(vertices.shape[0], 5)
    strided[:, 1:4] = vertices
    expected = rasterize(vertices, faces, 17, 19)
    result = rasterize(strided[:, 1:4], faces.T.contiguous().T, 17, 19)
    assert torch.equal(result.face_index, expected.face_index) and torch.equal(result.barycentric, expected.barycentric)
    torch.library.opcheck(torch.ops.get3dhuman.rasterize.default, (vertices, faces, 17, 19))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_picks_the_cpu_triangles():
    for seed in range(3):
        vertices, faces = triangle_soup(500, seed)
        expected = rasterize(vertices, faces, 67, 61)
        result = rasterize(vertices.cuda(), faces.cuda(), 67, 61)
        assert torch.equal(result.face_index.cpu(), expected.face_index)
        torch.testing.assert_close(result.barycentric.cpu(), expected.barycentric, rtol=0, atol=1e-6)
    vertices, faces = pixel_grid_mesh(8, 6, 57, 59)
    assert torch.equal(rasterize(vertices.cuda(), faces.cuda(), 57, 59).face_index.cpu(),
                       rasterize(vertices, faces, 57, 59).face_index)
