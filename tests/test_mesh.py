"""TexturedMesh, the extraction pipeline, and Generator.extract_mesh / sample."""

import numpy as np
import pytest
import torch
import trimesh
from inputs import assert_closed_oriented, generator_with_a_surface, humans, signed_volume

import get3dhuman
from get3dhuman.mesh import ExtractionTimings, MeshingOptions, TexturedMesh, extract_textured_meshes, vertex_normals
from get3dhuman.synthetic import human_color, human_sdf

COARSE_8, COARSE_16 = MeshingOptions(coarse_resolution=8), MeshingOptions(coarse_resolution=16)


def test_pipeline_on_analytic_humans():
    params = humans(2, seed=5)
    timings = ExtractionTimings()
    meshes = extract_textured_meshes(lambda p: human_sdf(params, p), lambda p: human_color(params, p), 2, 64,
                                     level=0.0, inside_is_above=False, meshing=COARSE_16, timings=timings)
    for b, mesh in enumerate(meshes):
        assert_closed_oriented(mesh.vertices, mesh.faces)
        assert signed_volume(mesh.vertices, mesh.faces) > 0
        torch.testing.assert_close(mesh.colors, human_color(params[b:b + 1], mesh.vertices[None])[0].clamp(0, 1))
        # Outward normals: stepping along them increases the signed distance.
        step = human_sdf(params[b:b + 1], (mesh.vertices + 0.01 * mesh.normals)[None])[0]
        assert (step > 0).float().mean() > 0.97
    assert timings.queries > 0 and timings.marching_cubes > 0 and len(timings.evaluated_fraction) == 2


def test_occupancy_orientation_is_outward():
    occupancy = lambda p: torch.sigmoid(-20 * (p.norm(dim=-1) - 0.5))  # noqa: E731
    mesh = extract_textured_meshes(occupancy, None, 1, 32, meshing=COARSE_8)[0]
    assert signed_volume(mesh.vertices, mesh.faces) == pytest.approx(4 / 3 * np.pi * 0.125, rel=0.05)
    assert torch.equal(mesh.colors, torch.full_like(mesh.vertices, 0.5))


