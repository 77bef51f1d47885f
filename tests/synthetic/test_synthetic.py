"""The procedural human world: primitives, SDF properties, parameters, latent map, sampling."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from get3dhuman.ops.sdf_union import capped_cone, ellipsoid, tapered_capsule
from get3dhuman.render import save_grid, shade, silhouettes
from get3dhuman.synthetic import (
    PARAMETERS,
    default_parameters,
    ground_truth_mesh,
    human_color,
    human_parameters,
    human_sdf,
    sample_occupancy,
    sample_surface,
    sample_surface_colors,
    sampling,
)
from get3dhuman.synthetic.human import INDEX
from get3dhuman.synthetic.preview import trace_humans


def _points(count, seed=0, scale=1.0):
    return (torch.rand(1, count, 3, generator=torch.Generator().manual_seed(seed)) * 2 - 1) * scale


def test_primitives_against_analytic_distances():
    points = _points(2000, scale=2.0)
    one = torch.ones(1)
    # A capsule of constant radius: distance to the segment minus the radius.
    start, end = torch.tensor([[0.0, -0.5, 0.0]]), torch.tensor([[0.0, 0.5, 0.0]])
    capsule, t = tapered_capsule(points, start, end, 0.3 * one, 0.3 * one)
    y = points[..., 1].clamp(-0.5, 0.5)
    expected = (points - torch.stack([torch.zeros_like(y), y, torch.zeros_like(y)], -1)).norm(dim=-1) - 0.3
    assert torch.allclose(capsule, expected, atol=1e-6) and ((t >= 0) & (t <= 1)).all()
    # A sphere as an ellipsoid with equal radii.
    assert torch.allclose(ellipsoid(points, torch.zeros(1, 3), torch.full((1, 3), 0.7)), points.norm(dim=-1) - 0.7, atol=1e-6)
    # A cylinder as a cone with equal radii: exact box-like distance in (radial, axial).
    cone = capped_cone(points, -0.4 * one, 0.6 * one, 0.5 * one, 0.5 * one)
    radial, axial = points[..., [0, 2]].norm(dim=-1) - 0.5, (points[..., 1] - 0.1).abs() - 0.5
    outside = torch.stack([radial.clamp_min(0), axial.clamp_min(0)], -1).norm(dim=-1)
    assert torch.allclose(cone, outside + torch.maximum(radial, axial).clamp_max(0), atol=1e-6)


def test_cone_sides_are_at_the_given_radii():
    one = torch.ones(1)
    rim = torch.tensor([[[0.2, 0.0, 0.0], [0.0, 1.0, 0.6], [0.0, 0.5, 0.4]]])  # bottom rim, top rim, mid-side
    distance = capped_cone(rim, 0.0 * one, 1.0 * one, 0.2 * one, 0.6 * one)
    assert distance.abs().max() < 1e-6


def test_sdf_sign_and_box():
    params = human_parameters(torch.randn(8, 64))
    height = params[:, INDEX["height"]]
    inside = torch.stack([torch.zeros(8), 0.25 * height, torch.zeros(8)], -1).unsqueeze(1)  # the chest
    head = torch.stack([torch.zeros(8), height / 2 - 0.07 * height, torch.zeros(8)], -1).unsqueeze(1)
    far = torch.tensor([[[0.0, 0.0, 0.9], [0.95, 0.0, 0.0], [0.0, 0.99, 0.0]]]).expand(8, -1, -1)
    assert (human_sdf(params, inside) < 0).all() and (human_sdf(params, head) < 0).all()
    assert (human_sdf(params, far) > 0).all()
    # Every human fits the [-1, 1]^3 box: the box faces are outside.
    faces = _points(4000).expand(8, -1, -1).clone()
    axis = torch.randint(0, 3, (4000,), generator=torch.Generator().manual_seed(1))
    faces[:, torch.arange(4000), axis] = torch.sign(faces[:, torch.arange(4000), axis])
    assert (human_sdf(params, faces) > 0).all()


def test_gradient_norm_near_the_surface_is_close_to_one():
    # Seed 10 puts surface samples exactly on the skirt cone, where a plain sqrt(0) once made
    # every gradient NaN.
    params = human_parameters(torch.randn(4, 64, generator=torch.Generator().manual_seed(10)))
    surface = sample_surface(params, 2000, torch.Generator().manual_seed(0))
    points = surface.clone().requires_grad_()
    (gradient,) = torch.autograd.grad(human_sdf(params, points).sum(), points)
    norm = gradient.norm(dim=-1)
    assert torch.isfinite(gradient).all()
    assert norm.median() > 0.97 and norm.max() < 1.05
    assert (norm > 0.8).float().mean() > 0.95  # only fillets between parts fall below


def test_sdf_is_continuous():
    params = human_parameters(torch.randn(2, 64))
    a = _points(5000, seed=2).expand(2, -1, -1)
    b = a + 0.01 * torch.randn(a.shape, generator=torch.Generator().manual_seed(3))
    ratio = (human_sdf(params, a) - human_sdf(params, b)).abs() / (a - b).norm(dim=-1)
    # Lipschitz-bounded (a jump would show as a ratio of ~jump / 1 cm); the ellipsoid distance
    # bound is steeper than 1 away from the surface.
    assert ratio.max() < 2


def _context(**changes):
    params = default_parameters(1)
    for name, value in changes.items():
        params[:, INDEX[name]] = value
    return params


@pytest.mark.parametrize("parameter", PARAMETERS, ids=[p.name for p in PARAMETERS])
def test_every_parameter_has_a_visible_effect(parameter):
    # Some parameters act only in some contexts: stripes need the pattern, the flare a skirt.
    contexts = [_context(), _context(pattern=1, stripe_r=0.9, stripe_g=0.1), _context(lower_garment=2)]
    values = range(parameter.choices) if parameter.choices else (parameter.low, parameter.high)
    points = _points(30000, seed=4)
    for base in contexts:
        results = []
        for value in values:
            params = base.clone()
            params[:, INDEX[parameter.name]] = value
            surface = (human_sdf(params, points) < 0.004) & (human_sdf(params, points) > -0.004)
            results.append((human_sdf(params, points), human_color(params, points), surface))
        for (d0, c0, s0), (d1, c1, s1) in zip(results, results[1:]):
            on_surface = s0 | s1
            color_change = (c0 - c1)[on_surface].abs()
            if (d0 - d1).abs().max() > 1e-3 or (color_change.numel() and color_change.max() > 0.05):
                return
    pytest.fail(f"{parameter.name} changes neither the shape nor the surface colour")


def test_latent_map_is_deterministic_and_covers_the_ranges():
    z = torch.randn(4000, 512, generator=torch.Generator().manual_seed(0))
    params = human_parameters(z)
    assert torch.equal(params, human_parameters(z.clone()))
    for p in PARAMETERS:
        values = params[:, INDEX[p.name]]
        if p.choices:
            counts = torch.bincount(values.long(), minlength=p.choices).float() / len(values)
            assert counts.min() > 0.8 / p.choices, p.name
        else:
            assert values.min() >= p.low and values.max() <= p.high, p.name
            spread = torch.quantile(values, 0.99) - torch.quantile(values, 0.01)
            assert spread > 0.9 * (p.high - p.low), p.name


@pytest.mark.parametrize("z", [torch.randn(3), torch.full((2, 8), float("nan"))], ids=["rank", "nan"])
def test_latent_map_rejects_bad_latents(z):
    with pytest.raises(ValueError, match="z must be"):
        human_parameters(z)


def test_humans_are_plausible():
    """Silhouettes of random humans: proportions, head on top, two separate legs at the ankles."""
    params = human_parameters(torch.randn(12, 64, generator=torch.Generator().manual_seed(5)))
    xs, ys, zs = torch.linspace(-1, 1, 81), torch.linspace(-1, 1, 161), torch.linspace(-0.5, 0.5, 21)
    grid = torch.stack(torch.meshgrid(xs, ys, zs, indexing="ij"), -1).reshape(1, -1, 3).expand(12, -1, -1)
    occupied = (human_sdf(params, grid) < 0).reshape(12, 81, 161, 21).any(-1)  # [B, x, y] silhouettes
    for b in range(12):
        columns = occupied[b].any(1).nonzero()[:, 0]
        rows = occupied[b].any(0).nonzero()[:, 0]
        height = ys[rows.max()] - ys[rows.min()]
        width = xs[columns.max()] - xs[columns.min()]
        assert 1.45 < height < 2.0 and 1.5 < height / width < 6, b  # A-poses: arms spread up to ~38 degrees
        top_row = occupied[b, :, rows.max()].nonzero()[:, 0]
        assert xs[top_row].abs().max() < 0.15, b  # the head is on top, centred
        ankle_row = occupied[b, :, rows.min() + 4]  # ~5 cm above the soles
        runs = (ankle_row[1:] & ~ankle_row[:-1]).sum() + ankle_row[0]
        assert runs == 2, b


def test_samples():
    params = human_parameters(torch.randn(2, 64))
    generator = torch.Generator().manual_seed(0)
    surface = sample_surface(params, 500, generator)
    assert surface.shape == (2, 500, 3) and human_sdf(params, surface).abs().max() < 1e-3
    occupancy = sample_occupancy(params, 800, generator=generator)
    assert occupancy.points.shape == (2, 800, 3)
    assert torch.equal(occupancy.inside, (human_sdf(params, occupancy.points) < 0).float())
    assert 0.2 < occupancy.inside.mean() < 0.6  # PIFu's scheme balances inside and outside
    colors = sample_surface_colors(params, 300, generator=generator)
    assert colors.points.shape == (2, 300, 3) and ((colors.colors >= 0) & (colors.colors <= 1)).all()
    assert human_sdf(params, colors.points).abs().max() < 0.03
    again = sample_occupancy(params, 800, generator=torch.Generator().manual_seed(7))
    assert torch.equal(again.points, sample_occupancy(params, 800, generator=torch.Generator().manual_seed(7)).points)


def _shell_points(params, count, seed):
    """Uniform box points inside each human's shell |sdf| < SHELL (brute force), [B] lists."""
    box = _points(count, seed).expand(len(params), -1, -1)
    near = human_sdf(params, box).abs() < sampling.SHELL
    return [box[b][near[b]] for b in range(len(params))]


