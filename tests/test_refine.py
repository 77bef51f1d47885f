"""Stage 4 (Refiner training) and texture refinement at inference: back-projection, views, losses."""

import dataclasses
import json

import pytest
import torch
from inputs import generator_with_a_surface, resumed_equals_straight

from get3dhuman import losses
from get3dhuman.cli import main
from get3dhuman.dataset import read_manifest, write_samples
from get3dhuman.mesh import MeshingOptions, TexturedMesh, back_project_colors, sample_texture
from get3dhuman.nn import Generator, Refiner
from get3dhuman.nn import refiner as refiner_module
from get3dhuman.nn.generator import OFFICIAL_CALIBRATION
from get3dhuman.nn.pretrained import write_pretrained
from get3dhuman.ops import marching_cubes
from get3dhuman.refine import (
    colors_from_views,
    front_renders,
    front_view_errors,
    refine_meshes,
    refined_views,
    render_textured,
    view_calibration,
    view_errors,
)
from get3dhuman.render import orbit_calibration, ray_march, shade, shading_factor, silhouettes
from get3dhuman.synthetic.preview import stand_in_images
from get3dhuman.texture import drawn_faces, texel_points
from get3dhuman.train import (
    PRIOR_PRESETS,
    RECONSTRUCTOR_PRESETS,
    induce_priors,
    train_reconstructor,
)
from get3dhuman.train.checkpoint import save_checkpoint
from get3dhuman.train.prior import PriorCache
from get3dhuman.train.refiner import (
    PRESETS,
    RefinerTrainer,
    RefinerTrainingConfig,
    load_refiner,
    train_refiner,
)
from get3dhuman.verify import verify

TINY = PRESETS["tiny"]
MESH_RESOLUTION = 32  # of the meshes the tiny generators' views render


def sphere_mesh(radius=0.6, n=33):
    coords = torch.linspace(-1, 1, n)
    grid = torch.stack(torch.meshgrid(coords, coords, coords, indexing="ij"), -1)
    vertices, faces = marching_cubes(grid.norm(dim=-1) - radius, 0.0, spacing=2 / (n - 1), origin=-1.0)
    return TexturedMesh.from_geometry(vertices, faces, torch.zeros_like(vertices))


def test_back_projection_colours_what_each_view_sees():
    mesh = sphere_mesh()
    calib = orbit_calibration(torch.tensor([0.0, 180.0]))
    maps = ray_march(lambda p: p.norm(dim=-1) - 0.6, calib, 65, samples=64)
    images = torch.zeros(2, 65, 65, 3)
    images[0, ..., 0] = 1  # the front view is red, the back view blue
    images[1, ..., 2] = 1
    colored = back_project_colors(mesh, images, calib, maps.depth, maps.mask)
    z = mesh.vertices[:, 2]  # grazing vertices (|z| small) may fail the depth test of both views
    assert torch.equal(colored.colors[z > 0.25], torch.tensor([1.0, 0, 0]).expand(int((z > 0.25).sum()), 3))
    assert torch.equal(colored.colors[z < -0.25], torch.tensor([0, 0, 1.0]).expand(int((z < -0.25).sum()), 3))
    # A view of the front only leaves the back with its own colour.
    front = back_project_colors(mesh, images[:1], calib[:1], maps.depth[:1], maps.mask[:1])
    assert torch.equal(front.colors[z < -0.1], mesh.colors[z < -0.1])
    with pytest.raises(ValueError, match="images must be"):
        back_project_colors(mesh, images, calib[:1], maps.depth, maps.mask)


def test_back_projection_removes_the_views_shading():
    mesh = sphere_mesh()
    albedo = torch.tensor([0.8, 0.5, 0.2])
    calib = orbit_calibration(torch.tensor([0.0]))
    rendering = ray_march(lambda p: p.norm(dim=-1) - 0.6, calib, 65, lambda p: albedo.expand(*p.shape[:-1], 3), samples=64)
    views = [(shade(rendering, background=0.0), calib, rendering)]  # a sphere of one colour, lit from LIGHT
    front = mesh.vertices[:, 2] > 0.25
    unshaded = colors_from_views([mesh], views)[0].colors[front]
    assert torch.allclose(unshaded, albedo.expand_as(unshaded), atol=1e-5)
    baked = colors_from_views([mesh], views, remove_shading=False)[0].colors[front]
    assert (baked - albedo).abs().max() > 0.2 and bool((baked <= albedo + 1e-6).all())  # the light's shadows stay


