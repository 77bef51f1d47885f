"""The orthographic sphere tracer against analytic answers, and its camera convention."""

import shutil
import subprocess

import pytest
import torch

from get3dhuman.mesh import TexturedMesh
from get3dhuman.ops import marching_cubes, sample_pixel_aligned
from get3dhuman.render import orbit_calibration, ray_march, render_meshes, sphere_trace
from get3dhuman.synthetic import human_parameters, human_sdf

RES = 65
COORDS = torch.linspace(-1, 1, RES)
V, U = torch.meshgrid(COORDS, COORDS, indexing="ij")  # NDC of the pixel centres (rows: y downwards)


def test_sphere_depth_normals_and_radius_gradient():
    radius = torch.tensor(0.6, requires_grad=True)
    out = sphere_trace(lambda p: p.norm(dim=-1) - radius, orbit_calibration(torch.tensor([0.0, 90.0])), RES)
    z = (0.36 - U**2 - V**2).clamp_min(0).sqrt()
    interior = z > 0.15
    assert torch.equal(out.mask[0].bool()[interior], torch.ones(int(interior.sum()), dtype=torch.bool))
    assert not out.mask[0].bool()[(U**2 + V**2) > 0.37].any()
    assert (out.depth[:, interior] - z[interior]).abs().max() < 1e-4  # both views of a sphere agree
    expected_normal = torch.stack([U, -V, z], -1) / 0.6  # camera space: y up
    assert (out.normal[0][interior] - expected_normal[interior]).abs().max() < 5e-3
    (gradient,) = torch.autograd.grad(out.depth[0][interior].sum(), radius)
    assert gradient.item() == pytest.approx((0.6 / z[interior]).sum().item(), rel=2e-3)  # d depth / d r = r / z


def test_box_silhouettes_follow_the_camera_rotation():
    half = torch.tensor([0.45, 0.25, 0.15])

    def box(points):
        q = points.abs() - half
        return q.clamp_min(0).norm(dim=-1) + q.max(-1).values.clamp_max(0)

    out = sphere_trace(box, orbit_calibration(torch.tensor([0.0, 90.0])), RES)
    front = (U.abs() < 0.45) & (V.abs() < 0.25)
    side = (U.abs() < 0.15) & (V.abs() < 0.25)
    margin = lambda m: m & ~((U.abs() - 0.45).abs() < 0.04) & ~((U.abs() - 0.15).abs() < 0.04) & ~((V.abs() - 0.25).abs() < 0.04)  # noqa: E731
    for image, expected in zip(out.mask.bool(), (front, side)):
        keep = margin(torch.ones_like(expected))
        assert torch.equal(image[keep], expected[keep])
    assert (out.depth[0][front & margin(front)] - 0.15).abs().max() < 1e-3  # the front face at z = 0.15


def test_depth_matches_the_pixel_aligned_convention():
    """Sampling the depth map at the projection of each hit point returns that point's NDC z:
    the renderer and the pixel-aligned query share one camera convention."""
    params = human_parameters(torch.randn(2, 64, generator=torch.Generator().manual_seed(0)))
    calib = orbit_calibration(torch.tensor([30.0, 200.0]))
    out = sphere_trace(lambda p: human_sdf(params, p), calib, 96)
    hits = out.mask.bool()
    for b in range(2):
        points = out.points[b][hits[b]].unsqueeze(0)
        # Interior pixels only: bilinear sampling mixes in background at the silhouette.
        eroded = torch.nn.functional.max_pool2d((~hits[b]).float()[None, None], 5, stride=1, padding=2)[0, 0] == 0
        keep = eroded[hits[b]]
        sampled = sample_pixel_aligned(out.depth[b][None, None], points, calib[b : b + 1], 1.0)
        assert (sampled[0, 0] - sampled[0, 1])[keep].abs().max() < 0.02


def test_normal_maps_are_differentiable():
    radii = torch.tensor([0.5, 0.3, 0.4], requires_grad=True)

    def ellipsoid(points):
        scaled = points / radii
        k0 = scaled.norm(dim=-1)
        return k0 * (k0 - 1) / (points / radii.square()).norm(dim=-1).clamp_min(1e-9)

    out = sphere_trace(ellipsoid, orbit_calibration(torch.zeros(1)), 33)
    (gradient,) = torch.autograd.grad((out.normal[..., 0] * out.mask).square().sum(), radii)
    assert torch.isfinite(gradient).all() and gradient.abs().sum() > 0


