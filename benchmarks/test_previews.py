"""Views of generated humans, on the default weights: previews, the extracted mesh rasterized
(`previews.mesh_previews`, what `get3dhuman sample --preview` draws) against the field ray-marched
(`previews.render_previews`, the package's earlier way and that of the authors' renders); and
refined vertex colours (`refine.refine_meshes`, what `sample --refiner` does) from rasterized
views of the mesh against views ray-marched from the field (the package's earlier way)."""

import copy

import pytest
import torch
from bench_settings import DEVICES, QUICK, median_seconds

from get3dhuman import Generator
from get3dhuman.ops import rasterize
from get3dhuman.previews import mesh_previews, render_previews
from get3dhuman.refine import colors_from_views, refine_images, refine_meshes, render_textured, view_calibration
from get3dhuman.train import REFINER_PRESETS
from get3dhuman.train.refiner import make_refiner

PREVIEW_SIDE = 64 if QUICK else 256
MESH_RESOLUTION = 64 if QUICK else 256
VIEW_SIDE = 32 if QUICK else None  # of the refiner's views; None: the backbone's (128), the refiner's own


@pytest.fixture(scope="module")
def generated():
    """The default generator, the latents of seed 0 and its mesh at MESH_RESOLUTION."""
    generator = Generator.from_pretrained().eval()
    z_shape, z_texture = generator.latents([0])
    with torch.no_grad():
        mesh = generator.extract_mesh(z_shape, z_texture, MESH_RESOLUTION)[0]
    return generator, z_shape, z_texture, mesh


def on_device(generated, device):
    """The parts of `generated` on `device`, the generator a copy: Module.to moves in place, and
    the fixture is shared by the tests of every device."""
    generator, *tensors = generated
    return (copy.deepcopy(generator).to(device), *(part.to(device) for part in tensors))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("implementation", ["rasterized mesh", "reference"])
def test_preview(benchmark, record, generated, device, implementation):
    generator, z_shape, z_texture, mesh = on_device(generated, device)
    if implementation == "reference":
        run = lambda: render_previews(generator, z_shape, z_texture, PREVIEW_SIDE)  # noqa: E731
    else:
        run = lambda: mesh_previews(generator, [mesh], PREVIEW_SIDE)  # noqa: E731

    def timed():
        with torch.no_grad():
            image = run()
        if device == "cuda":
            torch.cuda.synchronize()
        return image

    benchmark.group = f"preview {PREVIEW_SIDE}^2 of a {MESH_RESOLUTION}^3 mesh, {device}"
    benchmark.extra_info.update(faces=int(mesh.faces.shape[0]))
    benchmark.pedantic(timed, rounds=1 if implementation == "reference" else 5, iterations=1, warmup_rounds=1)
    record(f"preview {PREVIEW_SIDE}^2 {device}", implementation.split()[0], median_seconds(benchmark), 0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("side", [PREVIEW_SIDE, 4 * PREVIEW_SIDE])
def test_rasterize(benchmark, generated, device, side):
    generator, _, _, mesh = generated
    calib = generator.calibration
    ndc = (mesh.vertices @ calib[:3, :3].T + calib[:3, 3]).to(device).contiguous()
    faces = mesh.faces.to(device)

    def timed():
        out = rasterize(ndc, faces, side)
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    benchmark.group = f"rasterize a {MESH_RESOLUTION}^3 mesh, {device}"
    benchmark.extra_info.update(faces=int(faces.shape[0]), pixels=side * side)
    benchmark.pedantic(timed, rounds=5, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("implementation", ["rasterized mesh", "reference"])
def test_refined_colors(benchmark, record, generated, device, implementation):
    generator, z_shape, z_texture, mesh = on_device(generated, device)
    # The `small` stage-4 Refiner; its cost does not depend on its (here random) weights.
    refiner = make_refiner(REFINER_PRESETS["small"]).to(device).eval()
    side = VIEW_SIDE or generator.config.backbone_resolution

    def field_views():  # front and back ray-marched from the field (96 samples a ray), refined
        shape, texture = generator(z_shape, z_texture)
        views = []
        for angle in (0.0, 180.0):
            calib = view_calibration(generator, angle).expand(1, 4, 4)
            image, rendering = render_textured(generator, shape.volume, texture, calib, side)
            views.append((refine_images(refiner, image), calib, rendering))
        return colors_from_views([mesh], views)

    def timed():
        with torch.no_grad():
            refined = field_views() if implementation == "reference" else refine_meshes(generator, refiner, [mesh], side)
        if device == "cuda":
            torch.cuda.synchronize()
        return refined

    benchmark.group = f"refined colours of a {MESH_RESOLUTION}^3 mesh, views {side}^2, {device}"
    benchmark.pedantic(timed, rounds=1 if implementation == "reference" else 5, iterations=1, warmup_rounds=1)
    record(f"refined colours {side}^2 {device}", implementation.split()[0], median_seconds(benchmark), 0)