def test_an_identity_refiner_gives_back_the_generators_own_colours():
    generator = generator_with_a_surface(seen_from_the_front=True)
    z_shape, z_texture = generator.latents([10, 11])
    meshes = generator.extract_mesh(z_shape, z_texture, resolution=32, meshing=MeshingOptions(coarse_resolution=8))
    # Zero heads: each returns the render, shaded or (a Refiner of albedo) unshaded.
    identity = {albedo: Refiner(base_channels=4, depth=2, residual=True, albedo=albedo) for albedo in (False, True)}
    views = {albedo: refined_views(generator, refiner, meshes) for albedo, refiner in identity.items()}
    for (shaded, _, rendering), (unshaded, _, same) in zip(views[False], views[True]):
        assert torch.equal(rendering.mask, same.mask)
        hit = rendering.mask > 0.5
        assert torch.allclose(shaded[hit], (unshaded * shading_factor(rendering).unsqueeze(-1))[hit], atol=1e-5)
    colored = {"shading removed": refine_meshes(generator, identity[False], meshes),
               "albedo": refine_meshes(generator, identity[True], meshes),
               "light baked in": colors_from_views(meshes, views[False], remove_shading=False)}
    for name, refined_meshes in colored.items():
        for mesh, refined in zip(meshes, refined_meshes):
            difference = (refined.colors - mesh.colors).abs()
            seen = difference.amax(1) > 1e-6  # vertices a view's depth test passed (half or more)
            assert seen.float().mean() > 0.4, name
            if name == "light baked in":
                assert difference.mean() > 0.05 and difference.max() > 0.2
            else:  # the views' colours are the decoder's, up to pixel interpolation
                assert difference.mean() < 1e-3 and difference.max() < 0.01, name


def test_refined_views_recolour_a_textured_meshs_texels_as_its_vertices(tmp_path):
    generator = generator_with_a_surface(seen_from_the_front=True)
    z_shape, z_texture = generator.latents([10])
    meshing = MeshingOptions(coarse_resolution=8, faces=2000, texture_size=128)
    mesh = generator.extract_mesh(z_shape, z_texture, resolution=32, meshing=meshing)[0]
    darker = Refiner(base_channels=4, depth=2, residual=True, albedo=True)
    with torch.no_grad():  # the render minus 0.5 in [-1, 1]: each seen texel a quarter darker in [0, 1]
        darker.head.bias.fill_(-0.5)
    refined = refine_meshes(generator, darker, [mesh])[0]
    assert torch.equal(refined.uvs, mesh.uvs) and torch.equal(refined.faces, mesh.faces)
    covered, _ = texel_points(mesh.uvs, mesh.faces[drawn_faces(mesh)], mesh.vertices, 128)
    before, after = mesh.texture[covered], refined.texture[covered]
    seen = (after - before).abs().amax(1) > 1e-3
    assert seen.float().mean() > 0.3  # about the half of the surface the front and back views see squarely
    bright = seen & (before.amin(1) > 0.3)  # not clamped at 0
    assert ((before - after)[bright] - 0.25).abs().median() < 0.02
    assert (after[~seen] - before[~seen]).abs().max() <= 1e-3  # texels no view sees keep their colour
    # Texels and vertices, refined alike: the texture at each vertex is its refined colour.
    assert (sample_texture(refined.texture, refined.uvs) - refined.colors).abs().mean() < 0.03
    out = tmp_path / "humans"  # and so a dataset's files
    write_samples(generator, str(out), 1, seed=10, resolution=32, file_type="obj", refiner=darker, progress=False,
                  meshing=meshing)
    record = read_manifest(str(out))[0]
    assert record["material"] and verify(out) == []
    assert (TexturedMesh.load(out / record["mesh"]).texture - refined.texture).abs().max() <= 0.5 / 255 + 1e-6


