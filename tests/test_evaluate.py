"""Evaluation metrics (Chamfer, COV, MMD, 1-NNA, colour error) against analytic answers."""

import dataclasses
import json

import pytest
import torch

from get3dhuman.cli import main
from get3dhuman.evaluate import (
    EvaluationConfig,
    chamfer_distance,
    coverage_and_mmd,
    evaluate_generator,
    mesh_points,
    one_nearest_neighbour_accuracy,
    reference_humans,
)
from get3dhuman.mesh import TexturedMesh
from get3dhuman.ops import marching_cubes
from get3dhuman.synthetic import human_color
from get3dhuman.synthetic.meshes import ground_truth_mesh

SMALL = EvaluationConfig(samples=3, references=3, points=256, resolution=24, z_dim=16)


def test_chamfer_distance_of_known_clouds():
    a = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    assert chamfer_distance(a, a) == 0
    assert chamfer_distance(a, a + torch.tensor([0.0, 0.1, 0.0])) == pytest.approx(2 * 0.01)
    # b has an extra far point: only the b -> a direction sees it, (0 + 4) / 3.
    b = torch.cat([a, torch.tensor([[3.0, 0.0, 0.0]])])
    assert chamfer_distance(a, b) == pytest.approx(4 / 3)
    with pytest.raises(ValueError, match="point clouds"):
        chamfer_distance(a, torch.zeros(0, 3))


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


class _Oracle:
    """Samples the reference humans themselves: a perfect generator."""

    def __init__(self, config):
        self.params = reference_humans(config)[0]

    def sample(self, num, seed, resolution, batch_size, coarse_resolution):
        meshes = []
        for params in self.params[:num]:
            mesh = ground_truth_mesh(params, 64)
            vertices = torch.from_numpy(mesh.vertices).float()
            colors = human_color(params[None], vertices[None])[0]
            meshes.append(TexturedMesh.from_geometry(vertices, torch.from_numpy(mesh.faces).long(), colors))
        return meshes


def test_a_perfect_generator_covers_everything():
    config = dataclasses.replace(SMALL, points=1024)
    metrics = evaluate_generator(_Oracle(config), config)
    _, points, _ = reference_humans(config)
    between_humans = min(chamfer_distance(points[i], points[j]) for i in range(3) for j in range(3) if i != j)
    # What is left is the sampling noise of 1024 points per surface.
    assert metrics["cov"] == 1.0 and metrics["mmd"] < 0.5 * between_humans and metrics["empty_fraction"] == 0
    assert metrics["1-nna"] == 0.0  # each shape's nearest neighbour is its twin in the other set
    assert metrics["color_l1"] < 0.05


def test_eval_command_reports_trained_and_baseline_rows(tmp_path, capsys):
    from get3dhuman.nn import Generator
    from get3dhuman.train.checkpoint import save_checkpoint

    torch.manual_seed(0)
    generator = Generator("tiny")
    save_checkpoint(str(tmp_path), 1, {"ema": generator}, {"generator": torch.optim.Adam(generator.parameters())})
    args = ["eval", "--preset", "tiny", "--samples", "2", "--references", "2", "--points", "64", "--resolution", "16"]
    assert main(args + ["--generator", str(tmp_path)]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert set(rows) == {"trained", "untrained"}
    for row in rows.values():
        assert set(row) == {"cov", "mmd", "1-nna", "color_l1", "empty_fraction"} and 0 <= row["cov"] <= 1
    assert rows["trained"] == rows["untrained"]  # the same weights (seed 0) give the same row
    with pytest.raises(SystemExit):
        main(args + ["--no-baseline"])