def test_candidate_cells_cover_the_whole_shell():
    params = human_parameters(torch.randn(8, 64, generator=torch.Generator().manual_seed(4)))
    cells = sampling.candidate_cells(params)
    assert 0.05 < cells.float().mean() < 0.4  # a real saving over the box, not the box itself
    for b, shell in enumerate(_shell_points(params, 300000, seed=5)):
        index = ((shell + sampling.BOX) / (2 * sampling.BOX) * sampling.CELLS).long().clamp(0, sampling.CELLS - 1)
        flat = (index[:, 0] * sampling.CELLS + index[:, 1]) * sampling.CELLS + index[:, 2]
        assert len(shell) > 1000 and cells[b, flat].all(), b


def test_surface_samples_match_uniform_box_sampling():
    # The oracle is PIFu's plain scheme: uniform box points in the shell, projected.
    params = human_parameters(torch.randn(2, 64, generator=torch.Generator().manual_seed(3)))
    count = 12000
    sampled = sample_surface(params, count, torch.Generator().manual_seed(0))
    for b, shell in enumerate(_shell_points(params, 500000, seed=6)):
        reference, residual = sampling.project_to_surface(params[b:b + 1], shell[:count].unsqueeze(0))
        reference = reference[0][residual[0] < sampling.SURFACE_TOLERANCE]
        assert len(reference) > 0.9 * count
        for axis in range(3):  # marginal histograms along each axis agree
            low, high = reference[:, axis].min().item(), reference[:, axis].max().item()
            ours = torch.histc(sampled[b, :, axis], 16, low, high) / count
            theirs = torch.histc(reference[:, axis], 16, low, high) / len(reference)
            assert (ours - theirs).abs().sum() / 2 < 0.03, (b, axis)