def test_stage_4s_mesh_renders_show_what_the_field_ray_marched_shows():
    generator = generator_with_a_surface(seen_from_the_front=True)
    z = torch.randn(2, generator.config.z_dim, generator=torch.Generator().manual_seed(5))
    calib = generator.calibration.expand(2, 4, 4)
    for lit, tolerance in ((False, 1e-3), (True, 0.03)):  # shading: the mesh's normals against the field's gradient
        image, mask = front_renders(generator, z, MESH_RESOLUTION, lit)
        with torch.no_grad():
            shape, texture = generator(z, z)
            field, rendering = render_textured(generator, shape.volume, texture, calib,
                                               generator.config.backbone_resolution, samples=128, lit=lit)
        hit = rendering.mask > 0.5
        assert 0.2 < hit.float().mean() < 0.8 and (mask == hit).float().mean() > 0.99
        assert float((image - field)[mask & hit].abs().mean()) < tolerance, lit


def test_a_meshs_refined_colours_are_the_same_bits_whatever_its_batch():
    generator = generator_with_a_surface(seen_from_the_front=True)
    meshes = generator.sample(3, seed=10, resolution=MESH_RESOLUTION, meshing=MeshingOptions(coarse_resolution=8),
                              batch_size=3)
    torch.manual_seed(3)
    refiner = Refiner(base_channels=4, depth=2).eval()  # random weights: every colour changes
    together = refine_meshes(generator, refiner, meshes)
    for mesh, refined in zip(meshes, together):
        alone = refine_meshes(generator, refiner, [mesh])[0]
        assert torch.equal(refined.colors, alone.colors) and not torch.equal(refined.colors, mesh.colors)


class _Painter(torch.nn.Module):
    """A 'refiner' that paints the stand-in images of latents z (unshaded with `albedo`) whatever
    it is shown, one image a call (as refine.refine_images calls it), in turn."""

    def __init__(self, z, albedo=False):
        super().__init__()
        self.albedo, self.calls = albedo, 0
        side = Generator("tiny").config.backbone_resolution
        self.target = stand_in_images(z, side, lit=not albedo).permute(0, 3, 1, 2) * 2 - 1

    def forward(self, image):
        assert image.shape == (1, *self.target.shape[1:])
        self.calls += 1
        return self.target[(self.calls - 1) % len(self.target)][None]


def test_front_view_errors_against_a_perfect_and_an_identity_refiner():
    generator = generator_with_a_surface(seen_from_the_front=True)
    z = torch.randn(2, generator.config.z_dim, generator=torch.Generator().manual_seed(5))
    for albedo in (False, True):  # a Refiner of albedo is scored on unshaded renders and targets
        perfect = front_view_errors(generator, _Painter(z, albedo), z, MESH_RESOLUTION)
        assert perfect["refined_l1"] < 1e-6 and perfect["refined_overlap_l1"] < 1e-6  # ([-1, 1] -> [0, 1] rounding)
        assert perfect["rendered_l1"] > 0.01 and perfect["rendered_overlap_l1"] > 0.01
        identity = Refiner(base_channels=4, depth=2, residual=True, albedo=albedo)  # zero head: identity
        rendered = {key: value for key, value in perfect.items() if key.startswith("rendered")}
        same = {**rendered, **{key.replace("rendered", "refined"): value for key, value in rendered.items()}}
        assert front_view_errors(generator, identity, z, MESH_RESOLUTION) == pytest.approx(same, rel=1e-6)  # [0, 1] <-> [-1, 1]
    assert front_view_errors(generator, _Painter(z, albedo=True), z, MESH_RESOLUTION) != \
        front_view_errors(generator, _Painter(z), z, MESH_RESOLUTION)


def test_view_calibration_turns_about_the_centre_of_the_view():
    generator = Generator("tiny")
    assert torch.allclose(view_calibration(generator, 180.0), orbit_calibration(torch.tensor([180.0]))[0], atol=1e-6)
    generator.calibration = OFFICIAL_CALIBRATION.clone()
    back = view_calibration(generator, 180.0)
    centre = torch.tensor([0.0, 0.88134766 / 0.00927734, 0.0, 1.0])  # the world point at NDC (0, 0, 0)
    assert torch.allclose(back @ centre, torch.tensor([0.0, 0.0, 0.0, 1.0]), atol=1e-4)
    point = torch.tensor([10.0, 100.0, 20.0, 1.0])  # seen from behind: x and z mirrored about the centre
    front_ndc, back_ndc = OFFICIAL_CALIBRATION @ point, back @ point
    assert torch.allclose(back_ndc[[0, 2]], -front_ndc[[0, 2]], atol=1e-5) and torch.allclose(back_ndc[1], front_ndc[1])


