"""Meshing: dense marching cubes against scikit-image, the narrow band on a body-like field, the
band's bookkeeping on a cheap field against a dense lattice, end-to-end extraction from a
'small' Generator against the authors' dense way, and a batch of the default weights' humans
meshed one latent at a time (what `extract_mesh` does, so that a seed's mesh does not depend on
its batch) against the batch meshed at once (the package's earlier way)."""

import time

import pytest
import torch
import torch.nn.functional as F
from bench_settings import DEVICES, QUICK, median_seconds

import get3dhuman
from get3dhuman.mesh import ExtractionTimings, extract_textured_meshes
from get3dhuman.ops import marching_cubes, narrow_band
from get3dhuman.synthetic import HumanField, human_parameters

skimage_measure = pytest.importorskip("skimage.measure")

DENSE_SIZES = [32, 64] if QUICK else [128, 256, 512]
BAND_SIZES = [64] if QUICK else [256, 512]
BUILD_SIZES = [64] if QUICK else [256, 512, 1024]
DENSE_BUILD_LARGEST = 64 if QUICK else 512  # a dense lattice beyond this does not fit the benchmark's budget
GENERATOR_RESOLUTION = 32 if QUICK else 256
AUTHORS_RESOLUTION = 32 if QUICK else 128  # the largest dense grid that finishes in a few minutes here


@pytest.fixture(scope="module")
def human():
    return human_parameters(torch.randn(1, 64, generator=torch.Generator().manual_seed(0)))


@pytest.fixture(scope="module")
def human_volumes(human):
    """SDF of one synthetic human on dense lattices: 128 and 256 evaluated, 512 trilinearly
    upsampled from 256 (evaluating 512^3 points analytically takes minutes here)."""
    volumes = {}
    for size in sorted({min(s, 256) for s in DENSE_SIZES}):
        x = torch.linspace(-1, 1, size)
        grid = torch.stack(torch.meshgrid(x, x, x, indexing="ij"), -1).reshape(1, -1, 3)
        field = HumanField(human)
        values = torch.cat([field.sdf(part) for part in grid.split(1 << 20, dim=1)], 1)
        volumes[size] = values.reshape(size, size, size).contiguous()
    if 512 in DENSE_SIZES:
        volumes[512] = F.interpolate(volumes[256][None, None], size=(512,) * 3, mode="trilinear",
                                     align_corners=True)[0, 0].contiguous()
    return volumes


@pytest.mark.parametrize("size", DENSE_SIZES)
@pytest.mark.parametrize("implementation", ["ours", "skimage"])
def test_dense_marching_cubes(benchmark, record, human_volumes, size, implementation):
    volume = human_volumes[size]
    if implementation == "ours":
        run = lambda: marching_cubes(volume, 0.0)  # noqa: E731
    else:
        array = volume.numpy()
        run = lambda: skimage_measure.marching_cubes(array, 0.0)  # noqa: E731
    benchmark.group = f"dense marching cubes {size}^3"
    vertices, faces = run()[:2]
    benchmark.extra_info.update(vertices=len(vertices), faces=len(faces))
    benchmark.pedantic(run, rounds=3, iterations=1)
    record(f"marching cubes {size}^3", implementation, median_seconds(benchmark), 0)


@pytest.mark.parametrize("size", BAND_SIZES)
def test_narrow_band_marching_cubes(benchmark, record, human, size):
    """Marching cubes on the band only (the band search is timed separately in extra_info)."""
    start = time.perf_counter()
    volume = narrow_band(HumanField(human).sdf, size, coarse_resolution=32, band=1.0)
    band_seconds = time.perf_counter() - start
    benchmark.group = f"narrow band {size}^3"
    benchmark.extra_info.update(fraction_evaluated=float(volume.fraction_evaluated[0]), cells=volume.cells.numel(),
                                band_seconds_including_sdf=band_seconds)
    meshes = benchmark.pedantic(volume.marching_cubes, rounds=3, iterations=1)
    benchmark.extra_info.update(vertices=len(meshes[0][0]), faces=len(meshes[0][1]))
    record(f"band marching cubes {size}^3", "ours", median_seconds(benchmark), 0)


def wavy_sphere(points):
    """A cheap closed field with detail everywhere on its surface, so that the band's bookkeeping,
    not the field, is what the build costs."""
    waves = torch.sin(20 * points[..., 0]) * torch.sin(20 * points[..., 1]) * torch.sin(20 * points[..., 2])
    return points.norm(dim=-1) - 0.6 + 0.05 * waves


