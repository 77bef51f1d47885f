"""Evaluation metrics (Chamfer, COV, MMD, 1-NNA, colour distances) against analytic answers."""

import dataclasses
import json

import pytest
import torch
from inputs import generator_with_a_surface

from get3dhuman.cli import main
from get3dhuman.evaluate import (
    EVAL_SEED_OFFSET,
    EvaluationConfig,
    chamfer_distance,
    cloud_distances,
    coverage_and_mmd,
    distance_matrices,
    evaluate_generator,
    evaluate_prior,
    evaluate_world,
    mesh_metrics,
    mesh_points,
    one_nearest_neighbour_accuracy,
    reference_humans,
)
from get3dhuman.mesh import MeshingOptions, TexturedMesh
from get3dhuman.nn import Reconstructor, Refiner, latents_of_seeds
from get3dhuman.nn import generator as generator_module
from get3dhuman.nn.generator import resolve_config
from get3dhuman.ops import coarse_resolution_for, marching_cubes
from get3dhuman.refine import front_view_errors, refine_meshes
from get3dhuman.synthetic import human_color, human_parameters
from get3dhuman.synthetic.meshes import ground_truth_mesh
from get3dhuman.synthetic.preview import render_humans

SMALL = EvaluationConfig(samples=3, references=3, points=256, resolution=24, z_dim=16)


def test_chamfer_distance_of_known_clouds():
    a = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    assert chamfer_distance(a, a) == 0
    assert chamfer_distance(a, a + torch.tensor([0.0, 0.1, 0.0])) == pytest.approx(2 * 0.01)
    # b has an extra far point: only the b -> a direction sees it, (0 + 4) / 3.
    b = torch.cat([a, torch.tensor([[3.0, 0.0, 0.0]])])
    assert chamfer_distance(a, b) == pytest.approx(4 / 3)
    with pytest.raises(ValueError, match="b must be a non-empty point cloud"):
        chamfer_distance(a, torch.zeros(0, 3))


def test_colour_distance_of_known_clouds_and_symmetric_matrices():
    points = torch.rand(50, 3, generator=torch.Generator().manual_seed(0))
    colors = torch.rand(50, 3, generator=torch.Generator().manual_seed(1)) * 0.8
    shifted = colors + torch.tensor([0.12, 0.0, 0.0])
    assert cloud_distances((points, colors), (points, shifted)) == pytest.approx((0.0, 0.04))
    # Far-away colours of points far from the other cloud count in one direction only.
    extra = (torch.cat([points, torch.full((1, 3), 5.0)]), torch.cat([colors, torch.ones(1, 3)]))
    chamfer, color = cloud_distances((points, colors), extra)
    nearest = (torch.full((1, 3), 5.0) - points).norm(dim=1).argmin()
    assert color == pytest.approx((1 - colors[nearest]).abs().mean().item() / 51 / 2)
    assert chamfer == pytest.approx(chamfer_distance(points, extra[0]))
    with pytest.raises(ValueError, match="colours"):
        cloud_distances((points, colors[:10]), (points, colors))
    clouds = [(points + i, colors.roll(i, 0)) for i in range(3)]
    for within, full in zip(distance_matrices(clouds), distance_matrices(clouds, clouds)):
        torch.testing.assert_close(within, full, rtol=0, atol=0)


def test_cloud_distances_equal_brute_force_nearest_neighbours():
    generator = torch.Generator().manual_seed(2)
    points_a, points_b = torch.rand(300, 3, generator=generator), torch.rand(200, 3, generator=generator) * 1.5
    colors_a, colors_b = torch.rand(300, 3, generator=generator), torch.rand(200, 3, generator=generator)
    pairwise = torch.cdist(points_a.double(), points_b.double())
    chamfer = pairwise.min(1).values.square().mean() + pairwise.min(0).values.square().mean()
    color = ((colors_a - colors_b[pairwise.argmin(1)]).abs().mean() + (colors_b - colors_a[pairwise.argmin(0)]).abs().mean()) / 2
    assert cloud_distances((points_a, colors_a), (points_b, colors_b)) == pytest.approx((chamfer.item(), color.item()), rel=1e-6)