def test_view_calibration_raises_the_camera_about_the_centre_of_the_view():
    generator = Generator("tiny")
    generator.calibration = OFFICIAL_CALIBRATION.clone()  # y down the image, z towards the camera
    scale, centre = 0.00927734, torch.tensor([0.0, 0.88134766 / 0.00927734, 0.0, 1.0])
    top, front = centre + torch.tensor([0.0, 10.0, 0.0, 0.0]), centre + torch.tensor([0.0, 0.0, 10.0, 0.0])
    for angle in (0.0, 180.0):
        for elevation in (30.0, 90.0, -45.0):
            raised = view_calibration(generator, angle, elevation).double()
            assert torch.allclose(raised @ centre.double(), torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64),
                                  atol=1e-4)
            radians = torch.tensor(elevation, dtype=torch.float64).deg2rad()
            # From above, the top of the head comes nearer and the front of the body moves down the image.
            expected_top = 10 * scale * torch.stack([torch.tensor(0.0, dtype=torch.float64), -radians.cos(),
                                                     radians.sin()])
            assert torch.allclose((raised @ top.double())[:3], expected_top, atol=1e-4)
            facing = 1.0 if angle == 0 else -1.0  # seen from behind, the front faces away
            expected_front = facing * 10 * scale * torch.stack([torch.tensor(0.0, dtype=torch.float64), radians.sin(),
                                                                radians.cos()])
            assert torch.allclose((raised @ front.double())[:3], expected_front, atol=1e-4)


def test_refinement_losses_against_hand_computed_values():
    real = [[torch.ones(1, 2, 2), torch.full((1, 1, 1), 1.0)]]
    fake = [[torch.zeros(1, 2, 2), torch.full((1, 1, 1), 0.5)]]
    assert losses.lsgan_discriminator_loss(real, fake).item() == pytest.approx(0.25)
    assert losses.lsgan_generator_loss(fake).item() == pytest.approx(0.25)
    assert losses.feature_matching_loss(real, fake).item() == pytest.approx(1.0)
    image = torch.zeros(1, 1, 4, 4)
    target = torch.ones(1, 1, 4, 4)  # constant offset: no gradient term at any level
    assert losses.pyramid_l1_loss(image, target).item() == pytest.approx(1.0)


@pytest.fixture(scope="module")
def prior(tmp_path_factory):
    root = tmp_path_factory.mktemp("refiner")
    train_reconstructor(dataclasses.replace(RECONSTRUCTOR_PRESETS["tiny"], steps=1, eval_every=100), str(root / "rec"),
                        progress=False)
    induce_priors(PRIOR_PRESETS["tiny"], str(root / "rec"), str(root / "prior"), progress=False)
    torch.manual_seed(0)
    generator = Generator("tiny")
    save_checkpoint(str(root / "generator"), 1, {"ema": generator}, {"generator": torch.optim.Adam(generator.parameters())})
    return root


def test_refiner_losses_go_down_on_a_fixed_batch(prior):
    trainer = RefinerTrainer(dataclasses.replace(TINY, learning_rate=2e-3), PriorCache(str(prior / "prior")), Generator("tiny"))
    _, target, _ = trainer.images([0, 1])
    # The untrained tiny generator renders nothing (a constant image, where the U-Net's
    # BatchNorm leaves nothing but a constant); a darkened target is a render to correct.
    rendered = (target + 1) * 0.6 - 1
    history = []
    for _ in range(25):
        d_loss, terms = trainer.losses(rendered, target)
        trainer.refiner_optimizer.zero_grad()
        terms["loss"].backward(inputs=list(trainer.refiner.parameters()))
        trainer.refiner_optimizer.step()
        history.append(terms["perceptual"].item())
    assert sum(history[-5:]) < 0.5 * sum(history[:5])
    d_history = []
    for _ in range(15):
        d_loss, _ = trainer.losses(rendered, target)
        trainer.discriminator_optimizer.zero_grad()
        d_loss.backward(inputs=list(trainer.discriminator.parameters()))
        trainer.discriminator_optimizer.step()
        d_history.append(d_loss.item())
    assert sum(d_history[-5:]) < 0.95 * sum(d_history[:5])