def test_front_and_back_views_of_a_human_differ():
    params = human_parameters(torch.randn(1, 64, generator=torch.Generator().manual_seed(3)))
    views = sphere_trace(lambda p: human_sdf(params.expand(2, -1), p), orbit_calibration(torch.tensor([0.0, 180.0])), 64)
    assert views.mask.sum() > 0.1 * 2 * 64 * 64 / 4
    assert not torch.allclose(views.depth[0], views.depth[1].flip(-1), atol=1e-2)


def test_bad_calibration():
    with pytest.raises(ValueError, match="calib"):
        sphere_trace(lambda p: p.norm(dim=-1) - 0.5, torch.eye(3).unsqueeze(0))


def test_synthetic_command_writes_a_png(tmp_path):
    out = tmp_path / "new" / "folder" / "grid.png"  # made as needed
    subprocess.run([shutil.which("get3dhuman"), "synthetic", "--out", str(out), "--num", "2", "--resolution", "32"],
                   check=True, cwd=tmp_path, capture_output=True)
    import numpy as np
    from PIL import Image

    image = Image.open(out)
    assert image.size == (4 * 32, 32)
    colors = np.unique(np.asarray(image).reshape(-1, 3), axis=0)
    assert len(colors) > 10  # humans were drawn on the white background
    refused = subprocess.run([shutil.which("get3dhuman"), "synthetic", "--out", str(out), "--num", "0"],
                             cwd=tmp_path, capture_output=True, text=True, check=False)
    assert refused.returncode == 2  # argparse's usage error, naming the flag
    assert refused.stderr.splitlines()[-1] == "get3dhuman synthetic: error: argument --num: must be an int >= 1, got 0"


def test_ray_march_of_an_occupancy_sphere_matches_the_analytic_answer():
    """A sharp occupancy field (not a distance) rendered by ray_march: depth, normals and the
    implicit-differentiation gradient d depth / d r = r / z of the sphere."""
    radius = torch.tensor(0.6, requires_grad=True)
    occupancy = lambda p: torch.sigmoid(40 * (radius - p.norm(dim=-1)))  # noqa: E731
    out = ray_march(lambda p: 0.5 - occupancy(p), orbit_calibration(torch.tensor([0.0, 90.0])), RES, samples=48, slab=7)
    z = (0.36 - U**2 - V**2).clamp_min(0).sqrt()
    interior = z > 0.15
    assert out.mask[:, interior].bool().all() and not out.mask[:, (U**2 + V**2) > 0.37].bool().any()
    assert (out.depth[:, interior] - z[interior]).abs().max() < 1e-4
    expected_normal = torch.stack([U, -V, z], -1) / 0.6
    assert (out.normal[0][interior] - expected_normal[interior]).abs().max() < 5e-3
    (gradient,) = torch.autograd.grad(out.depth[0][interior].sum(), radius)
    assert gradient.item() == pytest.approx((0.6 / z[interior]).sum().item(), rel=2e-3)


def test_ray_march_finds_the_first_crossing_and_agrees_with_sphere_trace():
    """Two spheres one behind the other: the front one is hit; on a human the two renderers agree."""
    def two_spheres(p):
        front = (p - torch.tensor([0.0, 0.0, 0.5])).norm(dim=-1) - 0.3
        back = (p - torch.tensor([0.0, 0.0, -0.5])).norm(dim=-1) - 0.45
        return torch.minimum(front, back)

    out = ray_march(two_spheres, orbit_calibration(torch.zeros(1)), RES, samples=64)
    centre = RES // 2
    assert out.depth[0, centre, centre].item() == pytest.approx(0.8, abs=1e-4)
    assert out.depth[0, centre, centre + int(0.4 * (RES - 1) / 2)].item() < 0.1  # only the back sphere there
    params = human_parameters(torch.randn(1, 64, generator=torch.Generator().manual_seed(1)))
    calib = orbit_calibration(torch.tensor([20.0]))
    marched = ray_march(lambda p: human_sdf(params, p), calib, 48, samples=256)
    traced = sphere_trace(lambda p: human_sdf(params, p), calib, 48)
    both = marched.mask.bool() & traced.mask.bool()
    assert (marched.mask != traced.mask).sum() <= 0.01 * both.sum()  # grazing rays may differ
    assert (marched.depth - traced.depth)[both].abs().median() < 1e-4


def test_renderers_reject_bad_arguments():
    with pytest.raises(ValueError, match="calib must be"):
        ray_march(lambda p: p.norm(dim=-1) - 0.5, torch.eye(4), 8)
    with pytest.raises(ValueError, match="samples must be"):
        ray_march(lambda p: p.norm(dim=-1) - 0.5, orbit_calibration(torch.zeros(1)), 8, samples=1)
    with pytest.raises(ValueError, match="resolution"):
        sphere_trace(lambda p: p.norm(dim=-1) - 0.5, orbit_calibration(torch.zeros(1)), 1)