def test_projection_reaches_the_surface_and_stops_early():
    params = human_parameters(torch.randn(2, 64, generator=torch.Generator().manual_seed(8)))
    shell = _shell_points(params, 20000, seed=9)
    width = min(len(s) for s in shell)
    points = torch.stack([s[:width] for s in shell])
    projected, residual = sampling.project_to_surface(params, points)
    converged = residual < sampling.SURFACE_TOLERANCE
    assert converged.float().mean() > 0.99  # the rest (creases between parts) sample_surface drops
    assert torch.allclose(residual, human_sdf(params, projected).abs())
    moved = (projected - points)[converged].norm(dim=-1)
    assert moved.quantile(0.99) < 1.5 * sampling.SHELL  # onto the nearby surface (a few Newton overshoots)
    projected = projected[:, converged.all(0)]
    again, _ = sampling.project_to_surface(params, projected)  # already converged: nothing moves
    assert torch.equal(again, projected)


def test_ground_truth_mesh_is_watertight_outward_and_on_the_surface():
    params = human_parameters(torch.randn(1, 64, generator=torch.Generator().manual_seed(6)))[0]
    mesh = ground_truth_mesh(params, resolution=72)
    assert mesh.is_watertight and mesh.volume > 0  # closed, triangles facing outwards
    distance = human_sdf(params.unsqueeze(0), torch.from_numpy(mesh.vertices).float().unsqueeze(0))
    assert distance.abs().max() < 2 / 71  # within a voxel of the analytic surface
    assert mesh.visual.vertex_colors.shape == (len(mesh.vertices), 4)
    height = params[INDEX["height"]].item()
    assert mesh.bounds[1, 1] - mesh.bounds[0, 1] == pytest.approx(height, abs=0.06)