def test_refiner_training_resumes_bit_for_bit_and_refines_meshes(prior, tmp_path):
    config = dataclasses.replace(TINY, steps=3, checkpoint_every=2, eval_every=3)
    args = (str(prior / "prior"), str(prior / "generator"))
    resumed, records = resumed_equals_straight(train_refiner, config, tmp_path, *args)
    assert [r["step"] for r in records] == [1, 2, 3] and {"refined_l1", "rendered_l1"} <= set(records[-1])
    refiner = load_refiner(str(tmp_path / "resumed"), config)
    assert torch.equal(next(iter(refiner.state_dict().values())), next(iter(resumed.state_dict().values())))
    mesh = sphere_mesh(0.3)
    generator = Generator("tiny")
    refined = refine_meshes(generator, refiner, [mesh], resolution=16)[0]
    assert refined.colors.shape == mesh.colors.shape and bool(((refined.colors >= 0) & (refined.colors <= 1)).all())


def test_a_refiner_trains_alike_on_an_images_only_cache_an_exported_generator_and_memoised_renders(prior, tmp_path):
    config = dataclasses.replace(TINY, steps=4, checkpoint_every=4, eval_every=4, render_memo=3)  # memo < entries drawn
    induce_priors(dataclasses.replace(PRIOR_PRESETS["tiny"], images_only=True), None, str(tmp_path / "images"),
                  progress=False)
    exported = str(tmp_path / "generator.safetensors")
    assert main(["export", "--generator", str(prior / "generator"), "--preset", "tiny", "--out", exported]) == 0
    runs = {"full": (prior / "prior", prior / "generator", 0), "images_only": (tmp_path / "images", exported, 3)}
    refiners = {name: train_refiner(dataclasses.replace(config, render_memo=memo), str(cache), str(generator),
                                    str(tmp_path / name), progress=False)
                for name, (cache, generator, memo) in runs.items()}
    for (name, a), b in zip(refiners["full"].state_dict().items(), refiners["images_only"].state_dict().values()):
        assert torch.equal(a, b), name
    # The memo leaves the results unchanged, so a run may resume with another one, but not with another setting.
    train_refiner(dataclasses.replace(config, steps=5, render_memo=0), str(tmp_path / "images"), exported,
                  str(tmp_path / "images_only"), progress=False)
    with pytest.raises(ValueError, match="other settings .*mesh_resolution"):
        train_refiner(dataclasses.replace(config, steps=6, mesh_resolution=24), str(tmp_path / "images"), exported,
                      str(tmp_path / "images_only"), progress=False)


def test_a_refiner_of_albedo_learns_unshaded_renders_against_unshaded_targets(prior, tmp_path):
    cache = PriorCache(str(prior / "prior"))
    generator = generator_with_a_surface(seen_from_the_front=True)
    trainers = {albedo: RefinerTrainer(dataclasses.replace(TINY, albedo=albedo), cache, Generator("tiny"))
                for albedo in (False, True)}
    images = {}
    for albedo, trainer in trainers.items():
        trainer.generator = generator
        assert trainer.refiner.albedo == albedo
        images[albedo] = trainer.images([2, 0])
    entries = cache.batch([2, 0])
    z = entries["z"]
    for albedo, key in ((False, "image"), (True, "albedo")):
        rendered, target, overlap = images[albedo]
        assert torch.equal(target, entries[key].permute(0, 3, 1, 2).float() / 255 * 2 - 1)
        renders = [front_renders(generator, z[i : i + 1], TINY.mesh_resolution, lit=not albedo) for i in range(2)]
        assert torch.equal(rendered, torch.cat([image for image, _ in renders]).permute(0, 3, 1, 2) * 2 - 1)
        assert torch.equal(overlap, torch.cat([mask for _, mask in renders]) & silhouettes(entries[key]))
    # Shading only darkens: the albedo images are the brighter ones, in the renders as in the targets.
    for part in range(2):  # rendered, target
        assert bool((images[True][part] >= images[False][part] - 1e-6).all())
        assert (images[True][part] - images[False][part]).amax() > 0.1
    # A cache made before the albedo images existed cannot train a Refiner of albedo.
    induce_priors(dataclasses.replace(PRIOR_PRESETS["tiny"], images_only=True, albedo_images=False), None,
                  str(tmp_path / "older"), progress=False)
    older = PriorCache(str(tmp_path / "older"))
    assert "albedo" not in older.keys
    RefinerTrainer(TINY, older, Generator("tiny"))
    with pytest.raises(ValueError, match="holds no albedo: this stage needs a cache made with albedo_images"):
        RefinerTrainer(dataclasses.replace(TINY, albedo=True), older, Generator("tiny"))


