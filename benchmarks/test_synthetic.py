"""The synthetic world: SDF throughput, PIFu-style sampling and sphere-traced renders, each by
the compiled `ops.sdf_union` ("ours") against the torch evaluation of the same primitive tables
("reference", `reference=True`) in the same run."""

import pytest
import torch
from bench_settings import DEVICES, QUICK, median_seconds

from get3dhuman.render import orbit_calibration, sphere_trace
from get3dhuman.synthetic import HumanField, human_parameters, sample_occupancy

POINTS = 1 << (14 if QUICK else 20)
SAMPLES = 500 if QUICK else 10000
RESOLUTION = 64 if QUICK else 256
IMPLEMENTATIONS = ("ours", "reference")


@pytest.fixture(scope="module")
def params():
    return human_parameters(torch.randn(8, 64, generator=torch.Generator().manual_seed(0)))


def synchronized(function, device):
    def run():
        result = function()
        if device == "cuda":
            torch.cuda.synchronize()
        return result

    return run


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_sdf_throughput(benchmark, record, params, implementation, device):
    field = HumanField(params[:1].to(device), reference=implementation == "reference")
    points = (torch.rand(1, POINTS, 3) * 2 - 1).to(device)
    benchmark.group = f"synthetic sdf {device}"
    benchmark.extra_info["points"] = POINTS
    benchmark.pedantic(synchronized(lambda: field.sdf(points), device), rounds=3, iterations=1, warmup_rounds=1)
    record(f"human sdf 2^{POINTS.bit_length() - 1} {device}", implementation, median_seconds(benchmark), 0)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_occupancy_sampling(benchmark, record, params, implementation):
    field = HumanField(params, reference=implementation == "reference")
    benchmark.group = "synthetic sampling"
    benchmark.extra_info["samples"] = 8 * SAMPLES
    benchmark.pedantic(lambda: sample_occupancy(field, SAMPLES, generator=torch.Generator().manual_seed(1)),
                       rounds=2, iterations=1)
    record(f"occupancy samples 8x{SAMPLES}", implementation, median_seconds(benchmark), 0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_render_depth_normal_color(benchmark, record, params, implementation, device):
    field = HumanField(params[:1].to(device), reference=implementation == "reference")
    calib = orbit_calibration(torch.zeros(1)).to(device)

    def render():
        with torch.no_grad():
            return sphere_trace(field.sdf, calib, RESOLUTION, field.color)

    benchmark.group = f"synthetic render {device}"
    benchmark.extra_info["resolution"] = RESOLUTION
    benchmark.pedantic(synchronized(render, device), rounds=3, iterations=1)
    record(f"sphere trace {RESOLUTION}^2 {device}", implementation, median_seconds(benchmark), 0)