@pytest.mark.parametrize("size", BUILD_SIZES)
@pytest.mark.parametrize("implementation", ["ours", "dense"])
def test_mesh_of_a_cheap_field(benchmark, record, size, implementation):
    """Band build + band marching cubes against the dense lattice (evaluated in chunks) + dense
    marching cubes, on the same field."""
    if implementation == "dense" and size > DENSE_BUILD_LARGEST:
        pytest.skip(f"dense lattice only up to {DENSE_BUILD_LARGEST}^3")

    def band():
        volume = narrow_band(wavy_sphere, size, band=1.0)
        benchmark.extra_info.update(fraction_evaluated=float(volume.fraction_evaluated[0]), cells=volume.cells.numel())
        return volume.marching_cubes()[0]

    def dense():
        x = torch.linspace(-1, 1, size + 1)
        values = torch.empty((size + 1) ** 3)
        for i, slab in enumerate(torch.split(torch.arange(size + 1), 32)):
            grid = torch.stack(torch.meshgrid(x[slab], x, x, indexing="ij"), -1).reshape(1, -1, 3)
            values[i * 32 * (size + 1) ** 2:(i * 32 + len(slab)) * (size + 1) ** 2] = wavy_sphere(grid)[0]
        return marching_cubes(values.reshape((size + 1,) * 3), 0.0)

    benchmark.group = f"cheap field mesh {size}^3"
    vertices, faces = benchmark.pedantic(band if implementation == "ours" else dense, rounds=3, iterations=1)
    benchmark.extra_info.update(vertices=len(vertices), faces=len(faces))
    record(f"cheap field mesh {size}^3", implementation, median_seconds(benchmark), 0)


def small_generator():
    """A 'small' Generator with random weights, its occupancy shifted to cross 0.5 in the box."""
    torch.manual_seed(0)
    generator = get3dhuman.Generator("small").eval()
    z = torch.randn(1, generator.config.z_dim)
    with torch.no_grad():
        shape = generator.shape_features(z)
        probe = generator.query_occupancy(shape.volume, torch.rand(1, 1 << 14, 3) * 1.6 - 0.8)
        generator.mlp_shape.filters[-1].bias -= torch.logit(probe.median())
    return generator, z


def test_generator_mesh_end_to_end(benchmark, record):
    generator, z = small_generator()
    timings = []

    def extract():
        timings.append(ExtractionTimings())
        return generator.extract_mesh(z, z, GENERATOR_RESOLUTION, timings=timings[-1])

    benchmark.group = "generator mesh"
    meshes = benchmark.pedantic(extract, rounds=1, iterations=1)
    t = timings[-1]
    benchmark.extra_info.update(resolution=GENERATOR_RESOLUTION, faces=len(meshes[0].faces), networks=t.networks,
                                queries=t.queries, narrow_band=t.narrow_band, marching_cubes=t.marching_cubes,
                                colors=t.colors, fraction_evaluated=t.evaluated_fraction[0])
    record(f"small generator {GENERATOR_RESOLUTION}^3", "ours", median_seconds(benchmark), 0)


def test_generator_mesh_authors_dense_way(benchmark, record):
    """Dense grid of occupancy queries (the fused query, in chunks), then scikit-image."""
    generator, z = small_generator()

    def extract():
        with torch.no_grad():
            shape, texture = generator(z, z)
            x = torch.linspace(-1, 1, AUTHORS_RESOLUTION)
            grid = torch.stack(torch.meshgrid(x, x, x, indexing="ij"), -1).reshape(1, -1, 3)
            values = torch.cat([generator.query_occupancy(shape.volume, part) for part in grid.split(1 << 18, dim=1)], 1)
            volume = values.reshape((AUTHORS_RESOLUTION,) * 3).numpy()
            vertices, faces, _, _ = skimage_measure.marching_cubes(volume, 0.5)
            spacing = 2 / (AUTHORS_RESOLUTION - 1)
            points = torch.from_numpy(vertices.copy()).float()[None] * spacing - 1
            return faces, generator.query_color(shape.volume, texture, points)

    benchmark.group = "generator mesh"
    faces, _ = benchmark.pedantic(extract, rounds=1, iterations=1)
    benchmark.extra_info.update(resolution=AUTHORS_RESOLUTION, faces=len(faces))
    record(f"small generator {AUTHORS_RESOLUTION}^3", "authors-dense", median_seconds(benchmark), 0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("implementation", ["ours", "reference"])
def test_generator_batch(benchmark, record, device, implementation):
    generator = get3dhuman.Generator.from_pretrained().to(device).eval()
    z_shape, z_texture = (z.to(device) for z in generator.latents(range(4)))

    def batched():  # one network call and one narrow band for the batch, its points padded together
        shape, texture = generator(z_shape, z_texture)
        calib = generator.calibration.expand(4, 4, 4)
        return extract_textured_meshes(lambda p: generator.query_occupancy(shape.volume, p, calib),
                                       lambda p: generator.query_color(shape.volume, texture, p, calib), 4,
                                       GENERATOR_RESOLUTION, bounds=generator.world_bounds(), device=device)

    def timed():
        with torch.no_grad():
            meshes = batched() if implementation == "reference" else generator.extract_mesh(z_shape, z_texture,
                                                                                            GENERATOR_RESOLUTION)
        if device == "cuda":
            torch.cuda.synchronize()
        return meshes

    benchmark.group = f"default generator, 4 latents at {GENERATOR_RESOLUTION}^3, {device}"
    meshes = benchmark.pedantic(timed, rounds=3, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update(faces=[len(mesh.faces) for mesh in meshes])
    record(f"4 humans {GENERATOR_RESOLUTION}^3 {device}", implementation, median_seconds(benchmark), 0)