def test_difference_normals_train_a_fused_query_like_the_reference():
    """Normals by central differences need only first-order derivatives, so a normal loss
    trains a feature map through the fused query (no second-order backward) and gives the
    gradient the pure-torch reference gives."""
    from get3dhuman.nn import ImplicitDecoder
    from get3dhuman.ops import query_field, reference_query_field

    torch.manual_seed(0)
    decoder = ImplicitDecoder([9, 16, 8, 1], (1,))
    calib = orbit_calibration(torch.zeros(1))
    radius = torch.tensor(0.5)
    gradients = []
    for query in (query_field, reference_query_field):
        features = torch.linspace(-0.1, 0.1, 8 * 144).reshape(1, 8, 12, 12).requires_grad_()
        field = lambda p: (p.norm(dim=-1) - radius) + 0.05 * query(decoder, features, p, calib, 1.0)[:, 0]  # noqa: E731
        out = ray_march(field, calib, 17, samples=32, normal_step=1e-3)
        (out.normal[..., 2] * out.mask).sum().backward()
        gradients.append(features.grad)
    assert gradients[0].abs().sum() > 0
    torch.testing.assert_close(gradients[0], gradients[1], rtol=1e-3, atol=1e-5)
    exact = ray_march(lambda p: p.norm(dim=-1) - radius, calib, 17, samples=32)
    marched = ray_march(lambda p: p.norm(dim=-1) - radius, calib, 17, samples=32, normal_step=1e-3)
    assert (exact.normal - marched.normal).abs().max() < 1e-3


def sphere_mesh(radius: float, cells: int = 64) -> TexturedMesh:
    """The marching-cubes mesh of a sphere at the origin, coloured (x, y, z) -> ((x, y, z) + 1) / 2."""
    axis = torch.linspace(-1, 1, cells + 1)
    volume = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).norm(dim=-1) - radius
    vertices, faces = marching_cubes(volume, spacing=2 / cells, origin=-1.0)  # index order is (x, y, z)
    return TexturedMesh.from_geometry(vertices, faces, (vertices + 1) / 2)


def test_meshes_render_the_analytic_maps_of_their_spheres():
    radii = (0.6, 0.4)
    meshes = [sphere_mesh(r) for r in radii]
    calib = orbit_calibration(torch.tensor([0.0, 90.0]))
    out = render_meshes(meshes, calib, RES)
    assert out.mask.shape == (2, RES, RES) and out.normal.shape == (2, RES, RES, 3)
    for view, (radius, mesh) in enumerate(zip(radii, meshes)):
        z = (radius**2 - U**2 - V**2).clamp_min(0).sqrt()
        interior = z > 0.15
        assert bool(out.mask[view].bool()[interior].all())
        assert not bool(out.mask[view].bool()[(U**2 + V**2) > radius**2].any())
        assert float((out.depth[view][interior] - z[interior]).abs().max()) < 5e-3
        camera_normal = torch.stack([U, -V, z], -1) / radius
        # Interpolated normals are as far from the sphere's as the mesh's vertex normals are.
        vertex_error = (mesh.normals - mesh.vertices / radius).abs().max()
        assert float((out.normal[view][interior] - camera_normal[interior]).abs().max()) < float(vertex_error) + 0.005
        world = (torch.stack([U, V, z], -1) @ torch.linalg.inv(calib[view, :3, :3]).T)[interior]  # the hit points
        assert float((out.points[view][interior] - world).abs().max()) < 5e-3
        assert float((out.color[view][interior] - (world + 1) / 2).abs().max()) < 5e-3
        assert bool((out.color[view][out.mask[view] == 0] == 0).all())


def test_an_empty_mesh_draws_nothing_and_bad_arguments_are_named():
    empty = TexturedMesh.from_geometry(torch.zeros(0, 3), torch.zeros(0, 3, dtype=torch.int64), torch.zeros(0, 3))
    out = render_meshes([sphere_mesh(0.5, 16), empty], orbit_calibration(torch.zeros(2)), 16)
    assert bool(out.mask[0].any()) and not bool(out.mask[1].any())
    assert all(bool((part[1] == 0).all()) for part in out)
    with pytest.raises(ValueError, match=r"calib must be \[B, 4, 4\] with B = len\(meshes\) = 2"):
        render_meshes([empty, empty], orbit_calibration(torch.zeros(1)), 16)
    with pytest.raises(ValueError, match="meshes must hold at least one mesh"):
        render_meshes([], orbit_calibration(torch.zeros(1)), 16)
    with pytest.raises(ValueError, match="resolution must be an int >= 2, got 1"):
        render_meshes([empty], orbit_calibration(torch.zeros(1)), 1)
