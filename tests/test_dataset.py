"""Datasets of generated humans: get3dhuman.dataset and `get3dhuman sample`."""

import dataclasses
import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import trimesh
from inputs import THREADS_PER_PROCESS, generator_with_a_surface, torch_threads, torchrun
from PIL import Image

from get3dhuman.cli import main
from get3dhuman.dataset import (
    CLAIMS,
    DATASET_FORMAT,
    MANIFEST,
    MANIFEST_LOCK,
    SETTINGS,
    GeneratedHumans,
    fingerprint,
    read_manifest,
    write_samples,
)
from get3dhuman.mesh import MeshingOptions, TexturedMesh
from get3dhuman.ops import marching_cubes
from get3dhuman.previews import decode_map, mesh_previews, render_previews
from get3dhuman.refine import refine_meshes, view_calibration
from get3dhuman.render import LIGHT, orbit_calibration, render_meshes
from get3dhuman.train import REFINER_PRESETS
from get3dhuman.train.refiner import make_refiner

MESHING = dict(resolution=32, meshing=MeshingOptions(coarse_resolution=8))
NARROW = MeshingOptions(coarse_resolution=8, compute_dtype=torch.bfloat16)  # bfloat16 decoder products


def manifest_lines(out) -> list[str]:
    return (out / MANIFEST).read_text().splitlines()


def test_samples_are_the_generators_meshes_with_a_manifest(tmp_path):
    generator = generator_with_a_surface()
    records = write_samples(generator, str(tmp_path), 3, seed=10, batch_size=2, file_type="ply", progress=False,
                            preview_resolution=24, **MESHING)
    expected = generator.sample(3, seed=10, batch_size=2, **MESHING)
    previews = mesh_previews(generator, expected, 24)
    assert [record["seed"] for record in records] == [10, 11, 12]
    assert [json.loads(line) for line in manifest_lines(tmp_path)] == records
    assert any(record["mesh"] is not None for record in records)
    for record, mesh, preview in zip(records, expected, previews):
        assert (record["vertices"], record["faces"]) == (mesh.vertices.shape[0], mesh.faces.shape[0])
        assert record["seconds"] > 0
        written = np.asarray(Image.open(tmp_path / record["preview"]).convert("RGB")) / 255.0
        np.testing.assert_allclose(written, preview.numpy(), atol=0.5 / 255 + 1e-6)
        if mesh.is_empty:
            assert record["mesh"] is None
            continue
        written = trimesh.load(tmp_path / record["mesh"], process=False)
        np.testing.assert_allclose(written.vertices, mesh.vertices.numpy(), atol=1e-6)
        np.testing.assert_array_equal(written.faces, mesh.faces.numpy())
        colors = written.visual.vertex_colors[:, :3] / 255.0
        np.testing.assert_allclose(colors, mesh.colors.clamp(0, 1).numpy(), atol=1 / 255 + 1e-6)
    assert not [name for name in os.listdir(tmp_path) if "tmp" in name or "partial" in name]
    # Every file with the mode the umask gives new files (meshes were 0600, from mkstemp).
    mask = os.umask(0)
    os.umask(mask)
    modes = {name: os.stat(tmp_path / name).st_mode & 0o777 for name in os.listdir(tmp_path) if name != CLAIMS}
    assert modes == dict.fromkeys(modes, 0o666 & ~mask), modes


class SphereGenerator(torch.nn.Module):
    """Stands in for a Generator with an analytic field: a ball of `radius` at the origin, its
    colour the latent's first three entries."""

    def __init__(self, radius: float):
        super().__init__()
        self.radius = radius
        self.register_buffer("calibration", orbit_calibration(torch.zeros(1))[0])

    def forward(self, z_shape, z_texture, truncation_psi=1.0):
        return SimpleNamespace(volume=z_shape), z_texture

    def query_occupancy(self, volume, points, calib):
        return torch.sigmoid((self.radius - points.norm(dim=-1)) * 200)

    def query_color(self, volume, texture, points, calib):
        return texture[:, None, :3].expand(-1, points.shape[1], -1)