def test_coverage_mmd_and_one_nna_on_hand_made_distances():
    cross = torch.tensor([[0.1, 5.0, 9.0], [0.2, 6.0, 9.0]], dtype=torch.float64)  # G = 2, R = 3
    cov, mmd = coverage_and_mmd(cross)
    assert cov == pytest.approx(1 / 3) and mmd == pytest.approx((0.1 + 5.0 + 9.0) / 3)
    # Two tight, far-apart clusters: every leave-one-out neighbour has the right label.
    within_g = torch.tensor([[0.0, 0.01], [0.01, 0.0]], dtype=torch.float64)
    within_r = torch.full((3, 3), 0.01, dtype=torch.float64).fill_diagonal_(0)
    assert one_nearest_neighbour_accuracy(within_g, within_r, torch.full((2, 3), 10.0, dtype=torch.float64)) == 1.0
    # Every sample's nearest neighbour is in the other set: accuracy 0.
    assert one_nearest_neighbour_accuracy(within_g + 10, within_r + 10, torch.full((2, 3), 0.5, dtype=torch.float64)) == 0.0


def test_mesh_points_lie_on_the_mesh_with_interpolated_colours():
    coords = torch.linspace(-1, 1, 33)
    grid = torch.stack(torch.meshgrid(coords, coords, coords, indexing="ij"), -1)
    vertices, faces = marching_cubes(grid.norm(dim=-1) - 0.6, 0.0, spacing=2 / 32, origin=-1.0)
    colors = (vertices + 1) / 2  # a linear colour field: barycentric interpolation is exact
    points, sampled = mesh_points(TexturedMesh.from_geometry(vertices, faces, colors), 500, seed=0)
    assert points.shape == (500, 3) and (points.norm(dim=-1) - 0.6).abs().max() < 0.01
    torch.testing.assert_close(sampled, (points + 1) / 2, atol=1e-5, rtol=0)
    empty = TexturedMesh.from_geometry(torch.zeros(0, 3), torch.zeros(0, 3, dtype=torch.int64), torch.zeros(0, 3))
    assert mesh_points(empty, 10, 0)[0].shape == (1, 3)


def _true_meshes(params):
    """Textured meshes of the synthetic humans params [B, P] (marching cubes at 64^3)."""
    meshes = []
    for row in params:
        mesh = ground_truth_mesh(row, 64)
        vertices = torch.from_numpy(mesh.vertices).float()
        colors = human_color(row[None], vertices[None])[0]
        meshes.append(TexturedMesh.from_geometry(vertices, torch.from_numpy(mesh.faces).long(), colors))
    return meshes


class _Oracle:
    """A perfect generator: its samples are the synthetic humans `params` [num, P]."""

    def __init__(self, params):
        self.params = params

    def sample(self, num, seed, resolution, batch_size):
        return _true_meshes(self.params[:num])


def test_a_perfect_generator_covers_everything():
    config = dataclasses.replace(SMALL, points=1024)
    metrics = evaluate_generator(_Oracle(reference_humans(config)[0]), config)
    _, points, _ = reference_humans(config)
    between_humans = min(chamfer_distance(points[i], points[j]) for i in range(3) for j in range(3) if i != j)
    # What is left is the sampling noise of 1024 points per surface.
    assert metrics["cov"] == 1.0 and metrics["mmd"] < 0.5 * between_humans and metrics["empty_fraction"] == 0
    assert metrics["1-nna"] == 0.0  # each shape's nearest neighbour is its twin in the other set
    assert metrics["color_1-nna"] == 0.0 and metrics["color_mmd"] < 0.02


def _humans_of_the_sampled_latents(config, z_dim):
    return human_parameters(latents_of_seeds(range(config.seed, config.seed + config.samples), z_dim)[0])


