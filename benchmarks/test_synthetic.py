"""The synthetic world: SDF throughput, PIFu-style sampling, and sphere-traced renders."""

import pytest
import torch
from bench_settings import QUICK

from get3dhuman.render import orbit_calibration, sphere_trace
from get3dhuman.synthetic import human_color, human_parameters, human_sdf, sample_occupancy

POINTS = 1 << (14 if QUICK else 20)
SAMPLES = 500 if QUICK else 10000
RESOLUTION = 64 if QUICK else 256


@pytest.fixture(scope="module")
def params():
    return human_parameters(torch.randn(8, 64, generator=torch.Generator().manual_seed(0)))


def test_sdf_throughput(benchmark, params):
    points = torch.rand(1, POINTS, 3) * 2 - 1
    benchmark.group = "synthetic"
    benchmark.extra_info["points"] = POINTS
    benchmark.pedantic(human_sdf, (params[:1], points), rounds=3, iterations=1)


def test_occupancy_sampling(benchmark, params):
    benchmark.group = "synthetic"
    benchmark.extra_info["samples"] = 8 * SAMPLES
    benchmark.pedantic(lambda: sample_occupancy(params, SAMPLES, generator=torch.Generator().manual_seed(1)), rounds=2, iterations=1)


def test_render_depth_normal_color(benchmark, params):
    one = params[:1]
    calib = orbit_calibration(torch.zeros(1))

    def render():
        with torch.no_grad():
            return sphere_trace(lambda p: human_sdf(one, p), calib, RESOLUTION, lambda p: human_color(one, p))

    benchmark.group = "synthetic"
    benchmark.extra_info["resolution"] = RESOLUTION
    benchmark.pedantic(render, rounds=3, iterations=1)
