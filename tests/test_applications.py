"""Applications: spherical interpolation of latents, walks between humans, new textures on a shape."""

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import trimesh
from inputs import generator_with_a_surface
from PIL import Image
from safetensors.torch import load_file

from get3dhuman import applications
from get3dhuman.cli import main
from get3dhuman.mesh import MeshingOptions
from get3dhuman.previews import encode_map, mesh_previews
from get3dhuman.refine import mesh_views, render_textured, view_calibration
from get3dhuman.render import orbit_calibration

MESHING = {"resolution": 32, "meshing": MeshingOptions(coarse_resolution=8)}


def test_slerp_follows_the_great_circle_and_interpolates_the_norm():
    start, end = torch.tensor([2.0, 0.0, 0.0]), torch.tensor([0.0, 4.0, 0.0])
    path = applications.slerp(start, end, torch.tensor([0.0, 0.5, 1.0]))
    torch.testing.assert_close(path[0], start)
    torch.testing.assert_close(path[2], end)
    # Half way between orthogonal directions: 45 degrees, norm (2 + 4) / 2.
    torch.testing.assert_close(path[1], 3.0 * torch.tensor([1.0, 1.0, 0.0]) / math.sqrt(2))
    parallel = applications.slerp(start, 3 * start, torch.tensor([0.25]))
    torch.testing.assert_close(parallel[0], torch.tensor([3.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match="start and end must both be"):
        applications.slerp(start, end[:2], torch.tensor([0.5]))


def test_interpolation_latents_move_only_what_is_asked():
    start = (torch.randn(8), torch.randn(8))
    end = (torch.randn(8), torch.randn(8))
    z_shape, z_texture = applications.interpolation_latents(start, end, 5, "texture")
    assert z_shape.shape == z_texture.shape == (5, 8)
    assert torch.equal(z_shape, start[0].expand(5, -1))
    torch.testing.assert_close(z_texture[[0, -1]], torch.stack([start[1], end[1]]))
    z_shape, z_texture = applications.interpolation_latents(start, end, 3, "shape")
    assert torch.equal(z_texture, start[1].expand(3, -1)) and not torch.allclose(z_shape[1], start[0])
    with pytest.raises(ValueError, match="steps must be an int >= 2"):
        applications.interpolation_latents(start, end, 1)
    with pytest.raises(ValueError, match="moving must be one of"):
        applications.interpolation_latents(start, end, 3, "colour")


def test_a_texture_walk_keeps_the_geometry_and_changes_the_colours():
    generator = generator_with_a_surface()
    start, end = generator.latents([0]), generator.latents([1])
    meshes = applications.interpolate(generator, (start[0][0], start[1][0]), (end[0][0], end[1][0]), 3,
                                      moving="texture", batch_size=1, **MESHING)
    assert len(meshes) == 3 and not meshes[0].is_empty
    for mesh in meshes[1:]:
        assert torch.equal(mesh.vertices, meshes[0].vertices) and torch.equal(mesh.faces, meshes[0].faces)
    assert not torch.allclose(meshes[0].colors, meshes[-1].colors, atol=1e-3)
    last = generator.extract_mesh(start[0], end[1], **MESHING)[0]  # the walk ends at the end texture
    torch.testing.assert_close(meshes[-1].colors, last.colors, atol=1e-5, rtol=0)


def test_synthesis_of_the_mapped_latents_is_the_forward_pass():
    generator = generator_with_a_surface().eval()
    z_shape, z_texture = generator.latents([0, 1])
    with torch.no_grad():
        ws_shape, ws_texture = generator.mapping(z_shape, z_texture, 0.7)
        shape, texture = generator.synthesize(ws_shape, ws_texture)
        expected_shape, expected_texture = generator(z_shape, z_texture, 0.7)
    assert ws_shape.shape == (2, generator.backbone_shape.synthesis.num_ws, generator.config.w_dim)
    assert torch.equal(shape.volume, expected_shape.volume) and torch.equal(texture, expected_texture)
    with pytest.raises(ValueError, match=r"ws_texture must be \[B, "):
        generator.synthesize(ws_shape, ws_texture[:, :1])
    with pytest.raises(ValueError, match="ws_texture must have the batch of ws_shape"):
        generator.synthesize(ws_shape, ws_texture[:1])
    with pytest.raises(ValueError, match=r"z_texture must be \[B, "):
        generator.mapping(z_shape, z_texture[:, :3])


def test_a_walk_in_w_is_the_straight_line_between_the_mapped_latents():
    generator = generator_with_a_surface().eval()
    start, end = generator.latents([0]), generator.latents([1])
    meshes = applications.interpolate(generator, (start[0][0], start[1][0]), (end[0][0], end[1][0]), 3, space="w",
                                      batch_size=1, truncation_psi=0.8, **MESHING)
    assert len(meshes) == 3 and not meshes[0].is_empty
    for mesh, z in ((meshes[0], start), (meshes[-1], end)):  # the ends are the seeds' own humans
        expected = generator.extract_mesh(*z, truncation_psi=0.8, **MESHING)[0]
        assert torch.equal(mesh.faces, expected.faces)  # (mapped in a batch of two: rounding differs)
        torch.testing.assert_close(mesh.vertices, expected.vertices, atol=1e-4, rtol=0)
    with torch.no_grad():
        ws_start, ws_end = generator.mapping(*start, 0.8), generator.mapping(*end, 0.8)
    middle = generator.extract_mesh_from_ws((ws_start[0] + ws_end[0]) / 2, (ws_start[1] + ws_end[1]) / 2, **MESHING)[0]
    torch.testing.assert_close(meshes[1].vertices, middle.vertices, atol=1e-4, rtol=0)
    through_z = applications.interpolate(generator, (start[0][0], start[1][0]), (end[0][0], end[1][0]), 3,
                                         batch_size=1, truncation_psi=0.8, **MESHING)[1]
    assert through_z.vertices.shape != meshes[1].vertices.shape or not torch.allclose(through_z.vertices, meshes[1].vertices)
    textures = applications.interpolate(generator, (start[0][0], start[1][0]), (end[0][0], end[1][0]), 3, space="w",
                                        moving="texture", **MESHING)
    assert all(torch.equal(mesh.faces, textures[0].faces) for mesh in textures)
    assert not torch.allclose(textures[0].colors, textures[-1].colors, atol=1e-3)
    with pytest.raises(ValueError, match="space must be one of z, w, got 'x'"):
        applications.interpolation_latents((start[0][0], start[1][0]), (end[0][0], end[1][0]), 3, space="x")


@pytest.mark.parametrize(("dtype", "compute_dtype"), [(torch.float32, None), (torch.float32, torch.bfloat16),
                                                     (torch.bfloat16, None)])
def test_retexture_equals_extracting_each_pair(dtype, compute_dtype):
    generator = generator_with_a_surface().to(dtype)
    z_shape = generator.latents([3])[0]
    z_textures = generator.latents([4, 5, 6])[1]
    meshing = MeshingOptions(coarse_resolution=8, compute_dtype=compute_dtype)
    meshes = applications.retexture(generator, z_shape[0], z_textures, 32, meshing=meshing)
    assert len(meshes) == 3 and not meshes[0].is_empty
    for t, mesh in enumerate(meshes):
        expected = generator.extract_mesh(z_shape, z_textures[t:t + 1], 32, meshing=meshing)[0]
        for name in ("vertices", "faces", "colors", "normals"):
            assert torch.equal(getattr(mesh, name), getattr(expected, name)), name
    with pytest.raises(ValueError, match=r"z_textures must be \[T, "):
        applications.retexture(generator, z_shape[0], z_textures[:, :3], **MESHING)


def test_command_lines_write_meshes_previews_and_a_grid(tmp_path, capsys):
    weights = tmp_path / "tiny.safetensors"
    generator_with_a_surface().save_pretrained(weights)
    common = ["--weights", str(weights), "--resolution", "32", "--format", "ply", "--preview", "16"]
    assert main(["interpolate", "--from", "0", "--to", "1", "--steps", "3", "--out", str(tmp_path / "walk"),
                 "--grid", str(tmp_path / "walk.png"), *common]) == 0
    assert "3/3" in capsys.readouterr().err  # the progress bar, a step a human
    assert sorted(p.name for p in (tmp_path / "walk").glob("*.png")) == ["step-00.png", "step-01.png", "step-02.png"]
    assert Image.open(tmp_path / "walk.png").size == (3 * 16, 16)
    assert main(["interpolate", "--from", "0", "--to", "1", "--steps", "3", "--space", "w",
                 "--out", str(tmp_path / "walk-w"), *common]) == 0
    ends, middles = ([trimesh.load(tmp_path / walk / f"step-{i:02d}.ply", process=False) for walk in ("walk", "walk-w")]
                     for i in (0, 1))
    assert ends[0].vertices.shape == ends[1].vertices.shape  # both walks start at seed 0
    assert middles[0].vertices.shape != middles[1].vertices.shape or not (middles[0].vertices == middles[1].vertices).all()
    capsys.readouterr()
    assert main(["retexture", "--shape", "2", "--textures", "7", "8", "--out", str(tmp_path / "skins"), *common]) == 0
    assert "2/2" in capsys.readouterr().err  # a step a texture
    assert main(["retexture", "--shape", "2", "--textures", "7", "--out", str(tmp_path / "quiet"), *common,
                 "--quiet"]) == 0
    assert capsys.readouterr().err == ""
    meshes = [trimesh.load(tmp_path / "skins" / f"texture-{seed}.ply", process=False) for seed in (7, 8)]
    assert meshes[0].vertices.shape == meshes[1].vertices.shape and len(meshes[0].vertices) > 0
    with pytest.raises(SystemExit, match="--grid needs --preview"):
        main(["retexture", "--shape", "2", "--textures", "7", "--out", str(tmp_path / "x"), "--weights", str(weights),
              "--grid", str(tmp_path / "x.png")])
    assert main(["retexture", "--shape", "2", "--textures", "7", "--out", str(tmp_path / "turned"), *common,
                 "--views", "2", "--maps", "depth"]) == 0
    assert sorted(p.name for p in (tmp_path / "turned").iterdir()) == [
        "cameras.json", "texture-7-180-depth.png", "texture-7-180.png", "texture-7-depth.png", "texture-7.ply",
        "texture-7.png"]
    assert main(["retexture", "--shape", "2", "--textures", "7", "--out", str(tmp_path / "above"), *common,
                 "--elevation", "20"]) == 0
    cameras = json.loads((tmp_path / "above" / "cameras.json").read_text())
    assert cameras["elevation"] == 20.0
    assert torch.allclose(torch.tensor(cameras["calibrations"][0]).float(), view_calibration(generator_with_a_surface(), 0.0, 20.0))
    for flags in (["--views", "4"], ["--elevation", "30"]):
        with pytest.raises(SystemExit, match="--views, --elevation and --maps need --preview RES"):
            main(["interpolate", "--from", "0", "--to", "1", "--out", str(tmp_path / "x"), "--weights", str(weights),
                  *flags])
    with pytest.raises(SystemExit):
        main(["retexture", "--shape", "2", "--textures", "7", "--out", str(tmp_path / "x"), *common,
              "--elevation", "100"])
    assert "argument --elevation: must be a number in [-90, 90], got 100" in capsys.readouterr().err


def test_results_have_the_previews_views_and_maps_of_a_dataset(tmp_path):
    generator = generator_with_a_surface()
    z_shape, z_textures = generator.latents([2])[0][0], generator.latents([5, 6])[1]
    meshes = applications.retexture(generator, z_shape, z_textures, **MESHING)
    names = ["texture-5", "texture-6"]
    written = applications.write_results(generator, str(tmp_path / "out"), names, meshes, "ply", 24,
                                         str(tmp_path / "grid.png"), preview_views=3, preview_maps=["mask", "normal"])
    assert sorted(written) == sorted([*(str(p) for p in (tmp_path / "out").iterdir()), str(tmp_path / "grid.png")])
    assert len(written) == 2 + 1 + 2 * 3 * 3 + 1  # meshes, cameras, (view + 2 maps) x 3 views each, grid
    for angle, suffix in ((0.0, ""), (120.0, "-120"), (240.0, "-240")):
        expected = mesh_previews(generator, meshes, 24, angle=angle)
        rendering = mesh_views(generator, meshes, (angle,), 24)[0][2]
        for index, name in enumerate(names):
            view = np.asarray(Image.open(tmp_path / "out" / f"{name}{suffix}.png").convert("RGB"))
            np.testing.assert_array_equal(view, (expected[index] * 255).round().to(torch.uint8).numpy())
            for kind in ("mask", "normal"):
                encoded = np.asarray(Image.open(tmp_path / "out" / f"{name}{suffix}-{kind}.png"))
                np.testing.assert_array_equal(encoded, encode_map(rendering, index, kind))
    cameras = json.loads((tmp_path / "out" / "cameras.json").read_text())
    assert cameras["angles"] == [0.0, 120.0, 240.0] and cameras["resolution"] == 24
    assert Image.open(tmp_path / "grid.png").size == (2 * 24, 24)
    with pytest.raises(ValueError, match=r"preview_views must be an int in \[1, 360\], got 0"):
        applications.write_results(generator, str(tmp_path / "x"), names, meshes, "ply", 24, preview_views=0)


class LatentBall(torch.nn.Module):
    """Stands in for a Generator whose latents have a known meaning: a ball of radius
    0.35 + 0.15 tanh(z_shape[0]) coloured sigmoid(z_texture[:3])."""

    def __init__(self, z_dim: int = 8):
        super().__init__()
        self.z_dim = z_dim
        self.register_buffer("calibration", orbit_calibration(torch.zeros(1))[0])

    def latents(self, seeds):
        z = torch.stack([torch.randn(2, self.z_dim, generator=torch.Generator().manual_seed(s)) for s in seeds])
        return z[:, 0], z[:, 1]

    @staticmethod
    def radius(z_shape):
        return 0.35 + 0.15 * torch.tanh(z_shape[:, 0])

    def forward(self, z_shape, z_texture, truncation_psi=1.0):
        return SimpleNamespace(volume=z_shape), z_texture

    def query_occupancy(self, volume, points, calib):
        return torch.sigmoid((self.radius(volume)[:, None] - points.norm(dim=-1)) * 40)

    def query_color(self, volume, texture, points, calib):
        return torch.sigmoid(texture[:, None, :3]).expand(-1, points.shape[1], -1)


def test_inversion_recovers_the_radius_and_colour_of_a_ball():
    ball = LatentBall()
    target_shape = torch.zeros(1, 8)
    target_shape[0, 0] = 1.0
    target_texture = torch.tensor([[1.0, -1.0, 0.5, 0, 0, 0, 0, 0]])
    with torch.no_grad():
        shape, texture = ball(target_shape, target_texture)
        image, rendering = render_textured(ball, shape.volume, texture, ball.calibration[None], 32, 48)
    result = applications.invert(ball, image[0], rendering.mask[0], steps=80, seed=0, learning_rate=0.1)
    assert result.z_shape.shape == result.z_texture.shape == (1, 8)
    assert min(result.losses) < 0.2 * result.losses[0]
    assert abs(float(ball.radius(result.z_shape) - ball.radius(target_shape))) < 0.02
    torch.testing.assert_close(torch.sigmoid(result.z_texture[0, :3]), torch.sigmoid(target_texture[0, :3]),
                               atol=0.05, rtol=0)
    # Without a mask, the foreground is what differs from the corner pixel: the same disc here.
    assert torch.equal(applications.foreground_of(image[0]), rendering.mask[0])
    with pytest.raises(ValueError, match=r"image must be \[S, S, 3\]"):
        applications.invert(ball, image[0, :, :20], steps=1)
    with pytest.raises(ValueError, match="depth_samples must be an int >= 2, got 1"):
        applications.invert(ball, image[0], steps=1, depth_samples=1)


def test_soft_silhouette_is_the_largest_occupancy_along_each_ray_with_its_gradient():
    generator = generator_with_a_surface()
    with torch.no_grad():
        volume = generator(*generator.latents([2]))[0].volume
    volume.requires_grad_()
    samples = torch.rand(12, 50, 3) * 2 - 1  # 12 samples along each of 50 rays (any points will do)
    calib = generator.calibration[None]
    silhouette = applications.soft_silhouette(generator, volume, samples, calib)
    dense = generator.query_occupancy(volume, samples.reshape(1, -1, 3), calib).view(12, 50).amax(0)
    weights = torch.rand(50)
    (ours,) = torch.autograd.grad((silhouette * weights).sum(), volume)
    (expected,) = torch.autograd.grad((dense * weights).sum(), volume)
    torch.testing.assert_close(silhouette, dense)
    torch.testing.assert_close(ours, expected)
    assert ours.abs().sum() > 0


def test_invert_command_writes_latents_mesh_view_and_losses(tmp_path):
    generator = generator_with_a_surface(seen_from_the_front=True)  # a figure in the target's front view
    weights = tmp_path / "tiny.safetensors"
    generator.save_pretrained(weights)
    z_shape, z_texture = generator.latents([1])
    with torch.no_grad():
        shape, texture = generator(z_shape, z_texture)
        image, rendering = render_textured(generator, shape.volume, texture, generator.calibration[None], 32, 48)
    Image.fromarray((image[0].numpy() * 255).round().astype("uint8")).save(tmp_path / "target.png")
    Image.fromarray((rendering.mask[0].numpy() * 255).astype("uint8")).save(tmp_path / "mask.png")
    assert rendering.mask[0].any()
    out = tmp_path / "inverted"
    assert main(["invert", "--image", str(tmp_path / "target.png"), "--mask", str(tmp_path / "mask.png"),
                 "--weights", str(weights), "--steps", "3", "--resolution", "32", "--format", "ply",
                 "--out", str(out), "--quiet"]) == 0
    latents = load_file(out / "latents.safetensors")
    assert latents["z_shape"].shape == latents["z_texture"].shape == (1, generator.config.z_dim)
    assert len(json.loads((out / "losses.json").read_text())) == 3
    assert Image.open(out / "inverted.png").size == (32, 32)  # the tiny backbone's side
    with pytest.raises(SystemExit, match="cannot read"):
        main(["invert", "--image", str(tmp_path / "missing.png"), "--weights", str(weights), "--out", str(out)])
    # An image without a figure (one colour; or a figure whose given mask is empty) is refused.
    Image.new("RGB", (32, 32), (200, 180, 40)).save(tmp_path / "plain.png")
    Image.new("L", (32, 32), 0).save(tmp_path / "empty-mask.png")
    for options in (["--image", str(tmp_path / "plain.png")],
                    ["--image", str(tmp_path / "target.png"), "--mask", str(tmp_path / "empty-mask.png")]):
        with pytest.raises(SystemExit, match="^get3dhuman invert: image holds no figure: its mask is empty"):
            main(["invert", *options, "--weights", str(weights), "--out", str(tmp_path / "none")])
    assert not (tmp_path / "none").exists()


def test_invert_frames_a_picture_of_any_shape_and_refuses_to_squash_one(tmp_path):
    generator = generator_with_a_surface()
    weights = tmp_path / "tiny.safetensors"
    generator.save_pretrained(weights)
    picture = np.full((60, 30, 3), 255, dtype=np.uint8)  # a portrait: a figure on white, off centre
    picture[10:40, 4:16] = (200, 60, 40)
    Image.fromarray(picture).save(tmp_path / "portrait.png")
    out = tmp_path / "inverted"
    assert main(["invert", "--image", str(tmp_path / "portrait.png"), "--frame", "--weights", str(weights),
                 "--steps", "2", "--resolution", "32", "--format", "ply", "--out", str(out), "--quiet"]) == 0
    losses = json.loads((out / "losses.json").read_text())
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
    with pytest.raises(SystemExit, match="is 30 x 60, not square: pass --frame"):
        main(["invert", "--image", str(tmp_path / "portrait.png"), "--weights", str(weights), "--out", str(out)])
    with pytest.raises(SystemExit, match="--frame takes the mask from the matte"):
        main(["invert", "--image", str(tmp_path / "portrait.png"), "--frame", "--mask", str(tmp_path / "portrait.png"),
              "--weights", str(weights), "--out", str(out)])