def test_overlap_only_targets_keep_the_render_where_the_silhouettes_differ(prior):
    cache = PriorCache(str(prior / "prior"))
    trainers = {only: RefinerTrainer(dataclasses.replace(TINY, overlap_only=only), cache, Generator("tiny"))
                for only in (False, True)}
    for trainer in trainers.values():
        trainer.generator = generator_with_a_surface(seen_from_the_front=True)
    rendered, target, overlap = trainers[True].images([0, 1])
    assert overlap.any() and (~overlap).any()
    assert torch.equal(trainers[False].training_target(rendered, target, overlap), target)
    trained_on = trainers[True].training_target(rendered, target, overlap)
    inside = overlap.unsqueeze(1).expand_as(target)
    assert torch.equal(trained_on[inside], target[inside]) and torch.equal(trained_on[~inside], rendered[~inside])
    # The metrics: L1 in [0, 1] units to the stand-in images, over the whole images and over the
    # overlap alone; the untrained residual Refiner (zero head) returns the render itself.
    errors = trainers[True].evaluate()
    rendered, target, overlap = trainers[True].images(range(TINY.eval_latents))
    difference = ((rendered - target).abs() / 2).permute(0, 2, 3, 1)
    for name in ("refined", "rendered"):
        assert errors[f"{name}_l1"] == pytest.approx(difference.mean().item(), rel=1e-5)
        assert errors[f"{name}_overlap_l1"] == pytest.approx(difference[overlap].mean().item(), rel=1e-5)


def test_view_errors_against_hand_computed_values():
    target = torch.zeros(1, 2, 2, 3)
    rendered = torch.full((1, 2, 2, 3), 0.5)
    refined = target.clone()
    refined[0, 0, 0] = 1.0  # wrong on one pixel, which lies outside the overlap
    overlap = torch.tensor([[[False, True], [True, True]]])
    assert view_errors(refined, rendered, target, overlap) == pytest.approx(
        {"refined_l1": 0.25, "rendered_l1": 0.5, "refined_overlap_l1": 0.0, "rendered_overlap_l1": 0.5})
    assert view_errors(refined, rendered, target, torch.zeros_like(overlap))["rendered_overlap_l1"] == 0.0


def test_memoised_renders_are_the_renders_of_their_own_entries(prior):
    cache = PriorCache(str(prior / "prior"))
    trainers = {memo: RefinerTrainer(dataclasses.replace(TINY, render_memo=memo), cache, Generator("tiny"))
                for memo in (0, 2)}
    for trainer in trainers.values():
        trainer.generator = generator_with_a_surface(seen_from_the_front=True)  # renders that differ per latent
    indices = [3, 0, 3, 1, 0, 1]
    memoised, _, memoised_overlap = trainers[2].images(indices)
    rendered, _, overlap = trainers[0].images(indices)
    assert torch.equal(memoised_overlap, overlap)
    assert torch.equal(memoised, rendered)
    assert not torch.equal(rendered[0], rendered[1]) and sorted(trainers[2]._renders) == [0, 3]
    assert torch.equal(trainers[2].images([1, 3])[0], rendered[[3, 0]])