def test_bad_parameter_shapes():
    with pytest.raises(ValueError, match="params must be"):
        human_sdf(torch.zeros(1, 3), torch.zeros(1, 4, 3))
    with pytest.raises(ValueError, match="points must be"):
        human_sdf(default_parameters(2), torch.zeros(1, 4, 3))
    assert math.isfinite(float(human_sdf(default_parameters(1), torch.zeros(1, 1, 3))))


def test_silhouettes_of_stand_in_images_are_where_the_humans_are_hit():
    params = human_parameters(torch.randn(16, 32, generator=torch.Generator().manual_seed(7)))
    rendering = trace_humans(params, 48)
    hit = rendering.mask > 0.5
    assert hit.float().mean() > 0.05
    for lit in (True, False):  # shaded and albedo images, as floats and as the prior cache's bytes
        image = shade(rendering, background=0.0, lit=lit)
        assert torch.equal(silhouettes(image), hit) and torch.equal(silhouettes((image * 255).round().to(torch.uint8)), hit)
    # Shading scales the albedo by 0.35 .. 1 on the humans; the background stays black.
    shaded, albedo = shade(rendering, 0.0), shade(rendering, 0.0, lit=False)
    ratio = shaded[hit] / albedo[hit]
    assert bool((ratio >= 0.35 - 1e-6).all()) and bool((ratio <= 1 + 1e-6).all()) and not bool(shaded[~hit].any())


def test_grid_places_image_i_at_row_i_div_columns_and_refuses_no_columns(tmp_path):
    images = torch.rand(5, 3, 2, 3)
    save_grid(images, str(tmp_path / "grid.png"), columns=2)
    grid = torch.from_numpy(np.array(Image.open(tmp_path / "grid.png"))).float() / 255
    assert grid.shape == (3 * 3, 2 * 2, 3)
    for i, image in enumerate(images):
        row, column = divmod(i, 2)
        assert torch.allclose(grid[3 * row : 3 * row + 3, 2 * column : 2 * column + 2], image, atol=0.5 / 255 + 1e-6)
    assert (grid[6:, 2:] == 1).all()  # the unused cell stays white
    with pytest.raises(ValueError, match="columns must be an int >= 1, got 0"):
        save_grid(images, str(tmp_path / "none.png"), columns=0)