def test_previews_of_a_ball_are_discs_of_its_colour():
    side, radius = 65, 0.5  # odd: the middle pixel looks at the ball head-on
    colors = torch.tensor([[0.9, 0.2, 0.1, 0.0], [0.1, 0.5, 0.8, 0.0]])
    previews = render_previews(SphereGenerator(radius), torch.zeros(2, 4), colors, side, background=1.0)
    assert previews.shape == (2, side, side, 3)
    ndc = torch.linspace(-1, 1, side)
    distance = (ndc[:, None] ** 2 + ndc[None, :] ** 2).sqrt()  # of each pixel centre from the disc's centre
    pixel = 2 / (side - 1)
    inside, outside = distance < radius - 1.5 * pixel, distance > radius + 1.5 * pixel
    for preview, color in zip(previews, colors):
        assert bool((preview[outside] == 1.0).all())
        # Shading scales the colour by 0.35 + 0.65 max(0, n . light): hue kept, never brighter.
        shaded = preview[inside]
        assert bool((shaded <= color[:3] + 1e-5).all()) and bool((shaded >= 0.35 * color[:3] - 1e-5).all())
        ratio = shaded / color[:3]
        assert float((ratio - ratio.mean(-1, keepdim=True)).abs().max()) < 1e-4
    facing = 0.35 + 0.65 * LIGHT[2] / float(torch.tensor(LIGHT).norm())  # the factor where n = (0, 0, 1)
    torch.testing.assert_close(previews[:, side // 2, side // 2], facing * colors[:, :3], atol=0.01, rtol=0)


def ball_mesh(radius: float, color, cells: int = 96) -> TexturedMesh:
    """A marching-cubes ball of `radius` at the origin in [-1, 1]^3, of one colour."""
    axis = torch.linspace(-1, 1, cells + 1)
    volume = radius - torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).norm(dim=-1)
    vertices, faces = marching_cubes(volume, spacing=2 / cells, origin=-1.0, flip=True)  # index order is (x, y, z)
    return TexturedMesh.from_geometry(vertices, faces, torch.tensor(color).expand(len(vertices), 3))


def test_mesh_previews_of_a_ball_are_its_field_previews():
    side, radius = 65, 0.5
    colors = torch.tensor([[0.9, 0.2, 0.1, 0.0], [0.1, 0.5, 0.8, 0.0]])
    meshes = [ball_mesh(radius, color[:3].tolist()) for color in colors]
    ball = SphereGenerator(radius)
    previews = mesh_previews(ball, meshes, side)
    expected = render_previews(ball, torch.zeros(2, 4), colors, side, background=1.0)
    ndc = torch.linspace(-1, 1, side)
    distance = (ndc[:, None] ** 2 + ndc[None, :] ** 2).sqrt()
    pixel = 2 / (side - 1)
    away = (distance - radius).abs() > 1.5 * pixel  # off the silhouette, where a pixel may fall either side
    assert float((previews - expected)[:, away].abs().max()) < 0.02
    assert bool((previews[:, distance > radius] == 1.0).all())


def test_views_turn_the_mesh_about_the_vertical_axis(tmp_path):
    generator = generator_with_a_surface()
    records = write_samples(generator, str(tmp_path), 2, batch_size=2, preview_resolution=32, preview_views=4,
                            progress=False, **MESHING)
    meshes = generator.sample(2, batch_size=2, **MESHING)
    # World -> world turn of the back view: rendering the turned mesh from the front is the back view.
    base, back = generator.calibration.double(), view_calibration(generator, 180.0).double()
    turn = torch.linalg.solve(base, back).float()
    for record, mesh in zip(records, meshes):
        files = record["views"]["files"]
        assert record["views"]["angles"] == [0.0, 90.0, 180.0, 270.0]
        assert files == [record["preview"]] + [f"human-{record['seed']}-{a:03d}.png" for a in (90, 180, 270)]
        turned = TexturedMesh(mesh.vertices @ turn[:3, :3].T + turn[:3, 3], mesh.faces, mesh.colors,
                              mesh.normals @ turn[:3, :3].T)
        expected = mesh_previews(generator, [turned], 32)[0].numpy()
        written = np.asarray(Image.open(tmp_path / files[2]).convert("RGB")) / 255.0
        mismatched = (np.abs(written - expected) > 1.5 / 255).any(-1)
        assert mismatched.mean() < 0.01  # rounding of the two transforms may move a silhouette pixel
        front = np.asarray(Image.open(tmp_path / files[0]).convert("RGB")) / 255.0
        assert np.abs(front - written).max() > 0.1  # the back is not the front
    with pytest.raises(ValueError, match="preview_views"):
        write_samples(generator, str(tmp_path), 2, batch_size=2, preview_resolution=32, preview_views=2,
                      progress=False, **MESHING)


def test_raised_previews_look_down_at_the_human_and_their_cameras_say_so(tmp_path):
    generator = generator_with_a_surface()
    (record,) = write_samples(generator, str(tmp_path), 1, preview_resolution=32, preview_views=2,
                              preview_elevation=30.0, progress=False, **MESHING)
    mesh = generator.sample(1, **MESHING)[0]
    cameras = json.loads((tmp_path / "cameras.json").read_text())
    assert cameras["elevation"] == 30.0 and json.loads((tmp_path / SETTINGS).read_text())["preview_elevation"] == 30.0
    for view, angle in enumerate((0.0, 180.0)):
        calib = torch.tensor(cameras["calibrations"][view], dtype=torch.float64)
        torch.testing.assert_close(calib.float(), view_calibration(generator, angle, 30.0))
        written = np.asarray(Image.open(tmp_path / record["views"]["files"][view]).convert("RGB")) / 255.0
        expected = mesh_previews(generator, [mesh], 32, angle=angle, elevation=30.0)[0].numpy()
        assert (np.abs(written - expected) > 1.5 / 255).any(-1).mean() < 0.01
        level = mesh_previews(generator, [mesh], 32, angle=angle)[0].numpy()
        assert np.abs(written - level).max() > 0.1  # not the level view
    with pytest.raises(ValueError, match=r"other settings \(preview_elevation\)"):
        write_samples(generator, str(tmp_path), 2, preview_resolution=32, preview_views=2, progress=False, **MESHING)
    settings = json.loads((tmp_path / SETTINGS).read_text())
    del settings["preview_elevation"]  # a dataset of an earlier version: its previews were level
    (tmp_path / SETTINGS).write_text(json.dumps(settings))
    write_samples(generator, str(tmp_path), 2, preview_resolution=32, preview_views=2, progress=False, **MESHING)
    with pytest.raises(ValueError, match=r"preview_elevation must be a number of degrees in \[-90, 90\], got 91"):
        write_samples(generator, str(tmp_path / "x"), 1, preview_resolution=8, preview_elevation=91)
    with pytest.raises(ValueError, match="preview_elevation needs preview_resolution"):
        write_samples(generator, str(tmp_path / "x"), 1, preview_elevation=10)


def test_maps_encode_the_renderings_of_each_view(tmp_path):
    generator = generator_with_a_surface()
    (record,) = write_samples(generator, str(tmp_path), 1, preview_resolution=32, preview_views=2,
                              preview_maps=("mask", "depth", "normal"), progress=False, **MESHING)
    mesh = generator.sample(1, **MESHING)[0]
    assert list(record["maps"]) == ["mask", "depth", "normal"]
    assert record["maps"]["depth"] == ["human-0-depth.png", "human-0-180-depth.png"]
    for view, angle in enumerate((0.0, 180.0)):
        rendering = render_meshes([mesh], view_calibration(generator, angle)[None], 32)
        on = rendering.mask[0].numpy() > 0
        mask, depth, normal = (np.asarray(Image.open(tmp_path / record["maps"][kind][view])).astype(np.float64)
                               for kind in ("mask", "depth", "normal"))
        assert on.any() and np.array_equal(mask == 255, on) and set(np.unique(mask)) <= {0, 255}
        np.testing.assert_allclose(depth[on] / 65535 * 2 - 1, rendering.depth[0].numpy()[on], atol=1 / 65535 + 1e-6)
        np.testing.assert_allclose(normal[on] / 255 * 2 - 1, rendering.normal[0].numpy()[on], atol=1 / 255 + 1e-6)
        assert (depth[~on] == 0).all() and (normal[~on] == 0).all()
        preview = np.asarray(Image.open(tmp_path / record["views"]["files"][view]).convert("RGB"))
        assert (preview[~on] == 255).all()  # the background, where the mask is off
        # cameras.json lifts the depth map back to the mesh's points.
        cameras = json.loads((tmp_path / "cameras.json").read_text())
        calib = torch.tensor(cameras["calibrations"][view], dtype=torch.float64)
        rows, columns = np.nonzero(on)
        ndc = torch.tensor(np.stack([-1 + 2 * columns / 31, -1 + 2 * rows / 31, depth[on] / 65535 * 2 - 1], -1))
        world = (ndc - calib[:3, 3]) @ torch.linalg.inv(calib[:3, :3]).T
        np.testing.assert_allclose(world.numpy(), rendering.points[0].numpy()[on], atol=1e-3)
    assert cameras["angles"] == [0.0, 180.0] and cameras["resolution"] == 32
    with pytest.raises(ValueError, match="preview_maps must be distinct names of mask, depth, normal"):
        write_samples(generator, str(tmp_path / "x"), 1, preview_resolution=8, preview_maps=["mask", "mask"])
    with pytest.raises(ValueError, match="preview_maps needs preview_resolution"):
        write_samples(generator, str(tmp_path / "x"), 1, preview_maps=["depth"])


def test_a_dataset_reads_back_as_the_meshes_and_renderings_it_was_written_from(tmp_path):
    generator = generator_with_a_surface()
    write_samples(generator, str(tmp_path), 3, seed=4, batch_size=2, file_type="ply", preview_resolution=32,
                  preview_views=2, preview_maps=("mask", "depth", "normal"), progress=False, **MESHING)
    meshes = generator.sample(3, seed=4, **MESHING)
    dataset = GeneratedHumans(tmp_path)
    assert len(dataset) == 3
    for index, mesh in enumerate(meshes):
        item = dataset[index]
        assert item["seed"] == 4 + index
        assert torch.equal(item["mesh"].vertices, mesh.vertices) and torch.equal(item["mesh"].faces, mesh.faces)
        torch.testing.assert_close(item["mesh"].colors, mesh.colors, atol=0.5 / 255 + 1e-6, rtol=0)
        torch.testing.assert_close(item["mesh"].normals, mesh.normals)
        assert item["angles"].tolist() == [0.0, 180.0]
        for view, angle in enumerate((0.0, 180.0)):
            calib = view_calibration(generator, angle)
            torch.testing.assert_close(item["cameras"][view], calib)
            rendering = render_meshes([mesh], calib[None], 32)
            torch.testing.assert_close(item["images"][view], mesh_previews(generator, [mesh], 32, angle=angle)[0],
                                       atol=0.5 / 255 + 1e-6, rtol=0)
            on = rendering.mask[0] > 0
            assert on.any() and torch.equal(item["mask"][view], on)
            depth, normal, points = (item[kind][view] for kind in ("depth", "normal", "points"))
            assert depth[~on].isnan().all() and normal[~on].isnan().all() and points[~on].isnan().all()
            torch.testing.assert_close(depth[on], rendering.depth[0][on], atol=0.5 / 65535 * 2 + 1e-6, rtol=0)
            torch.testing.assert_close(normal[on], rendering.normal[0][on], atol=1 / 255 + 1e-6, rtol=0)
            # The depth lifted through the camera lands on the rasterizer's own world points.
            torch.testing.assert_close(points[on], rendering.points[0][on], atol=1e-4, rtol=0)
    # Without meshes, torch's default collation batches the views.
    batch = next(iter(torch.utils.data.DataLoader(GeneratedHumans(tmp_path, meshes=False), batch_size=3)))
    assert "mesh" not in batch and batch["seed"].tolist() == [4, 5, 6]
    assert batch["images"].shape == (3, 2, 32, 32, 3) and batch["points"].shape == (3, 2, 32, 32, 3)
    torch.testing.assert_close(batch["depth"][1], dataset[1]["depth"], equal_nan=True)
    with pytest.raises(FileNotFoundError, match="out_dir must be a directory of `get3dhuman sample`"):
        GeneratedHumans(tmp_path / "missing")
    with pytest.raises(ValueError, match=r"pixels of a depth map must be uint16 \[H, W\], got uint8"):
        decode_map(np.zeros((4, 4), np.uint8), "depth")


class ConstantRefiner(torch.nn.Module):
    """Stands in for a Refiner (of `albedo` or of shaded views): every pixel becomes `color`
    (images in [-1, 1])."""

    def __init__(self, color, albedo=False):
        super().__init__()
        self.albedo = albedo
        self.register_buffer("color", torch.tensor(color))

    def forward(self, image):
        return (self.color * 2 - 1)[None, :, None, None].expand_as(image)


def test_a_refiner_of_one_colour_paints_the_ball_it_sees_with_the_shading_removed():
    radius, color = 0.5, [0.2, 0.6, 0.9]
    generator = SphereGenerator(radius)
    generator.config = SimpleNamespace(backbone_resolution=65)
    mesh = ball_mesh(radius, [0.5, 0.5, 0.5])
    unit = mesh.vertices / mesh.vertices.norm(dim=-1, keepdim=True)
    light = torch.tensor(LIGHT) / torch.tensor(LIGHT).norm()
    # Vertices seen by one view alone, away from its silhouette (front: z > 0, back: z < 0); their
    # camera-space normals are the ball's, the back camera's mirrored in x and z (the front
    # camera's axes are the world's).
    for side, normal in ((unit[:, 2] > 0.5, unit), (unit[:, 2] < -0.5, unit * torch.tensor([-1.0, 1.0, -1.0]))):
        factor = 0.35 + 0.65 * (normal[side] @ light).clamp_min(0)
        albedo = refine_meshes(generator, ConstantRefiner(color, albedo=True), [mesh])[0].colors[side]
        torch.testing.assert_close(albedo, torch.tensor(color).expand_as(albedo), atol=1e-5, rtol=0)
        # A shaded view of one colour is that colour over the light's factor, as albedo.
        shaded = refine_meshes(generator, ConstantRefiner(color), [mesh])[0].colors[side]
        expected = (torch.tensor(color) / factor[:, None]).clamp(0, 1)
        assert float((shaded - expected).abs().mean()) < 2e-3 and float((shaded - expected).abs().max()) < 0.03
    with pytest.raises(ValueError, match="meshes must hold at least one mesh"):
        refine_meshes(generator, ConstantRefiner(color), [])


def test_an_interrupted_dataset_resumes_without_redoing_samples(tmp_path):
    generator = generator_with_a_surface()
    first = write_samples(generator, str(tmp_path), 2, seed=5, progress=False, **MESHING)
    stamps = {name: os.stat(tmp_path / name).st_mtime_ns for name in os.listdir(tmp_path) if name.startswith("human-")}
    with open(tmp_path / MANIFEST, "a") as handle:
        handle.write('{"seed": 7, "mesh"')  # torn by an interruption
    records = write_samples(generator, str(tmp_path), 4, seed=5, progress=False, **MESHING)
    assert records[:2] == first and [record["seed"] for record in records] == [5, 6, 7, 8]
    assert [json.loads(line)["seed"] for line in manifest_lines(tmp_path)] == [5, 6, 7, 8]
    assert stamps == {name: os.stat(tmp_path / name).st_mtime_ns for name in stamps}  # not written again
    fresh = write_samples(generator, str(tmp_path / "fresh"), 4, seed=5, batch_size=3, progress=False, **MESHING)
    assert [(r["vertices"], r["faces"]) for r in fresh] == [(r["vertices"], r["faces"]) for r in records]
    with pytest.raises(ValueError, match=r"other settings \(file_type, resolution\)"):
        write_samples(generator, str(tmp_path), 4, seed=5, progress=False, file_type="obj", resolution=16,
                      meshing=MeshingOptions(coarse_resolution=8))
    # The decoders' products in another dtype give other bits: not mixed either. float32, the
    # default, records no option, as versions before the option did.
    assert json.loads((tmp_path / SETTINGS).read_text())["extract_options"] == {"coarse_resolution": 8}
    with pytest.raises(ValueError, match=r"other settings \(extract_options\)"):
        write_samples(generator, str(tmp_path), 4, seed=5, progress=False, resolution=32, meshing=NARROW)
    narrow = write_samples(generator, str(tmp_path / "bf16"), 1, seed=5, progress=False, resolution=32, meshing=NARROW)
    settings = json.loads((tmp_path / "bf16" / SETTINGS).read_text())
    assert settings["extract_options"]["compute_dtype"] == "torch.bfloat16"
    assert narrow[0]["faces"] > 0
    with torch.no_grad():
        generator.mlp_texture.filters[-1].bias += 0.1
    with pytest.raises(ValueError, match=r"other settings \(generator\)"):  # one dataset, one model
        write_samples(generator, str(tmp_path), 4, seed=5, progress=False, **MESHING)
    (tmp_path / MANIFEST).write_text("not a manifest\n")
    with pytest.raises(ValueError, match="not a manifest record"):
        read_manifest(str(tmp_path))


@pytest.mark.parametrize("albedo", [False, True])
def test_a_refiner_gives_the_refined_vertex_colours_and_previews(tmp_path, albedo):
    generator = generator_with_a_surface(seen_from_the_front=True)
    torch.manual_seed(1)
    refiner = make_refiner(dataclasses.replace(REFINER_PRESETS["tiny"], albedo=albedo))
    with torch.no_grad():
        refiner.head.bias.fill_(0.3)  # residual: a zero head would return the render, and the colours unchanged
    records = write_samples(generator, str(tmp_path), 2, seed=10, file_type="ply", refiner=refiner, progress=False,
                            preview_resolution=24, **MESHING)
    z_shape, z_texture = generator.latents([10, 11])
    plain = generator.extract_mesh(z_shape, z_texture, **MESHING)
    expected = refine_meshes(generator, refiner, plain)
    previews = mesh_previews(generator, expected, 24)  # the previews show the files' meshes
    assert any(record["mesh"] is not None for record in records)
    assert bool((previews < 1).any())  # not only background
    for record, preview in zip(records, previews):
        written = np.asarray(Image.open(tmp_path / record["preview"]).convert("RGB")) / 255.0
        np.testing.assert_allclose(written, preview.numpy(), atol=0.5 / 255 + 1e-6)
    for record, mesh, unrefined in zip(records, expected, plain):
        if record["mesh"] is None:
            continue
        colors = trimesh.load(tmp_path / record["mesh"], process=False).visual.vertex_colors[:, :3] / 255.0
        np.testing.assert_allclose(colors, mesh.colors.clamp(0, 1).numpy(), atol=1 / 255 + 1e-6)
        assert not torch.allclose(mesh.colors, unrefined.colors, atol=0.05)  # the refiner did change them


def test_refined_samples_of_versions_that_baked_the_shading_in_are_not_mixed_with_new_ones(tmp_path):
    generator = generator_with_a_surface(seen_from_the_front=True)
    refiner = make_refiner(REFINER_PRESETS["tiny"])
    for name, chosen in (("plain", None), ("refined", refiner)):
        write_samples(generator, str(tmp_path / name), 1, seed=10, refiner=chosen, progress=False, **MESHING)
        path = tmp_path / name / SETTINGS
        path.write_text(json.dumps({k: v for k, v in json.loads(path.read_text()).items() if k != "refined_colors"}))
    write_samples(generator, str(tmp_path / "plain"), 2, seed=10, progress=False, **MESHING)  # unrefined: unchanged
    with pytest.raises(ValueError, match=r"other settings \(refined_colors\)"):
        write_samples(generator, str(tmp_path / "refined"), 2, seed=10, refiner=refiner, progress=False, **MESHING)


def test_datasets_of_another_format_are_neither_extended_nor_read(tmp_path):
    generator = generator_with_a_surface()
    write_samples(generator, str(tmp_path), 1, seed=3, progress=False, **MESHING)
    path = tmp_path / SETTINGS
    settings = json.loads(path.read_text())
    assert settings["format"] == DATASET_FORMAT
    # Datasets written before the format was recorded are format 1: still read and extended.
    path.write_text(json.dumps({k: v for k, v in settings.items() if k != "format"}))
    assert len(GeneratedHumans(tmp_path)) == 1
    write_samples(generator, str(tmp_path), 2, seed=3, progress=False, **MESHING)
    assert len(GeneratedHumans(tmp_path)) == 2
    path.write_text(json.dumps({**settings, "format": DATASET_FORMAT + 1}))
    with pytest.raises(ValueError, match=rf"of format {DATASET_FORMAT + 1}; this version of get3dhuman reads formats "
                                         rf"1 to {DATASET_FORMAT}"):
        GeneratedHumans(tmp_path)
    with pytest.raises(ValueError, match=r"other settings \(format\)"):
        write_samples(generator, str(tmp_path), 3, seed=3, progress=False, **MESHING)


def test_empty_fields_are_listed_without_a_file(tmp_path):
    generator = generator_with_a_surface()
    with torch.no_grad():
        generator.mlp_shape.filters[-1].bias -= 100  # occupancy ~0 everywhere
    [record] = write_samples(generator, str(tmp_path), 1, progress=False, **MESHING)
    assert record["mesh"] is None and record["vertices"] == record["faces"] == 0
    assert sorted(os.listdir(tmp_path)) == sorted([CLAIMS, MANIFEST, MANIFEST_LOCK, SETTINGS])
    [item] = GeneratedHumans(tmp_path)  # read back: an empty mesh, and no views without previews
    assert sorted(item) == ["mesh", "seed"] and item["mesh"].is_empty and item["mesh"].vertices.shape == (0, 3)


def test_explicit_seeds_give_the_same_samples_as_a_range(tmp_path):
    weights = tmp_path / "tiny.safetensors"
    generator_with_a_surface().save_pretrained(weights)
    common = ["sample", "--weights", str(weights), "--resolution", "16", "--quiet"]
    (tmp_path / "seeds.txt").write_text("9  # one seed a line, or a range\n\n2-3\n")
    assert main([*common, "--seeds", "5", str(tmp_path / "seeds.txt"), "--out", str(tmp_path / "listed")]) == 0
    assert main([*common, "--num", "8", "--seed", "2", "--out", str(tmp_path / "range")]) == 0
    listed = read_manifest(str(tmp_path / "listed"))
    assert sorted(record["seed"] for record in listed) == [2, 3, 5, 9]
    for record in listed:
        assert (tmp_path / "listed" / record["mesh"]).read_bytes() == (tmp_path / "range" / record["mesh"]).read_bytes()
    for bad in (["5-3"], ["x"], ["0-99999999999"]):
        with pytest.raises(SystemExit) as exited:
            main([*common, "--seeds", *bad, "--out", str(tmp_path / "bad")])
        assert exited.value.code == 2
    with pytest.raises(SystemExit):  # --num or --seeds, not both
        main([*common, "--num", "2", "--seeds", "4", "--out", str(tmp_path / "bad")])
    with pytest.raises(SystemExit, match="seeds must be 3 distinct seeds"):
        main([*common, "--seeds", "4", "4-5", "--out", str(tmp_path / "bad")])
    assert not (tmp_path / "bad").exists()


def test_the_command_line_warns_of_empty_meshes(tmp_path, capsys):
    generator = generator_with_a_surface()
    with torch.no_grad():
        generator.mlp_shape.filters[-1].bias -= 100  # occupancy ~0 everywhere
    generator.save_pretrained(tmp_path / "empty.safetensors")
    assert main(["sample", "--weights", str(tmp_path / "empty.safetensors"), "--num", "2", "--resolution", "16",
                 "--out", str(tmp_path / "out"), "--quiet"]) == 0
    output = capsys.readouterr()
    assert "2 samples in" in output.out and "(2 empty," in output.out
    assert output.err.strip() == ("get3dhuman sample: warning: 2 of 2 meshes are empty (the field never crosses its "
                                  "level in the box): no mesh file was written for them")


@pytest.mark.parametrize("options, message", [
    (dict(num=-1), "num must be an int >= 0, got -1"),
    (dict(num=2, batch_size=0), "batch_size must be an int >= 1, got 0"),
    (dict(num=2, file_type="stl"), "file_type must be one of glb, ply, obj, got 'stl'"),
    (dict(num=2, preview_resolution=1), "preview_resolution must be an int >= 2 or None, got 1"),
    (dict(num=2, preview_resolution=8, preview_views=0), r"preview_views must be an int in \[1, 360\], got 0"),
    (dict(num=2, preview_views=2), "preview_views > 1 needs preview_resolution"),
    (dict(num=2, truncation_psi=float("nan")), "truncation_psi must be a finite number"),
    # An infinite band (every cell) meshes, but json cannot record it.
    (dict(num=2, meshing=MeshingOptions(band=float("inf"))),
     r"settings must be finite to be recorded, got extract_options=\{'band': inf\}"),
])
def test_bad_arguments_are_named(tmp_path, options, message):
    with pytest.raises(ValueError, match=message):
        write_samples(generator_with_a_surface(), str(tmp_path), progress=False, **options)
    assert not os.listdir(tmp_path)  # no settings recorded that a corrected run would conflict with


def test_command_line_writes_a_dataset_and_a_preview_grid(tmp_path, capsys):
    weights = tmp_path / "weights.safetensors"
    generator_with_a_surface().save_pretrained(weights)
    out, grid = tmp_path / "data", tmp_path / "grid.png"
    command = ["sample", "--weights", str(weights), "--num", "5", "--out", str(out), "--resolution", "32",
               "--preview", "16", "--grid", str(grid), "--format", "obj", "--quiet"]
    assert main(command) == 0
    seconds = sum(record["seconds"] for record in read_manifest(str(out))) / 5
    printed = capsys.readouterr().out
    assert f"5 samples in {out} (" in printed and f"{seconds:.2f} s a human" in printed
    assert Image.open(grid).size == (4 * 16, 2 * 16)
    assert [record["seed"] for record in read_manifest(str(out))] == [0, 1, 2, 3, 4]
    assert all(record["mesh"] is None or record["mesh"].endswith(".obj") for record in read_manifest(str(out)))
    with pytest.raises(SystemExit, match=r"other settings \(extract_options\)"):  # resumed with other products
        main(command + ["--compute-dtype", "bfloat16"])
    assert main(command[:6] + [str(tmp_path / "bf16"), "--resolution", "32", "--compute-dtype", "bfloat16"]) == 0
    settings = json.loads((tmp_path / "bf16" / SETTINGS).read_text())
    assert settings["extract_options"] == {"compute_dtype": "torch.bfloat16"}
    with pytest.raises(SystemExit, match=r"other settings \(generator\)"):  # resumed with a bfloat16 model
        main(command + ["--dtype", "bfloat16"])
    model = tmp_path / "bf16-model"
    assert main(command[:6] + [str(model), "--resolution", "32", "--dtype", "bfloat16"]) == 0
    settings = json.loads((model / SETTINGS).read_text())
    assert settings["extract_options"] == {}  # the products in the model's dtype
    assert settings["generator"] == fingerprint(generator_with_a_surface().to(torch.bfloat16))
    assert main(command[:6] + [str(model), "--resolution", "32", "--dtype", "bfloat16", "--compute-dtype",
                               "bfloat16"]) == 0  # the same settings: resumed, nothing left to do
    with pytest.raises(SystemExit, match=r"other settings \(extract_options\)"):
        main(command[:6] + [str(model), "--resolution", "32", "--dtype", "bfloat16", "--compute-dtype", "float32"])
    with pytest.raises(SystemExit, match="--grid needs --preview"):
        main(["sample", "--weights", str(weights), "--num", "1", "--out", str(out), "--grid", str(grid)])
    with pytest.raises(SystemExit, match="does not exist"):
        main(["sample", "--weights", str(tmp_path / "missing.safetensors"), "--num", "1", "--out", str(out)])
    with pytest.raises(SystemExit, match="give one of --weights, --generator and --checkpoint, not --weights and "):
        main(["sample", "--weights", str(weights), "--generator", str(tmp_path), "--num", "1", "--out", str(out)])
    with pytest.raises(SystemExit, match="--device must be a torch device such as cpu, cuda or cuda:1, got 'gpu'"):
        main(["sample", "--num", "1", "--out", str(out), "--device", "gpu"])
    with pytest.raises(SystemExit, match="--device must be cpu or cuda"):
        main(["sample", "--num", "1", "--out", str(out), "--device", "meta"])
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    expected = "no CUDA device is usable here" if count == 0 else f"this machine has {count} CUDA device"
    with pytest.raises(SystemExit, match=expected):
        main(["sample", "--num", "1", "--out", str(out), "--device", f"cuda:{count}"])


@pytest.mark.slow
def test_processes_under_torchrun_share_the_samples(tmp_path):
    weights = tmp_path / "weights.safetensors"
    generator = generator_with_a_surface()
    generator.save_pretrained(weights)
    torchrun("sample", "--weights", str(weights), "--count", "5", "--seed", "3", "--out", str(tmp_path / "shared"),
             "--resolution", "32", "--batch-size", "2", cwd=tmp_path)
    shared = sorted(read_manifest(str(tmp_path / "shared")), key=lambda record: record["seed"])
    # Other batches than one process's (seeds 3, 5, 7 and 4, 6 against 3-5, 6-7), with the
    # threads of one: the same files.
    with torch_threads(THREADS_PER_PROCESS):
        alone = write_samples(generator, str(tmp_path / "alone"), 5, seed=3, batch_size=3, resolution=32,
                              progress=False)
    assert [(r["seed"], r["mesh"], r["vertices"], r["faces"]) for r in shared] == \
        [(r["seed"], r["mesh"], r["vertices"], r["faces"]) for r in alone]
    for record in (record for record in alone if record["mesh"] is not None):
        assert (tmp_path / "shared" / record["mesh"]).read_bytes() == (tmp_path / "alone" / record["mesh"]).read_bytes()


def test_the_command_line_places_the_mesh_files_and_records_it(tmp_path):
    weights = tmp_path / "weights.safetensors"
    generator_with_a_surface().save_pretrained(weights)
    out = tmp_path / "out"
    command = ["sample", "--num", "1", "--seed", "3", "--resolution", "32", "--weights", str(weights), "--out",
               str(out), "--quiet", "--format", "ply", "--ground", "--up", "z"]
    assert main(command) == 0
    [record] = read_manifest(str(out))
    expected = generator_with_a_surface().sample(1, seed=3, resolution=32)[0].placed(ground=True, up="z")
    written = TexturedMesh.load(out / record["mesh"])
    assert torch.allclose(written.vertices, expected.vertices) and float(written.vertices[:, 2].min()) == 0
    settings = json.loads((out / SETTINGS).read_text())
    assert (settings["ground"], settings["up"]) == (True, "z")
    with pytest.raises(SystemExit, match=r"other settings \(up\)"):
        main([*command[:-1], "y"])