def test_the_world_row_is_the_synthetic_humans_of_the_sampled_latents():
    config = dataclasses.replace(SMALL, points=1024, seed=3)
    world = evaluate_world(16, config)
    meshed = evaluate_generator(_Oracle(_humans_of_the_sampled_latents(config, 16)), config)
    assert world["cov"] == meshed["cov"] and world["1-nna"] == meshed["1-nna"] and world["empty_fraction"] == 0
    assert world["mmd"] == pytest.approx(meshed["mmd"], rel=0.1)  # analytic vs meshed surface points
    assert world["color_mmd"] == pytest.approx(meshed["color_mmd"], abs=0.01)
    # Another draw of the same world: 1-NNA near chance, unlike a generator of one shape.
    larger = dataclasses.replace(config, samples=16, references=16, points=256)
    assert 0.25 <= evaluate_world(16, larger)["1-nna"] <= 0.75
    params = _humans_of_the_sampled_latents(larger, 16)
    assert evaluate_generator(_Oracle(params[:1].expand(16, -1)), larger)["1-nna"] > 0.9


def test_colour_metrics_tell_mean_colours_from_the_world():
    """The synthetic humans of the sampled latents against the same shapes in their mean colour:
    the shape metrics agree, the colour metrics see the lost variety."""
    config = dataclasses.replace(SMALL, samples=16, references=16, points=256)
    meshes = _true_meshes(_humans_of_the_sampled_latents(config, 16))
    mean_color = torch.cat([mesh.colors for mesh in meshes]).mean(0)
    grey = [TexturedMesh.from_geometry(mesh.vertices, mesh.faces, mean_color.expand_as(mesh.colors)) for mesh in meshes]
    world, mean = mesh_metrics(meshes, config), mesh_metrics(grey, config)
    assert world["1-nna"] == mean["1-nna"] and world["mmd"] == mean["mmd"]
    assert world["color_1-nna"] <= 0.65 and mean["color_1-nna"] >= 0.75
    assert mean["color_mmd"] > 1.1 * world["color_mmd"]


class _RecordingReconstructor(Reconstructor):
    """A tiny Reconstructor that records its input images and answers with given meshes."""

    def __init__(self, meshes):
        super().__init__("tiny")
        self.meshes, self.images = meshes, []

    def extract_mesh(self, image, resolution, **options):
        self.images.append(image)
        answer, self.meshes = self.meshes[:len(image)], self.meshes[len(image):]
        return answer


def test_the_prior_row_reconstructs_the_stand_in_images_of_the_sampled_latents():
    config = dataclasses.replace(SMALL, samples=3, points=1024)
    z_dim = resolve_config("tiny").z_dim
    params = _humans_of_the_sampled_latents(config, z_dim)
    reconstructor = _RecordingReconstructor(_true_meshes(params))
    prior = evaluate_prior(reconstructor, config, batch_size=2)
    side = reconstructor.config.backbone_resolution
    expected = render_humans(params, side, 0.0, background=0.0).permute(0, 3, 1, 2) * 2 - 1
    assert [len(image) for image in reconstructor.images] == [2, 1]
    # Batches of 2 and 1 round the latent map differently from one of 3 (1e-7), which may flip
    # a sphere-traced silhouette pixel or two; other latents or views would differ everywhere.
    mismatched = (torch.cat(reconstructor.images) - expected).abs() > 1e-5
    assert mismatched.float().mean() < 0.01
    assert prior == evaluate_generator(_Oracle(params), config)  # the same meshes, the same metrics