def test_a_run_loads_with_the_settings_it_recorded(prior, tmp_path):
    config = dataclasses.replace(TINY, steps=1, refiner_channels=4, refiner_norm="instance", gan_weight=0.5)
    args = (str(prior / "prior"), str(prior / "generator"))
    trained = train_refiner(config, *args, str(tmp_path / "instance"), progress=False)
    loaded = load_refiner(str(tmp_path / "instance"), TINY)  # the preset's sizes differ: the run's record wins
    assert loaded.sizes == trained.sizes and loaded.sizes["norm"] == "instance" and loaded.sizes["base_channels"] == 4
    for (name, a), b in zip(trained.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    # A run recorded before refiner_norm and gan_weight existed had BatchNorm and a unit GAN weight.
    older = dataclasses.replace(TINY, steps=1)
    train_refiner(older, *args, str(tmp_path / "older"), progress=False)
    settings = json.loads((tmp_path / "older" / "config.json").read_text())
    (tmp_path / "older" / "config.json").write_text(json.dumps({k: v for k, v in settings.items()
                                                                 if k not in RefinerTrainingConfig.INTRODUCED}))
    assert load_refiner(str(tmp_path / "older"), dataclasses.replace(TINY, refiner_norm="instance")).sizes["norm"] == "batch"
    train_refiner(dataclasses.replace(older, steps=2), *args, str(tmp_path / "older"), progress=False)  # resumes
    with pytest.raises(ValueError, match="other settings .*refiner_norm"):
        train_refiner(dataclasses.replace(older, steps=3, refiner_norm="instance"), *args, str(tmp_path / "older"),
                      progress=False)


def test_the_gan_weight_scales_the_adversarial_term(prior):
    cache = PriorCache(str(prior / "prior"))
    rendered, target, _ = RefinerTrainer(TINY, cache, Generator("tiny")).images([0, 1])
    rendered = (target + 1) * 0.6 - 1
    totals = {}
    for weight in (0.0, 1.0, 3.0):
        _, terms = RefinerTrainer(dataclasses.replace(TINY, gan_weight=weight), cache, Generator("tiny")).losses(rendered, target)
        rest = TINY.feature_matching_weight * terms["feature_matching"] + TINY.perceptual_weight * terms["perceptual"]
        totals[weight] = (terms["loss"] - rest).item(), terms["gan"].item()
    assert totals[0.0][0] == pytest.approx(0.0, abs=1e-6)
    assert totals[3.0][0] == pytest.approx(3 * totals[3.0][1], rel=1e-5) and totals[1.0][0] == pytest.approx(totals[1.0][1], rel=1e-5)


def test_without_discriminator_terms_the_refiner_learns_from_the_pyramid_l1_alone(prior, tmp_path):
    config = dataclasses.replace(TINY, gan_weight=0.0, feature_matching_weight=0.0, steps=3, checkpoint_every=2,
                                 eval_every=3)
    cache = PriorCache(str(prior / "prior"))
    trainer = RefinerTrainer(config, cache, Generator("tiny"))
    assert list(trainer.modules) == ["refiner"] and list(trainer.optimizers) == ["refiner"]
    rendered, target, _ = trainer.images([0, 1])
    d_loss, terms = trainer.losses(rendered, target)
    assert d_loss is None and set(terms) == {"loss", "perceptual"}
    expected = config.perceptual_weight * losses.pyramid_l1_loss(trainer.refiner(rendered), target)
    assert torch.allclose(terms["loss"], expected)
    _, records = resumed_equals_straight(train_refiner, config, tmp_path, str(prior / "prior"), str(prior / "generator"))
    assert "d_loss" not in records[-1] and {"r_loss", "perceptual", "refined_l1"} <= set(records[-1])
    with pytest.raises(ValueError, match="gan_weight must be >= 0, got -1"):
        RefinerTrainer(dataclasses.replace(TINY, gan_weight=-1.0), cache, Generator("tiny"))


def test_refiner_command_line(prior, tmp_path):
    assert main(["train", "refiner", "--preset", "tiny", "--prior", str(prior / "prior"), "--generator",
                 str(prior / "generator"), "--out", str(tmp_path / "r"), "--steps", "1", "--quiet"]) == 0
    with pytest.raises(SystemExit):
        main(["train", "refiner", "--preset", "tiny", "--out", str(tmp_path / "r2")])
    with pytest.raises(ValueError, match="refiner must be"):
        load_refiner(str(tmp_path / "missing"), TINY)


def test_refiner_save_pretrained_round_trip_and_errors(tmp_path, monkeypatch):
    torch.manual_seed(4)
    refiner = Refiner(base_channels=4, depth=2, residual=True)
    for parameter in refiner.parameters():  # the zero-initialised head would hide a lost tensor
        parameter.data.normal_()
    full, half = tmp_path / "full.safetensors", tmp_path / "half.safetensors"
    refiner.save_pretrained(full)
    refiner.save_pretrained(half, torch.float16)
    image = torch.rand(2, 3, 16, 16) * 2 - 1
    loaded = Refiner.from_pretrained(full)
    assert loaded.sizes == refiner.sizes and not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(image), refiner.eval()(image))
    for (name, a), b in zip(refiner.state_dict().items(), Refiner.from_pretrained(half).state_dict().values()):
        assert b.dtype == a.dtype and torch.equal(b, a.to(torch.float16).to(a.dtype) if a.is_floating_point() else a), name
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Refiner.from_pretrained(tmp_path / "missing.safetensors")
    Generator("tiny").save_pretrained(tmp_path / "generator.safetensors")
    with pytest.raises(ValueError, match="is not a weights file of format .get3dhuman-refiner"):
        Refiner.from_pretrained(tmp_path / "generator.safetensors")
    monkeypatch.setattr(refiner_module, "DEFAULT_WEIGHTS", str(tmp_path / "refiner-small.safetensors"))
    with pytest.raises(FileNotFoundError, match="ships no default weights"):
        Refiner.from_pretrained()
    monkeypatch.setattr(refiner_module, "DEFAULT_WEIGHTS", str(full))
    assert Refiner.from_pretrained().sizes == refiner.sizes
    instance = Refiner(base_channels=4, depth=2, norm="instance", albedo=True)
    instance.save_pretrained(tmp_path / "instance.safetensors")
    loaded = Refiner.from_pretrained(tmp_path / "instance.safetensors")
    assert loaded.sizes["norm"] == "instance" and loaded.albedo
    # Files written before `norm` and `albedo` existed hold BatchNorm refiners of shaded views.
    older_sizes = {k: v for k, v in refiner.sizes.items() if k not in ("norm", "albedo")}
    write_pretrained(refiner, tmp_path / "older.safetensors", refiner_module.PRETRAINED_FORMAT, older_sizes)
    assert Refiner.from_pretrained(tmp_path / "older.safetensors").sizes == refiner.sizes