def test_vertex_normals_of_a_tetrahedron():
    vertices = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]])
    faces = torch.tensor([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
    normals = vertex_normals(vertices, faces)
    torch.testing.assert_close(normals[0], torch.full((3,), -(3 ** -0.5)))  # three unit faces, -x, -y, -z
    assert (normals * (vertices - 0.25)).sum(1).gt(0).all()  # away from the centroid
    torch.testing.assert_close(normals.norm(dim=1), torch.ones(4))


@pytest.mark.parametrize("suffix", ["ply", "obj", "glb"])
def test_export_round_trip(tmp_path, suffix):
    params = humans(1, seed=6)
    mesh = extract_textured_meshes(lambda p: human_sdf(params, p), lambda p: human_color(params, p), 1, 32,
                                   level=0.0, inside_is_above=False, meshing=COARSE_8)[0]
    path = tmp_path / f"human.{suffix}"
    mesh.export(path)
    loaded = trimesh.load(path, force="mesh", process=False)
    assert len(loaded.faces) == len(mesh.faces)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no partial file left
    if suffix == "ply":
        np.testing.assert_allclose(loaded.vertices, mesh.vertices.numpy(), atol=1e-6)
        colors = loaded.visual.vertex_colors[:, :3]
        np.testing.assert_array_equal(colors, (mesh.colors.numpy() * 255).round().astype(np.uint8))
    with pytest.raises(ValueError, match="suffix"):
        mesh.export(tmp_path / "no_suffix")
    # TexturedMesh.load reads it back: the same vertices (OBJ is text) and faces, 8-bit colours,
    # the normals of the geometry.
    read = TexturedMesh.load(path)
    torch.testing.assert_close(read.vertices, mesh.vertices, atol=1e-6 if suffix == "obj" else 0, rtol=0)
    assert torch.equal(read.faces, mesh.faces)
    torch.testing.assert_close(read.colors, (mesh.colors * 255).round() / 255, atol=1e-6, rtol=0)
    torch.testing.assert_close(read.normals, mesh.normals, atol=1e-5, rtol=0)
    trimesh.creation.box().export(tmp_path / "box.stl")  # no colours: grey, as meshes of no texture
    box = TexturedMesh.load(tmp_path / "box.stl")
    assert box.faces.shape == (12, 3) and bool((box.colors == 0.5).all())
    with pytest.raises(FileNotFoundError, match="path must be a mesh file"):
        TexturedMesh.load(tmp_path / "missing.ply")
    (tmp_path / "broken.ply").write_bytes(b"ply\nnot a header")
    with pytest.raises(ValueError, match=r"broken.ply is not a mesh file trimesh reads \(IndexError"):
        TexturedMesh.load(tmp_path / "broken.ply")


def test_export_formats_and_folders(tmp_path):
    params = humans(1, seed=6)
    mesh = extract_textured_meshes(lambda p: human_sdf(params, p), lambda p: human_color(params, p), 1, 16,
                                   level=0.0, inside_is_above=False, meshing=COARSE_8)[0]
    for name in ("a/b/human.off", "a/b/human.STL", "a/human.data"):
        file_type = None if name.endswith(("off", "STL")) else "ply"
        mesh.export(tmp_path / name, file_type)
        read = TexturedMesh.load(tmp_path / name, file_type)
        # OFF keeps the welded vertices; STL stores each triangle's corners apart
        corners = 3 * len(mesh.faces) if name.endswith("STL") else len(mesh.vertices)
        assert read.faces.shape == mesh.faces.shape and len(read.vertices) == corners
        torch.testing.assert_close(read.vertices[read.faces].sum(1).sort(0).values,
                                   mesh.vertices[mesh.faces].sum(1).sort(0).values, atol=1e-5, rtol=0)
    for name, file_type in (("human.xyz", None), ("human.gltf", None), ("human.ply", "npz")):
        with pytest.raises(ValueError, match=r"or file_type be one of them, got .*\(file_type '(xyz|gltf|npz)'\)"):
            mesh.export(tmp_path / name, file_type)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "b", "human.STL", "human.data", "human.off"]


def test_empty_mesh_exports(tmp_path):
    mesh = extract_textured_meshes(lambda p: p.norm(dim=-1) + 2, None, 1, 16, meshing=COARSE_8)[0]
    assert mesh.is_empty and mesh.vertices.shape == (0, 3)
    assert len(mesh.to_trimesh().faces) == 0


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_a_seeds_mesh_is_the_same_bits_whatever_its_batch(preset):
    generator = generator_with_a_surface(preset=preset)
    together = generator.sample(4, seed=10, resolution=32, meshing=COARSE_8, batch_size=4)
    # Batched matrix products round differently with the batch (on this project's CPU the tiny
    # case's vertices differed with the networks alone run row by row): extract_mesh meshes row by row.
    apart = generator.sample(3, seed=11, resolution=32, meshing=COARSE_8, batch_size=2)  # 11-12, then 13 alone
    assert sum(not m.is_empty for m in together) >= 2 and len({len(m.vertices) for m in together}) > 1
    for a, b in zip(together[1:], apart):
        for name in ("vertices", "faces", "colors", "normals"):
            assert torch.equal(getattr(a, name), getattr(b, name)), name


def _bfloat16_sample(generator, way: str) -> list:
    """The default weights' meshes of seeds 0-1 at 64^3 with bfloat16 decoder products only
    ('products'), the whole model cast to bfloat16 ('weights'), or under autocast."""
    if way == "products":
        return generator.sample(2, seed=0, resolution=64, meshing=MeshingOptions(compute_dtype=torch.bfloat16))
    if way == "weights":
        return generator.sample(2, seed=0, resolution=64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return generator.sample(2, seed=0, resolution=64)


@pytest.mark.parametrize("way", ["products", "weights", "autocast"])
def test_bfloat16_gives_nearly_the_float32_meshes_and_the_same_ones_every_run(way):
    # The default weights: a trained field crosses its level cleanly, where a random one's noise
    # lets bf16 rounding add or drop whole specks.
    generator = get3dhuman.Generator.from_pretrained()
    wide = generator.sample(2, seed=0, resolution=64)
    if way == "weights":
        generator = generator.to(torch.bfloat16)
    narrow, again = _bfloat16_sample(generator, way), _bfloat16_sample(generator, way)
    lower, upper = generator.world_bounds()
    voxel = max(b - a for a, b in zip(lower, upper)) / 64
    for a, b, c in zip(wide, narrow, again):
        assert not a.is_empty and b.vertices.dtype == b.colors.dtype == torch.float32
        assert not torch.equal(a.vertices, b.vertices)  # bf16 rounding took effect
        for name in ("vertices", "faces", "colors", "normals"):
            assert torch.equal(getattr(b, name), getattr(c, name)), name
        assert abs(len(b.faces) - len(a.faces)) <= 0.01 * len(a.faces)
        distances = torch.cdist(b.vertices, a.vertices)
        nearest = distances.min(1)
        # the same surface both ways, up to about a voxel where rounding tips a corner's sign
        assert max(nearest.values.max(), distances.min(0).values.max()) <= 1.5 * voxel
        assert (b.colors - a.colors[nearest.indices]).abs().mean() <= 0.005


def test_a_bfloat16_model_meshes_in_float32_geometry():
    # Its camera stays float32, and its volumes are sampled as float32 at float32 points, the
    # decoders' products in bfloat16: the meshes of a float32 model holding the same (rounded)
    # weights from the same volumes cast up, with bfloat16 products, bit for bit.
    wide = get3dhuman.Generator.from_pretrained()
    narrow = get3dhuman.Generator.from_pretrained().to(torch.bfloat16)
    assert narrow.calibration.dtype == torch.float32 and torch.equal(narrow.calibration, wide.calibration)
    assert get3dhuman.Generator("tiny").double().calibration.dtype == torch.float32
    rounded = wide.to(torch.bfloat16).float()  # float32 weights holding bfloat16 values
    z_shape, z_texture = narrow.latents([3, 4])
    assert z_shape.dtype == torch.bfloat16
    meshes = narrow.extract_mesh(z_shape, z_texture, 48)
    with torch.no_grad():
        volumes = [narrow(z_shape[i : i + 1], z_texture[i : i + 1]) for i in range(2)]
        points = torch.rand(1, 100, 3) * 2 - 1
        occupancy = narrow.query_occupancy(volumes[0][0].volume, points)
        assert occupancy.dtype == torch.float32
        assert torch.equal(occupancy, rounded.query_occupancy(volumes[0][0].volume.float(), points,
                                                              compute_dtype=torch.bfloat16))
    for mesh, (shape, texture) in zip(meshes, volumes):
        expected = rounded.meshes_from_volumes(shape.volume.float(), texture.float(), 48,
                                               meshing=MeshingOptions(compute_dtype=torch.bfloat16))[0]
        assert not mesh.is_empty
        for name in ("vertices", "faces", "colors", "normals"):
            assert torch.equal(getattr(mesh, name), getattr(expected, name)), name


def test_generator_sample_is_seeded_per_sample():
    generator = generator_with_a_surface()
    together = generator.sample(3, seed=10, resolution=32, meshing=COARSE_8, batch_size=3)
    assert any(not m.is_empty for m in together)
    again = generator.sample(1, seed=10, resolution=32, meshing=COARSE_8)[0]
    assert torch.equal(again.vertices, generator.sample(1, seed=10, resolution=32, meshing=COARSE_8)[0].vertices)
    for mesh in together:
        if not mesh.is_empty:
            assert bool(((mesh.colors >= 0) & (mesh.colors <= 1)).all())
            assert mesh.vertices.abs().max() <= 1


def test_generator_extract_mesh_checks_latents_and_keeps_mode():
    generator = generator_with_a_surface()
    generator.train()
    with pytest.raises(ValueError, match=r"z_shape must be \[B, \d+\], got \(2, 3\)"):
        generator.extract_mesh(torch.randn(2, 3), torch.randn(2, 3))
    z = torch.randn(1, generator.config.z_dim)
    timings = ExtractionTimings()
    generator.extract_mesh(z, z, 32, meshing=COARSE_8, timings=timings)
    assert generator.training and timings.networks > 0
    with pytest.raises(ValueError, match="num"):
        generator.sample(-1)


def test_generator_meshes_are_in_world_coordinates():
    """The same field seen through the identity camera and through the front camera (y flipped):
    the meshes are mirror images, both oriented outward."""
    generator = generator_with_a_surface()
    z = torch.randn(1, generator.config.z_dim, generator=torch.Generator().manual_seed(2))
    front = generator.extract_mesh(z, z, 24, meshing=MeshingOptions(coarse_resolution=6))[0]
    generator.calibration = torch.eye(4)
    ndc = generator.extract_mesh(z, z, 24, meshing=MeshingOptions(coarse_resolution=6))[0]
    assert not front.is_empty and front.faces.shape == ndc.faces.shape
    mirrored = ndc.vertices * torch.tensor([1.0, -1.0, 1.0])
    distance = torch.cdist(front.vertices, mirrored, compute_mode="donot_use_mm_for_euclid_dist")
    assert distance.min(1).values.max() < 1e-4
    for mesh in (front, ndc):
        assert mesh.to_trimesh().volume > 0  # outward-facing: positive signed volume


def test_textured_mesh_is_public():
    assert get3dhuman.TexturedMesh is TexturedMesh


def test_reconstructor_meshes_lie_on_its_occupancy_level_with_its_colours():
    torch.manual_seed(0)
    reconstructor = get3dhuman.nn.Reconstructor("tiny")
    side = reconstructor.config.backbone_resolution
    image = torch.rand(2, 3, side, side) * 2 - 1
    with torch.no_grad():
        shape_volume, texture_volume = reconstructor(image)
        probe = reconstructor.query_occupancy(shape_volume, torch.rand(2, 4096, 3) * 1.6 - 0.8, reconstructor.calibration[None].expand(2, 4, 4))
        reconstructor.mlp_shape.filters[-1].bias -= torch.logit(probe.median())  # a surface inside the box
    reconstructor.train()
    meshes = reconstructor.extract_mesh(image, 32, meshing=COARSE_8)
    assert reconstructor.training
    for b, mesh in enumerate(meshes):
        assert not mesh.is_empty
        calib = reconstructor.calibration[None]
        with torch.no_grad():
            occupancy = reconstructor.query_occupancy(shape_volume[b:b + 1], mesh.vertices[None], calib)[0]
            colors = reconstructor.query_color(shape_volume[b:b + 1], texture_volume[b:b + 1], mesh.vertices[None], calib)[0]
        assert (occupancy - 0.5).abs().max() < 0.005  # linear interpolation along cell edges of a smooth field
        torch.testing.assert_close(mesh.colors, colors.clamp(0, 1), atol=1e-5, rtol=0)
    for grey, mesh in zip(reconstructor.extract_mesh(image, 32, meshing=COARSE_8, color=False), meshes):
        assert torch.equal(grey.vertices, mesh.vertices) and bool((grey.colors == 0.5).all())


def test_meshing_options_are_checked_and_recorded_as_plain_values():
    options = MeshingOptions(coarse_resolution=np.int64(8), band=np.float32(0.5), compute_dtype=torch.bfloat16)
    assert type(options.coarse_resolution) is int and type(options.band) is float
    assert options.settings() == {"coarse_resolution": 8, "band": 0.5, "compute_dtype": "torch.bfloat16"}
    assert options.settings(torch.bfloat16) == {"coarse_resolution": 8, "band": 0.5}  # the weights' dtype: the default
    assert MeshingOptions().settings() == {}
    for bad, message in ((dict(coarse_resolution=0), "coarse_resolution must be an int >= 1"),
                         (dict(band=float("nan")), "band must be a non-negative float"),
                         (dict(chunk=2.5), "chunk must be an int"),
                         (dict(compute_dtype=torch.int32), "compute_dtype must be None or a floating torch.dtype")):
        with pytest.raises(ValueError, match=message):
            MeshingOptions(**bad)


def test_placed_meshes_stand_on_the_ground_and_turn_z_up(tmp_path):
    ball = trimesh.creation.icosphere(2, 0.5)
    vertices = torch.tensor(ball.vertices, dtype=torch.float32) + torch.tensor([0.3, 0.7, -0.2])
    mesh = TexturedMesh.from_geometry(vertices, torch.tensor(ball.faces), torch.rand(len(vertices), 3))
    grounded = mesh.placed(ground=True)
    lower, upper = grounded.vertices.min(0).values, grounded.vertices.max(0).values
    assert float(lower[1]) == 0 and torch.allclose((lower + upper)[[0, 2]], torch.zeros(2), atol=1e-6)
    turned = mesh.placed(ground=True, up="z")
    assert torch.equal(turned.vertices, grounded.vertices[:, [0, 2, 1]] * torch.tensor([1.0, -1.0, 1.0]))
    assert float(turned.vertices[:, 2].min()) == 0 and torch.equal(turned.faces, mesh.faces)
    assert torch.allclose(turned.normals, vertex_normals(turned.vertices, turned.faces), atol=1e-6)  # still outward
    mesh.export(tmp_path / "ball.ply", ground=True, up="z")
    assert torch.allclose(TexturedMesh.load(tmp_path / "ball.ply").vertices, turned.vertices)
    assert torch.equal(mesh.placed().vertices, mesh.vertices)
    with pytest.raises(ValueError, match="up must be one of y, z, got 'x'"):
        mesh.placed(up="x")
