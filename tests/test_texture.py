"""UV-textured meshes (get3dhuman.texture): baking against analytic colour fields, chart
dilation under mip-mapping, decimation, and round trips through GLB and OBJ."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import trimesh
from inputs import generator_with_a_surface

from get3dhuman import Generator
from get3dhuman.cli import main
from get3dhuman.dataset import SETTINGS, read_manifest
from get3dhuman.mesh import MIN_FACES, MeshingOptions, TexturedMesh, check_texture_size, sample_texture
from get3dhuman.texture import bake_texture, decimate, drawn_faces, texel_points, unwrap
from get3dhuman.verify import verify


def linear_field(points: torch.Tensor) -> torch.Tensor:
    """A colour that is a linear function of position, in [0.1, 0.9] for |p| <= 1."""
    return 0.5 + 0.4 * points @ torch.tensor([[0.6, 0.0, 0.8], [0.0, 1.0, 0.0], [0.8, 0.0, -0.6]]).T


def sphere(subdivisions: int = 2, radius: float = 0.8) -> TexturedMesh:
    ball = trimesh.creation.icosphere(subdivisions, radius)
    vertices = torch.tensor(ball.vertices, dtype=torch.float32)
    return TexturedMesh.from_geometry(vertices, torch.tensor(ball.faces), linear_field(vertices))


def test_every_texel_of_a_chart_holds_the_field_at_its_surface_point():
    mesh = bake_texture(sphere(), linear_field, 64, background=0.0)
    assert mesh.uvs.min() >= 0 and mesh.uvs.max() <= 1 and mesh.texture.shape == (64, 64, 3)
    # The oracle: for each texel centre, the atlas triangle holding it, by brute force in UV space.
    size = 64
    rows, columns = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    centres = np.stack([(columns + 0.5) / size, 1 - (rows + 0.5) / size], -1).reshape(-1, 1, 2)
    corners = mesh.uvs.numpy()[mesh.faces.numpy()]  # [F, 3, 2]
    edge1, edge2 = corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]
    determinant = edge1[:, 0] * edge2[:, 1] - edge1[:, 1] * edge2[:, 0]
    offset = centres - corners[None, :, 0]  # [T, F, 2]
    w1 = (offset[..., 0] * edge2[:, 1] - offset[..., 1] * edge2[:, 0]) / determinant
    w2 = (edge1[:, 0] * offset[..., 1] - edge1[:, 1] * offset[..., 0]) / determinant
    weights = np.stack([1 - w1 - w2, w1, w2], -1)  # [T, F, 3]
    inside = (weights >= -1e-6).all(-1) & (np.abs(determinant) > 0)
    clearly = (weights >= 1e-4).all(-1).any(1)  # not on an edge, where rounding may pick either side
    face = inside.argmax(1)
    held = inside.any(1)
    points = (weights[np.arange(len(face)), face, :, None] * mesh.vertices.numpy()[mesh.faces.numpy()[face]]).sum(1)
    expected = linear_field(torch.from_numpy(points).float()).numpy()
    texels = mesh.texture.reshape(-1, 3).numpy()
    assert held.sum() > 0.25 * size * size
    np.testing.assert_allclose(texels[clearly], expected[clearly], atol=1e-5)
    assert (texels[~held & ~(weights >= -1e-4).all(-1).any(1)] >= 0).all()


@pytest.mark.parametrize("size", [256, 1024])
def test_the_texture_at_each_vertex_is_the_vertex_colour(size):
    generator = generator_with_a_surface()
    human = generator.sample(1, seed=3, resolution=32, meshing=MeshingOptions(coarse_resolution=8))[0]
    human = TexturedMesh.from_geometry(human.vertices, human.faces, linear_field(human.vertices))
    for mesh in (sphere(4), human):
        baked = bake_texture(mesh, linear_field, size)
        sampled = sample_texture(baked.texture, baked.uvs)
        error = (sampled - baked.colors).abs()
        # The corners of slivers xatlas leaves out sit at a neighbour's UV: a voxel's colour change at most.
        assert error.mean() < 0.03 * 64 / size and error.max() < 0.1, (error.mean(), error.max())
        corners = baked.uvs[baked.faces]  # the charts do not overlap: their areas add up to at most the square
        area = ((corners[:, 1] - corners[:, 0])[:, 0] * (corners[:, 2] - corners[:, 0])[:, 1]
                - (corners[:, 1] - corners[:, 0])[:, 1] * (corners[:, 2] - corners[:, 0])[:, 0]).abs() / 2
        assert area.sum() <= 1
        assert torch.equal(baked.colors, linear_field(baked.vertices))  # vertex colours kept


def helicoid(turns: float = 1.5, steps: int = 90, rings: int = 4) -> TexturedMesh:
    """A ramp winding `turns` times around the z axis, every face turned up: seen along z it
    covers itself, so one projected chart of it would overlap."""
    theta, radius = np.meshgrid(np.linspace(0, 2 * np.pi * turns, steps + 1), np.linspace(1, 2, rings + 1),
                                indexing="ij")
    vertices = torch.tensor(np.stack([radius * np.cos(theta), radius * np.sin(theta), 0.05 * theta], -1),
                            dtype=torch.float32).reshape(-1, 3)
    index = np.arange(len(vertices)).reshape(steps + 1, rings + 1)
    a, b, c, d = index[:-1, :-1], index[1:, :-1], index[1:, 1:], index[:-1, 1:]
    faces = torch.tensor(np.concatenate([np.stack([a, d, b], -1), np.stack([b, d, c], -1)]).reshape(-1, 3))
    return TexturedMesh.from_geometry(vertices, faces, linear_field(vertices))


def faces_over_texels(uvs: torch.Tensor, faces: torch.Tensor, size: int) -> np.ndarray:
    """How many of faces [F, 3] hold each texel centre of an S x S texture strictly inside
    (brute force, every centre against every face): [S * S]."""
    rows, columns = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    centres = np.stack([(columns + 0.5) / size, 1 - (rows + 0.5) / size], -1).reshape(-1, 1, 2)
    corners = uvs.double().numpy()[faces.numpy()]
    edge1, edge2 = corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]
    determinant = edge1[:, 0] * edge2[:, 1] - edge1[:, 1] * edge2[:, 0]
    counts = []
    for part in np.array_split(centres, max(1, len(centres) // 256)):
        offset = part - corners[None, :, 0]
        w1 = (offset[..., 0] * edge2[:, 1] - offset[..., 1] * edge2[:, 0]) / determinant
        w2 = (edge1[:, 0] * offset[..., 1] - edge1[:, 1] * offset[..., 0]) / determinant
        counts.append(((w1 > 1e-6) & (w2 > 1e-6) & (1 - w1 - w2 > 1e-6)).sum(1))
    return np.concatenate(counts)


@pytest.mark.parametrize("shape", ["helicoid", "sphere", "human"])
def test_unwrapped_charts_never_overlap_and_keep_one_texel_density(shape):
    if shape == "human":
        generator = generator_with_a_surface()
        mesh = generator.sample(1, seed=3, resolution=32, meshing=MeshingOptions(coarse_resolution=8))[0]
    else:
        mesh = helicoid() if shape == "helicoid" else sphere(3)
    size = 128
    vertex_map, faces, uvs, charted = unwrap(mesh.vertices, mesh.faces, size)
    assert torch.equal(vertex_map[faces], mesh.faces)  # the input's faces, in its order
    assert uvs.min() >= 0 and uvs.max() <= 1
    counts = faces_over_texels(uvs, faces[charted], size)
    assert counts.max() == 1 and (counts == 1).sum() > 0.15 * size * size
    # One scale for every chart; a face up to 60 degrees from its chart's axis is projected at
    # least half its area, and xatlas rounds small charts up to whole texels.
    corners3, corners2 = mesh.vertices.double()[mesh.faces], uvs.double()[faces]
    area = torch.linalg.cross(corners3[:, 1] - corners3[:, 0], corners3[:, 2] - corners3[:, 0]).norm(dim=1)
    edge1, edge2 = corners2[:, 1] - corners2[:, 0], corners2[:, 2] - corners2[:, 0]
    uv_area = (edge1[:, 0] * edge2[:, 1] - edge1[:, 1] * edge2[:, 0]).abs()
    measured = charted & (area > 0.01 * area.median())
    ratio = uv_area[measured] / area[measured]
    ratio = ratio / ratio.median()
    assert ratio.min() > 0.4 and ratio.max() < 2.5, (ratio.min(), ratio.max())
    if shape != "human":  # no slivers: every face is charted
        assert charted.all()
    atlas = TexturedMesh(mesh.vertices[vertex_map], faces, mesh.colors[vertex_map], mesh.normals[vertex_map], uvs,
                         torch.zeros(size, size, 3))
    assert torch.equal(drawn_faces(atlas), charted)  # what a (re)bake draws
    assert (uv_area[~charted] == 0).all()  # slivers left out own no texel


def test_dilated_charts_show_no_background_at_a_4x_mip_reduction():
    mesh = bake_texture(sphere(3), linear_field, 128, background=0.0, dilation=4)
    covered, _ = texel_points(mesh.uvs, mesh.faces, mesh.vertices, 128)
    blocks_with_charts = F.max_pool2d(covered.float()[None, None], 4)[0, 0] > 0
    background = (mesh.texture == 0).all(-1).float()  # the field is >= 0.1 everywhere on the sphere
    blocks_with_background = F.max_pool2d(background[None, None], 4)[0, 0] > 0
    assert blocks_with_charts.any() and not (blocks_with_charts & blocks_with_background).any()
    undilated = bake_texture(sphere(3), linear_field, 128, background=0.0, dilation=0)
    undilated_background = F.max_pool2d((undilated.texture == 0).all(-1).float()[None, None], 4)[0, 0] > 0
    assert (blocks_with_charts & undilated_background).any()  # what dilation is for


def test_decimation_honours_the_face_count_and_keeps_closed_meshes_closed_and_borders():
    human = Generator.from_pretrained().sample(1, seed=3, resolution=64)[0]  # a closed human
    for mesh in (sphere(4), human):
        assert trimesh.Trimesh(mesh.vertices.numpy(), mesh.faces.numpy(), process=False).is_watertight
        fewer = decimate(mesh, 600)
        assert 500 <= len(fewer.faces) <= 600
        assert trimesh.Trimesh(fewer.vertices.numpy(), fewer.faces.numpy(), process=False).is_watertight
    assert decimate(human, 10**7) is human
    fewer = decimate(sphere(4), 600, linear_field)  # colours of the field at the new vertices
    assert torch.equal(fewer.colors, linear_field(fewer.vertices).clamp(0, 1))
    nearest = decimate(sphere(4), 600)  # or of the nearest original vertex: about the field's there
    assert not torch.equal(nearest.colors, fewer.colors) and (nearest.colors - fewer.colors).abs().max() < 0.1
    ball = sphere(4)
    upper = ball.faces[(ball.vertices[ball.faces][:, :, 1] > 0).all(1)]  # an open cap
    cap = trimesh.Trimesh(ball.vertices.numpy(), upper.numpy())
    border = {tuple(np.round(v, 6)) for v in cap.vertices[np.unique(cap.edges[trimesh.grouping.group_rows(
        cap.edges_sorted, require_count=1)])]}
    fewer = decimate(TexturedMesh.from_geometry(torch.tensor(cap.vertices, dtype=torch.float32),
                                                torch.tensor(cap.faces), torch.zeros(len(cap.vertices), 3)), 150)
    result = trimesh.Trimesh(fewer.vertices.numpy(), fewer.faces.numpy(), process=False)
    kept = {tuple(np.round(v, 6)) for v in result.vertices[np.unique(result.edges[trimesh.grouping.group_rows(
        result.edges_sorted, require_count=1)])]}
    assert kept == border


@pytest.mark.parametrize("file_type", ["glb", "obj"])
def test_textured_meshes_round_trip_through_trimesh(tmp_path, file_type):
    mesh = bake_texture(sphere(3), linear_field, 128)
    path = tmp_path / f"ball.{file_type}"
    mesh.export(path)
    loaded = trimesh.load(path, force="mesh", process=False)
    assert isinstance(loaded.visual, trimesh.visual.TextureVisuals)
    assert loaded.visual.uv.min() >= 0 and loaded.visual.uv.max() <= 1
    back = TexturedMesh.load(path)
    assert back.texture.shape == mesh.texture.shape
    assert (back.texture - mesh.texture).abs().max() <= 0.5 / 255 + 1e-6
    assert (back.uvs - mesh.uvs).abs().max() < 1e-6 and torch.equal(back.faces, mesh.faces)
    assert (back.colors - mesh.colors).abs().mean() < 0.03  # the texture at the vertices
    if file_type == "obj":
        assert sorted(p.name for p in tmp_path.iterdir()) == ["ball-texture.png", "ball.mtl", "ball.obj"]
    mesh.export(tmp_path / "ball.ply")  # PLY keeps the vertex colours
    assert (TexturedMesh.load(tmp_path / "ball.ply").colors - mesh.colors).abs().max() <= 0.5 / 255 + 1e-6


def test_bad_sizes_are_named():
    for size in (1000, 32, 16384):
        with pytest.raises(ValueError, match=f"texture_size must be a power of two from 64 to 8192, got {size}"):
            check_texture_size(size)
    with pytest.raises(ValueError, match=f"faces must be an int >= {MIN_FACES}, got 10"):
        decimate(sphere(), 10)


def test_generated_meshes_are_decimated_and_baked_from_the_texture_decoder():
    generator = generator_with_a_surface()
    z = generator.latents([3])
    plain = generator.extract_mesh(*z, 32, meshing=MeshingOptions(coarse_resolution=8))[0]
    assert len(plain.faces) > 3000
    meshing = MeshingOptions(coarse_resolution=8, faces=3000, texture_size=256)
    mesh = generator.extract_mesh(*z, 32, meshing=meshing)[0]
    assert len(mesh.faces) <= 3000 and mesh.texture.shape == (256, 256, 3)
    with torch.no_grad():
        shape, texture = generator(*z)
        decoded = generator.query_color(shape.volume, texture, mesh.vertices[None], generator.calibration[None])[0]
    assert torch.allclose(mesh.colors, decoded.clamp(0, 1), atol=1e-6)  # the decoder at the new vertices
    assert (sample_texture(mesh.texture, mesh.uvs) - decoded).abs().mean() < 0.03


def test_the_command_line_writes_and_lists_textured_samples(tmp_path, capsys):
    weights = tmp_path / "weights.safetensors"
    generator_with_a_surface().save_pretrained(weights)
    out = tmp_path / "out"
    command = ["sample", "--num", "2", "--resolution", "32", "--weights", str(weights), "--out", str(out), "--quiet",
               "--faces", "3000", "--texture-size", "128", "--format", "obj"]
    assert main(command) == 0
    records = read_manifest(str(out))
    textured = [record for record in records if record["mesh"]]
    assert textured and all(record["material"] == [record["mesh"][:-4] + ".mtl", record["mesh"][:-4] + "-texture.png"]
                            for record in textured)
    assert verify(out) == [] and all(record["faces"] <= 3000 for record in records)
    assert json.loads((out / SETTINGS).read_text())["extract_options"] == {"faces": 3000, "texture_size": 128}
    loaded = TexturedMesh.load(out / textured[0]["mesh"])
    assert loaded.texture.shape == (128, 128, 3)
    with pytest.raises(SystemExit, match=r"other settings \(extract_options\)"):
        main([*command[:-3], "256", "--format", "obj"])
    with pytest.raises(SystemExit, match="--texture-size needs --format glb or obj"):
        main([*command[:-2], "--format", "ply"])
    for flag, value in (("--texture-size", "100"), ("--texture-size", "32"), ("--faces", "10")):
        with pytest.raises(SystemExit):
            main(["sample", "--num", "1", "--out", str(out), flag, value])
        assert f"argument {flag}: must be" in capsys.readouterr().err