def test_an_exported_refiner_refines_samples_as_its_run_does(prior, tmp_path, monkeypatch):
    run, exported = tmp_path / "run", str(tmp_path / "refiner.safetensors")
    assert main(["train", "refiner", "--preset", "tiny", "--prior", str(prior / "prior"), "--generator",
                 str(prior / "generator"), "--out", str(run), "--steps", "1", "--quiet"]) == 0
    assert main(["export", "--refiner", str(run), "--preset", "tiny", "--out", exported]) == 0
    with pytest.raises(SystemExit):
        main(["export", "--refiner", str(run), "--generator", str(prior / "generator"), "--out", exported])
    trained = load_refiner(str(run), TINY)
    for (name, a), b in zip(trained.state_dict().items(), Refiner.from_pretrained(exported).state_dict().values()):
        assert torch.equal(a, b), name
    monkeypatch.setattr(refiner_module, "DEFAULT_WEIGHTS", exported)  # `--refiner` alone: the packaged file
    previews = {}
    for name, refiner in (("run", [str(run)]), ("file", [exported]), ("packaged", [])):
        assert main(["sample", "--num", "1", "--out", str(tmp_path / name), "--generator", str(prior / "generator"),
                     "--preset", "tiny", "--resolution", "32", "--preview", "16", "--quiet", "--refiner", *refiner]) == 0
        previews[name] = (tmp_path / name / "human-0.png").read_bytes()
    assert previews["run"] == previews["file"] == previews["packaged"]