def test_eval_command_reports_trained_and_baseline_rows(tmp_path, capsys):
    from get3dhuman.nn import Generator
    from get3dhuman.train.checkpoint import save_checkpoint

    torch.manual_seed(0)
    generator = Generator("tiny")
    save_checkpoint(str(tmp_path), 1, {"ema": generator}, {"generator": torch.optim.Adam(generator.parameters())})
    args = ["eval", "--preset", "tiny", "--samples", "2", "--references", "2", "--points", "64", "--resolution", "16"]
    assert main(args + ["--generator", str(tmp_path)]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert set(rows) == {"trained", "untrained", "world"}
    for row in rows.values():
        assert set(row) == {"cov", "mmd", "1-nna", "color_mmd", "color_1-nna", "empty_fraction"} and 0 <= row["cov"] <= 1
    assert rows["trained"] == rows["untrained"]  # the same weights (seed 0) give the same row
    with pytest.raises(SystemExit):
        main(args + ["--no-baseline"])
    reconstructor = Reconstructor("tiny")
    save_checkpoint(str(tmp_path / "reconstructor"), 1, {"model": reconstructor},
                    {"optimizer": torch.optim.Adam(reconstructor.parameters())})
    assert main(args + ["--reconstructor", str(tmp_path / "reconstructor"), "--no-baseline", "--no-world"]) == 0
    assert set(json.loads(capsys.readouterr().out)) == {"prior"}
    Refiner(base_channels=4, depth=2).save_pretrained(tmp_path / "refiner.safetensors")
    assert main(args + ["--generator", str(tmp_path), "--refiner", str(tmp_path / "refiner.safetensors"), "--no-baseline",
                        "--no-world"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert set(rows) == {"trained", "refined"} and {"front_refined_l1", "front_rendered_overlap_l1"} <= set(rows["refined"])
    with pytest.raises(SystemExit, match="--refiner needs --generator"):
        main(args + ["--refiner", str(tmp_path / "refiner.safetensors")])
    with pytest.raises(SystemExit, match="get3dhuman eval: generator must be a run directory with a checkpoint"):
        main(args + ["--generator", str(tmp_path / "missing")])
    # --generator alone: the package's default weights (the small preset), no path needed.
    small = ["eval", "--samples", "2", "--references", "2", "--points", "64", "--resolution", "16"]
    assert main(small + ["--no-baseline", "--no-world", "--generator"]) == 0
    packaged = json.loads(capsys.readouterr().out)["trained"]
    assert main(small + ["--no-baseline", "--no-world", "--generator", generator_module.DEFAULT_WEIGHTS]) == 0
    assert json.loads(capsys.readouterr().out)["trained"] == packaged


@pytest.mark.parametrize(("field", "value"), [("samples", 0), ("references", -1), ("points", 2.5), ("resolution", True),
                                              ("z_dim", 0), ("seed", -1)])
def test_evaluation_config_refuses_bad_settings_by_name(field, value):
    with pytest.raises(ValueError, match=f"^{field} must be an int"):
        EvaluationConfig(**{field: value})


def test_the_refined_row_colours_the_same_meshes_by_the_refiners_views():
    generator = generator_with_a_surface()
    config = dataclasses.replace(SMALL, resolution=16, points=128)
    torch.manual_seed(2)
    refiner = Refiner(base_channels=4, depth=2, residual=False).eval()  # a random image-to-image map
    refined = evaluate_generator(generator, config, batch_size=2, refiner=refiner)
    plain = evaluate_generator(generator, config, batch_size=2)
    meshes = generator.sample(config.samples, resolution=16, batch_size=2,
                              meshing=MeshingOptions(coarse_resolution=coarse_resolution_for(16)))
    assert not any(mesh.is_empty for mesh in meshes)
    expected = mesh_metrics(refine_meshes(generator, refiner, meshes), config)
    held_out = latents_of_seeds(range(EVAL_SEED_OFFSET, EVAL_SEED_OFFSET + config.samples), generator.config.z_dim)[0]
    expected.update({f"front_{k}": v for k, v in front_view_errors(generator, refiner, held_out, 16).items()})
    assert refined == pytest.approx(expected, rel=1e-5, abs=1e-7)
    shape_metrics = ("cov", "mmd", "1-nna", "empty_fraction")
    assert {k: refined[k] for k in shape_metrics} == {k: plain[k] for k in shape_metrics}
    assert refined["color_mmd"] != pytest.approx(plain["color_mmd"])
