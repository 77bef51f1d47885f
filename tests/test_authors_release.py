"""The authors' release: their refinement file (`Refiner.from_official_checkpoint`) and their
inference conventions (outside-image points, their box and lattice, float64 latents, seeded
random noise), each against an oracle written here from the description of their code."""

import dataclasses
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from inputs import OFFICIAL_REFINER_KEYS_FILE, generator_with_their_conventions, official_checkpoint_layout
from PIL import Image
from safetensors.torch import save_file

from get3dhuman import Generator, Refiner, TexturedMesh
from get3dhuman.authors import AuthorsColouring, authors_views, dilate, lift_views, near_silhouette, trace_view
from get3dhuman.cli import main
from get3dhuman.dataset import read_manifest
from get3dhuman.mesh import MeshingOptions, sample_texture
from get3dhuman.nn.generator import AUTHORS_BOX, OFFICIAL_CALIBRATION, OUTSIDE_IMAGE_OCCUPANCY, PRESETS
from get3dhuman.nn.refiner import OfficialRefiner
from get3dhuman.texture import drawn_faces, texel_points


def _refiner_file(seed=0):
    """A state dict laid out as the authors' refinement file: random convolutions, batch-norm
    scales near 1, and running statistics that must never be read (huge, so that reading them
    would show)."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in official_checkpoint_layout(keys_file=OFFICIAL_REFINER_KEYS_FILE).items():
        if name.endswith("num_batches_tracked"):
            state[name] = torch.tensor(7)
        elif name.endswith("running_mean") or name.endswith("running_var"):
            state[name] = torch.full(shape, 1e3)
        elif ".conv.1." in name and name.endswith("weight"):
            state[name] = 1 + 0.2 * torch.randn(shape, generator=generator)
        elif len(shape) == 4:
            state[name] = torch.randn(shape, generator=generator) / (shape[1] * shape[2] * shape[3]) ** 0.5
        else:
            state[name] = 0.1 * torch.randn(shape, generator=generator)
    return state


def _their_refinement(state, images):
    """(their img2img(images) + 1) / 2, re-derived from the description of their U-Net in
    float64: block k = 3x3 convolution with bias, batch norm by the image's own statistics (their
    inference never calls .eval(); one image at a time), ReLU. Conv0-2 at full resolution; four
    times 2x max-pooling then one block (Conv3-6); Conv7, Conv8; then four times nearest 2x
    up-sampling, concatenation [up-sampled, encoder output of that size], two blocks (Conv9-16);
    a 1x1 Conv_out and tanh."""
    weights = {name: tensor.double() for name, tensor in state.items()}

    def block(k, x):
        prefix = f"rnet.Conv{k}.conv."
        x = F.conv2d(x, weights[prefix + "0.weight"], weights[prefix + "0.bias"], padding=1)
        mean, variance = x.mean((2, 3), keepdim=True), x.var((2, 3), unbiased=False, keepdim=True)
        x = (x - mean) / torch.sqrt(variance + 1e-5)
        return torch.relu(x * weights[prefix + "1.weight"][:, None, None] + weights[prefix + "1.bias"][:, None, None])

    outputs = []
    for image in images.double().split(1):
        x = block(2, block(1, block(0, image)))
        encoded = [x]
        for k in (3, 4, 5, 6):
            x = block(k, F.max_pool2d(x, 2))
            encoded.append(x)
        x = block(8, block(7, x))
        for k, skip in zip((9, 11, 13, 15), encoded[3::-1]):
            up = x.repeat_interleave(2, 2).repeat_interleave(2, 3)
            x = block(k + 1, block(k, torch.cat([up, skip], 1)))
        out = torch.tanh(F.conv2d(x, weights["rnet.Conv_out.weight"], weights["rnet.Conv_out.bias"]))
        outputs.append((out + 1) / 2)
    return torch.cat(outputs)


def test_the_official_refiner_holds_every_name_of_the_authors_file():
    names = {f"rnet.{name}": tuple(tensor.shape) for name, tensor in OfficialRefiner().state_dict().items()}
    assert names == official_checkpoint_layout(keys_file=OFFICIAL_REFINER_KEYS_FILE)
    assert len(names) == 121


@pytest.mark.parametrize("file_format", ["pth", "safetensors"])
def test_the_authors_refinement_file_refines_as_their_network(tmp_path, file_format):
    state = _refiner_file()
    path = tmp_path / f"Get3DHuman_refinement_v1.{file_format}"
    torch.save(state, path) if file_format == "pth" else save_file(state, str(path))
    refiner = Refiner.from_official_checkpoint(path)
    assert isinstance(refiner, OfficialRefiner) and not refiner.training
    images = torch.rand(2, 3, 32, 48, generator=torch.Generator().manual_seed(1))
    images[1, :, :8] = 1.0  # white background, as their composite
    with torch.no_grad():
        refined = refiner(images)
        alone = torch.cat([refiner(image) for image in images.split(1)])
    expected = _their_refinement(state, images)
    assert refined.shape == images.shape and refined.dtype == torch.float32
    torch.testing.assert_close(refined.double(), expected, rtol=0, atol=2e-5)
    assert torch.equal(refined, alone)  # each image normalised alone: a batch changes nothing
    assert 0 <= refined.min() and refined.max() <= 1
    with pytest.raises(ValueError, match=r"^images must be \[B, 3, H, W\] with H and W divisible by 16, got \(1, 3, 24, 32\)$"):
        refiner(torch.rand(1, 3, 24, 32))


def _one_line_error(call, match):
    with pytest.raises(ValueError, match=match) as raised:
        call()
    assert "\n" not in str(raised.value)


def test_the_authors_files_swapped_truncated_or_carrying_code_are_named(tmp_path):
    generator_file, refiner_file = tmp_path / "Get3DHuman_shape_texture_v2.pth", tmp_path / "refinement.pth"
    torch.save({"module.backbone_shape.mapping.fc0.weight": torch.zeros(512, 512)}, generator_file)
    torch.save(_refiner_file(), refiner_file)
    _one_line_error(lambda: Refiner.from_official_checkpoint(generator_file),
                    f"^{generator_file} holds the authors' shape/texture generator .*pass it as --checkpoint.*, not "
                    "the authors' refinement network$")
    _one_line_error(lambda: Generator.from_official_checkpoint(refiner_file),
                    f"^{refiner_file} holds the authors' refinement network .*pass it as --refiner.*, not the "
                    "authors' shape/texture generator$")
    with pytest.raises(SystemExit, match="holds the authors' refinement network"):
        main(["sample", "--checkpoint", str(refiner_file), "--num", "1", "--out", str(tmp_path / "out")])

    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(refiner_file.read_bytes()[: os.path.getsize(refiner_file) // 2])
    _one_line_error(lambda: Refiner.from_official_checkpoint(truncated), f"^{truncated} is truncated or not a torch "
                    "checkpoint")
    cut_small = tmp_path / "cut.pth"  # torch's reader fails otherwise on a small file cut short
    cut_small.write_bytes(generator_file.read_bytes()[: os.path.getsize(generator_file) // 2])
    _one_line_error(lambda: Generator.from_official_checkpoint(cut_small), f"^{cut_small} is truncated or not a torch "
                    "checkpoint")
    with pytest.raises(SystemExit, match=f"^get3dhuman sample: {cut_small} is truncated or not a torch checkpoint"):
        main(["sample", "--checkpoint", str(cut_small), "--num", "1", "--out", str(tmp_path / "out")])

    ran = tmp_path / "the pickle ran"

    class Payload:
        def __reduce__(self):
            return os.makedirs, (str(ran),)

    carrying_code = tmp_path / "code.pth"
    torch.save({"rnet.Conv_out.bias": torch.zeros(3), "payload": Payload()}, carrying_code)
    _one_line_error(lambda: Refiner.from_official_checkpoint(carrying_code),
                    f"^{carrying_code} holds objects other than tensors, which are never unpickled")
    for option in ("--refiner", "--checkpoint"):
        with pytest.raises(SystemExit, match=f"^get3dhuman sample: {carrying_code} holds objects other than tensors"):
            main(["sample", option, str(carrying_code), "--num", "1", "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit, match=f"^get3dhuman sample: {generator_file} holds the authors' shape/texture"):
        main(["sample", "--refiner", str(generator_file), "--num", "1", "--out", str(tmp_path / "out")])
    assert not ran.exists()


@pytest.mark.parametrize("change, match", [
    (lambda state: state.pop("rnet.Conv16.conv.1.running_var"), "it lacks rnet.Conv16.conv.1.running_var$"),
    (lambda state: state.update({"rnet.Conv3.conv.0.weight": torch.zeros(128, 64, 5, 5)}),
     r"rnet.Conv3.conv.0.weight is \(128, 64, 5, 5\), expected \(128, 64, 3, 3\)$"),
    (lambda state: state.update({"rnet.Conv17.conv.0.bias": torch.zeros(64)}), "it holds rnet.Conv17.conv.0.bias"),
])
def test_a_refinement_file_of_another_layout_names_the_first_mismatch(tmp_path, change, match):
    state = _refiner_file()
    change(state)
    path = tmp_path / "refiner.pth"
    torch.save(state, path)
    _one_line_error(lambda: Refiner.from_official_checkpoint(path),
                    f"^{path} is not the authors' refinement network: " + match)


def _with_the_authors_conventions(preset="tiny"):
    """A random Generator of `preset` with the authors' camera and conventions."""
    torch.manual_seed(0)
    generator = Generator(dataclasses.replace(PRESETS[preset], authors_conventions=True)).eval()
    generator.calibration.copy_(OFFICIAL_CALIBRATION)
    return generator


def test_points_projecting_outside_the_image_are_outside():
    generator = _with_the_authors_conventions()
    ours = Generator("tiny").eval()  # the same networks without the authors' conventions
    ours.load_state_dict(generator.state_dict())
    ours.calibration.copy_(OFFICIAL_CALIBRATION)
    scale, offset = 0.00927734, 0.88134766
    # Their projection, by hand: x * s, -y * s + offset, z * s; only x and y leave the image.
    points = torch.tensor([[0.0, 95.0, 0.0], [100.0, 0.0, 120.0], [107.0, -12.0, -125.0],
                           [110.0, 95.0, 0.0], [0.0, -20.0, 0.0], [-120.0, 210.0, 0.0], [0.0, 203.0, 0.0]])
    ndc_xy = torch.stack([points[:, 0] * scale, -points[:, 1] * scale + offset], 1)
    outside = (ndc_xy.abs() > 1).any(1)
    assert outside.tolist() == [False, False, False, True, True, True, True]
    volume = torch.randn(1, 128, 8, 8)
    calib = OFFICIAL_CALIBRATION[None]
    with torch.no_grad():
        theirs = generator.query_occupancy(volume, points[None], calib)[0]
        unmasked = ours.query_occupancy(volume, points[None], calib)[0]
        in_ndc = generator.query_occupancy(volume, (points @ calib[0, :3, :3].T + calib[0, :3, 3])[None])[0]
    assert OUTSIDE_IMAGE_OCCUPANCY == pytest.approx(0.1, abs=1e-7)
    assert torch.equal(theirs[outside], torch.full((4,), OUTSIDE_IMAGE_OCCUPANCY))
    assert torch.equal(theirs[~outside], unmasked[~outside])
    assert torch.equal(in_ndc[outside], theirs[outside])  # points given in NDC are judged the same


def test_meshes_cover_the_authors_box_on_their_lattice():
    generator = _with_the_authors_conventions()
    # Their create_grid at 8: 8 points from b_min, a step of 256 / 8 apart, which the package's
    # 8 cells over the whole box hold (and one layer more, at b_max).
    assert generator.mesh_lattice(8) == ([-128.0, -28.0, -128.0], [128.0, 228.0, 128.0], 8)
    with pytest.raises(ValueError, match="resolution must be an int >= 1, got 0"):
        generator.mesh_lattice(0)

    # A ball reaching z = 120, past the NDC cube's 107.8, meshed as their dense grid and skimage mesh it.
    centre, radius, resolution = torch.tensor([10.0, 90.0, 95.0]), 25.0, 64

    def ball(shape_volume, points, calib=None, **options):
        return torch.sigmoid((radius - (points - centre).norm(dim=-1)) / 4)

    generator.query_occupancy = ball
    mesh = generator.extract_mesh(*generator.latents([0]), resolution)[0]
    skimage = pytest.importorskip("skimage.measure")
    b_min, b_max = np.array(AUTHORS_BOX[0]), np.array(AUTHORS_BOX[1])
    step = (b_max - b_min) / resolution
    grid = np.stack(np.meshgrid(*[b_min[i] + step[i] * np.arange(resolution) for i in range(3)], indexing="ij"), -1)
    values = ball(None, torch.from_numpy(grid).float()).numpy()
    vertices, faces, _, _ = skimage.marching_cubes(values, 0.5)
    expected = vertices * step + b_min
    assert mesh.faces.shape[0] == len(faces) and mesh.vertices[:, 2].max() > 115
    ours = np.unique(mesh.vertices.numpy().round(3), axis=0)
    np.testing.assert_allclose(ours, np.unique(expected.round(3), axis=0), atol=2e-3)


def test_float64_latents_are_cast_as_the_authors_mapping_casts_them():
    generator = Generator("tiny").eval()
    z = torch.randn(2, 2, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        shape64, texture64 = generator(z[0], z[1])
        shape32, texture32 = generator(z[0].float(), z[1].float())
    assert shape64.volume.dtype == torch.float32
    assert torch.equal(shape64.volume, shape32.volume) and torch.equal(texture64, texture32)
    mesh64 = generator.extract_mesh(z[0, :1], z[1, :1], 16)[0]
    mesh32 = generator.extract_mesh(z[0, :1].float(), z[1, :1].float(), 16)[0]
    assert torch.equal(mesh64.vertices, mesh32.vertices) and torch.equal(mesh64.colors, mesh32.colors)


def _noisy_tiny_generator():
    generator = Generator("tiny").eval()
    with torch.no_grad():
        for name, parameter in generator.named_parameters():
            if name.endswith("noise_strength"):
                parameter.fill_(0.5)
    return generator


def _noise_layers(backbone):
    """The backbone's noisy layers in the order its synthesis runs them."""
    synthesis = backbone.synthesis
    blocks = [getattr(synthesis, name) for name, _ in synthesis.named_children() if name.startswith("b")]
    return [getattr(block, name) for block in blocks for name in ("conv0", "conv1") if hasattr(block, name)]


def test_random_noise_is_drawn_layer_by_layer_shape_branch_first_after_the_seed():
    generator = _noisy_tiny_generator()
    z = generator.latents([4, 5])
    state = torch.get_rng_state()
    random = generator.extract_mesh(*z, 16, noise_mode="random", noise_seeds=[123, 9])
    assert torch.equal(torch.get_rng_state(), state)  # the caller's random stream is untouched
    with torch.no_grad():  # the noise matters
        assert not torch.equal(generator(*z, noise_mode="random")[1], generator(*z)[1])
    for row, seed in enumerate((123, 9)):
        # The oracle: the draws of their synthesis layers, in order, installed as constant noise.
        torch.manual_seed(seed)
        for backbone in (generator.backbone_shape, generator.backbone_texture):
            for layer in _noise_layers(backbone):
                layer.noise_const.copy_(torch.randn(1, 1, *layer.noise_const.shape)[0, 0])
        expected = generator.extract_mesh(z[0][row : row + 1], z[1][row : row + 1], 16)[0]
        assert torch.equal(random[row].vertices, expected.vertices) and torch.equal(random[row].colors, expected.colors)
    with pytest.raises(ValueError, match="noise_seeds must be given with noise_mode 'random', one per row"):
        generator.extract_mesh(*z, 16, noise_seeds=[1, 2])


def test_sample_with_random_noise_is_reproducible_from_the_seed(tmp_path):
    generator = _noisy_tiny_generator()
    first = generator.sample(2, seed=7, resolution=16, noise_mode="random")
    second = generator.sample(2, seed=7, resolution=16, batch_size=1, noise_mode="random")
    constant = generator.sample(2, seed=7, resolution=16)
    for a, b, c in zip(first, second, constant):
        assert torch.equal(a.vertices, b.vertices) and torch.equal(a.colors, b.colors)
        assert not torch.equal(a.colors[:8], c.colors[:8])
    weights = tmp_path / "noisy.safetensors"
    generator.save_pretrained(weights)
    argv = ["sample", "--weights", str(weights), "--num", "2", "--seed", "7", "--resolution", "16", "--quiet"]
    assert main([*argv, "--noise", "random", "--out", str(tmp_path / "random")]) == 0
    for index, mesh in enumerate(first):
        written = TexturedMesh.load(tmp_path / "random" / f"human-{7 + index}.glb")
        assert torch.equal(written.vertices, mesh.vertices) and torch.equal(written.faces, mesh.faces)
    with pytest.raises(SystemExit, match="holds a run with other settings"):  # const and random never mix
        main([*argv, "--out", str(tmp_path / "random")])


# --- the authors' colouring: two traced, refined views lifted back onto the mesh --------------

BALL_CENTRE, BALL_RADIUS = torch.tensor([0.1, -0.05, 0.05]), 0.45  # in NDC


def _ball_generator(centre=BALL_CENTRE, radius=BALL_RADIUS):
    """A generator with the authors' conventions whose fields are analytic, in NDC: a ball whose
    occupancy makes their pseudo-distance the true distance to its sphere (so sphere tracing
    lands on it), and a colour linear in NDC x and y."""
    generator = _with_the_authors_conventions()

    def to_ndc(points, calib):
        return points if calib is None else points @ calib[:, :3, :3].transpose(1, 2) + calib[:, :3, 3].unsqueeze(1)

    def occupancy(shape_volume, points, calib=None, **options):
        distance = (to_ndc(points, calib) - centre).norm(dim=-1) - radius
        return (0.5 - distance * 64 / 25).clamp(0, 1)

    def colour(shape_volume, texture_volume, points, calib=None, **options):
        ndc = to_ndc(points, calib)
        return torch.stack([0.5 + 0.4 * ndc[..., 0], 0.5 + 0.4 * ndc[..., 1], torch.full_like(ndc[..., 0], 0.3)], -1)

    generator.query_occupancy, generator.query_color = occupancy, colour
    return generator, colour


def test_their_views_trace_the_surface_and_mask_it_dilated():
    generator, colour = _ball_generator()
    size = 64
    unused_volume = torch.zeros(1, 128, 8, 8)  # the analytic fields ignore it
    points, depth, mask = trace_view(generator, unused_volume, 0.0, size)
    pixel = torch.arange(size) * 2 / (size - 1) - 1  # their camera: NDC x = 2u / (R - 1) - 1, y likewise
    y, x = torch.meshgrid(pixel, pixel, indexing="ij")
    radial = (x - BALL_CENTRE[0]) ** 2 + (y - BALL_CENTRE[1]) ** 2
    inside = radial < BALL_RADIUS**2 - 1e-3
    assert torch.equal(mask[inside], torch.ones_like(mask[inside])) and not mask[radial > BALL_RADIUS**2 + 1e-3].any()
    # Front depth from the near plane NDC z = 1 to the sphere, where rays meet it squarely enough
    # for a kept distance below HIT_DISTANCE to be a depth within 1e-3 (near the rim, a grazing
    # ray's depth error is that distance over the cosine).
    facing = radial < (0.8 * BALL_RADIUS) ** 2
    expected = 1 - (BALL_CENTRE[2] + (BALL_RADIUS**2 - radial).clamp_min(0).sqrt())
    torch.testing.assert_close(depth[facing], expected[facing], rtol=0, atol=1e-3)
    # The kept points lie on the sphere, in their tracer's frame (NDC with y negated).
    on_sphere = points.reshape(size, size, 3)[inside] * torch.tensor([1.0, -1.0, 1.0])
    torch.testing.assert_close((on_sphere - BALL_CENTRE).norm(dim=-1), torch.full((int(inside.sum()),), BALL_RADIUS),
                               rtol=0, atol=1e-3)
    # The back view sees the far side, mirrored: depth from z = -1 up to the sphere.
    _, back_depth, back_mask = trace_view(generator, unused_volume, 180.0, size)
    behind = 1 - (-BALL_CENTRE[2] + (BALL_RADIUS**2 - radial.flip(1)).clamp_min(0).sqrt())
    torch.testing.assert_close(back_depth[facing.flip(1)], behind[facing.flip(1)], rtol=0, atol=1e-3)
    assert torch.equal(back_mask[inside.flip(1)], torch.ones_like(back_mask[inside.flip(1)]))

    single = torch.zeros(10, 10, dtype=torch.bool)
    single[5, 5] = True  # cv2.dilate with a 4 x 4 kernel, anchor at (2, 2): rows and columns 4 .. 7
    expected_dilation = torch.zeros(10, 10, dtype=torch.bool)
    expected_dilation[4:8, 4:8] = True
    assert torch.equal(dilate(single), expected_dilation)


@pytest.mark.parametrize("angle", [0.0, 180.0])
def test_rays_that_stop_early_keep_what_all_their_steps_keep(angle):
    generator = generator_with_their_conventions()
    with torch.no_grad():
        shape = generator.shape_features(generator.latents([0])[0]).volume
    ball, _ = _ball_generator()
    for model, volume in ((generator, shape), (ball, torch.zeros(1, 128, 8, 8))):
        calls = []
        query = model.query_occupancy
        model.query_occupancy = lambda *args, **options: calls.append(args[1].shape[1]) or query(*args, **options)
        fast = trace_view(model, volume, angle, 32)
        queried = sum(calls)
        calls.clear()
        exhaustive = trace_view(model, volume, angle, 32, exhaustive=True)
        assert sum(calls) == 55 * 32 * 32 and queried < 0.8 * sum(calls)
        assert torch.equal(fast[2], exhaustive[2])
        assert fast[2].any() or model is generator  # the tiny generator's back view starts inside
        torch.testing.assert_close(fast[1][fast[2]], exhaustive[1][fast[2]], rtol=0, atol=1e-5)
        # Past the box a ray repeats its clamped query point; which repeat is kept depends on the
        # queries' rounding, which depends on the rays queried with it. Compare what is decoded.
        torch.testing.assert_close(fast[0].clamp(-0.99, 0.99), exhaustive[0].clamp(-0.99, 0.99), rtol=0, atol=1e-5)


def test_the_rays_near_the_meshs_silhouette_give_every_rays_views():
    generator, _ = _ball_generator(radius=0.3)
    volume = torch.zeros(1, 128, 8, 8)  # the analytic fields ignore it
    mesh = generator.extract_mesh(*generator.latents([0]), 64)[0]
    rays = near_silhouette(generator, mesh, 64, 64)
    assert 0.1 < rays.float().mean() < 0.5
    restricted = authors_views(generator, volume, volume, _Inverting(), 64, rays=rays)
    every = authors_views(generator, volume, volume, _Inverting(), 64)
    assert torch.equal(torch.isfinite(restricted[2]), torch.isfinite(every[2])) and torch.isfinite(every[2]).any()
    hit = torch.isfinite(every[2])
    torch.testing.assert_close(restricted[2][hit], every[2][hit], rtol=0, atol=1e-5)
    torch.testing.assert_close(restricted[1], every[1], rtol=0, atol=1e-5)


def test_their_lift_puts_pixels_where_their_calib_define_says():
    size, scale = 32, 107.78947529
    depths = torch.full((2, size, size), float("inf"))
    depths[1, 3, 20] = 0.9  # the front view (second), row 3, column 20
    depths[0, 10, 5] = 1.2  # the back view (first)
    refined = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    points, colours = lift_views(refined, depths)
    # Their image is flipped vertically: row v is row R - 1 - v of the lifted image; pixel (u, v)
    # at NDC (2u / R - 1, 2v / R - 1, depth - 1) -> world (s x, s y + 95, -s z); the back view
    # rotated back by 180 degrees about the vertical axis: (-x, y, -z).
    back = [-scale * (2 * 5 / size - 1), scale * (2 * (size - 1 - 10) / size - 1) + 95, scale * (1.2 - 1)]
    front = [scale * (2 * 20 / size - 1), scale * (2 * (size - 1 - 3) / size - 1) + 95, -scale * (0.9 - 1)]
    np.testing.assert_allclose(points, [back, front], atol=1e-5)
    np.testing.assert_allclose(colours, [refined[0, :, 10, 5].numpy(), refined[1, :, 3, 20].numpy()], atol=1e-7)


class _Inverting(torch.nn.Module):
    """A stand-in refiner whose effect shows: 1 - image."""

    def forward(self, images):
        return 1 - images


def test_their_colouring_gives_each_vertex_the_refined_colour_of_the_field_near_it():
    generator, colour = _ball_generator()
    resolution = 128
    colouring = AuthorsColouring(_Inverting(), keep_views=True)
    mesh = generator.extract_mesh(*generator.latents([0]), resolution, recolor=colouring)[0]
    assert not mesh.is_empty
    images, refined = colouring.views[0]
    assert images.shape == refined.shape == (2, 3, resolution, resolution) and torch.equal(refined, 1 - images)
    assert images[0, :, 0, 0].tolist() == [1.0, 1.0, 1.0]  # white where nothing is hit
    ndc = mesh.vertices @ OFFICIAL_CALIBRATION[:3, :3].T + OFFICIAL_CALIBRATION[:3, 3]
    expected = 1 - colour(None, None, ndc[None])[0]
    error = (mesh.colors - expected).abs().max(1).values
    # A vertex facing a camera takes the colour sampled within about three pixels of it (their
    # lift puts pixel u at u / R where the tracer sampled u / (R - 1), up to a pixel in x and in
    # y, and the nearest lifted pixel lies within about one more): 0.4 per NDC unit x 3 x 2 / R.
    normals = mesh.normals @ OFFICIAL_CALIBRATION[:3, :3].T
    facing = (normals[:, 2] / normals.norm(dim=1)).abs() > 0.5
    assert facing.float().mean() > 0.4 and error[facing].max() < 0.4 * 3 * 2 / resolution
    # Near the rim, seen edge-on by both views, the nearest lifted pixel lies farther away.
    assert error.max() < 0.06 and error.mean() < 0.006
    with pytest.raises(ValueError, match="render_size must be a multiple of 16"):
        generator.extract_mesh(*generator.latents([0]), 24, recolor=AuthorsColouring())
    # A ball in their box but past the near and far planes their rays query: no view hits it,
    # and the texture decoder colours the vertices.
    # An empty mesh keeps its place among the views (white: no ray traced).
    nothing, _ = _ball_generator(torch.tensor([0.0, 0.0, 5.0]), 0.1)
    kept = AuthorsColouring(keep_views=True)
    assert nothing.extract_mesh(*nothing.latents([0]), 32, recolor=kept)[0].is_empty
    assert len(kept.views) == 1 and bool((kept.views[0][0] == 1).all())
    hidden, colour = _ball_generator(torch.tensor([0.0, 0.0, -1.1]), 0.06)
    mesh = hidden.extract_mesh(*hidden.latents([0]), 128, recolor=AuthorsColouring())[0]
    ndc = mesh.vertices @ OFFICIAL_CALIBRATION[:3, :3].T + OFFICIAL_CALIBRATION[:3, 3]
    assert not mesh.is_empty
    torch.testing.assert_close(mesh.colors, colour(None, None, ndc[None])[0], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="the authors' colouring needs a generator with their conventions"):
        Generator("tiny").extract_mesh(*Generator("tiny").latents([0]), 16, recolor=AuthorsColouring())


def test_their_colouring_bakes_a_texture_of_the_refined_colour_at_each_texels_point():
    generator, colour = _ball_generator()
    meshing = MeshingOptions(faces=1500, texture_size=128)
    mesh = generator.extract_mesh(*generator.latents([0]), 64, recolor=AuthorsColouring(_Inverting()),
                                  meshing=meshing)[0]
    assert len(mesh.faces) <= 1500 and mesh.texture.shape == (128, 128, 3)
    covered, points = texel_points(mesh.uvs, mesh.faces[drawn_faces(mesh)], mesh.vertices, 128)
    ndc = points @ OFFICIAL_CALIBRATION[:3, :3].T + OFFICIAL_CALIBRATION[:3, 3]
    expected = 1 - colour(None, None, ndc[None])[0]  # the inverted views of the analytic colour
    error = (mesh.texture[covered] - expected).abs().max(1).values
    assert covered.float().mean() > 0.25 and error.mean() < 0.01 and error.max() < 0.1
    # The texture at each vertex is the vertex's own colour (the nearest lifted pixel to both).
    assert (sample_texture(mesh.texture, mesh.uvs) - mesh.colors).abs().mean() < 0.01


@pytest.mark.slow
def test_the_command_line_colours_samples_with_the_authors_refiner(tmp_path):
    generator = generator_with_their_conventions()
    weights, refiner_file = tmp_path / "tiny.safetensors", tmp_path / "Get3DHuman_refinement_v1.pth"
    generator.save_pretrained(weights)
    torch.save(_refiner_file(), refiner_file)
    out = tmp_path / "humans"
    assert main(["sample", "--weights", str(weights), "--refiner", str(refiner_file), "--num", "2", "--resolution", "32",
                 "--refined-views", "--out", str(out), "--quiet"]) == 0
    colouring = AuthorsColouring(Refiner.from_official_checkpoint(refiner_file), keep_views=True)
    expected = Generator.from_pretrained(weights).extract_mesh(*generator.latents([0, 1]), 32, recolor=colouring)
    records = read_manifest(str(out))
    for record, mesh, (_, refined) in zip(records, expected, colouring.views):
        assert not mesh.is_empty and record["refined_views"] == [f"human-{record['seed']}-refined-180.png",
                                                                  f"human-{record['seed']}-refined-000.png"]
        written = TexturedMesh.load(out / record["mesh"])
        assert torch.equal(written.faces, mesh.faces)
        assert (written.colors - mesh.colors).abs().max() <= 0.5 / 255 + 1e-6  # 8-bit vertex colours
        for file, view in zip(record["refined_views"], refined):
            pixels = torch.from_numpy(np.asarray(Image.open(out / file), dtype=np.float32) / 255)
            assert (pixels - view.permute(1, 2, 0)).abs().max() <= 0.5 / 255 + 1e-6
        # their colouring, not the texture decoder's at the vertices
        assert not torch.allclose(mesh.colors, generator.extract_mesh(*generator.latents([record["seed"]]), 32)[0].colors)
    with pytest.raises(SystemExit, match="render_size must be a multiple of 16"):
        main(["sample", "--weights", str(weights), "--refiner", str(refiner_file), "--num", "1", "--resolution", "40",
              "--out", str(tmp_path / "odd"), "--quiet"])
    assert not (tmp_path / "odd" / "settings.json").exists()
    for option in (["--render-size", "32"], ["--refined-views"]):
        with pytest.raises(SystemExit, match="need the authors' refiner"):
            main(["sample", "--weights", str(weights), "--num", "1", "--out", str(tmp_path / "odd"), *option])
    with pytest.raises(SystemExit, match="the authors' colouring needs a generator with their conventions"):
        main(["sample", "--refiner", str(refiner_file), "--num", "1", "--out", str(tmp_path / "odd")])
    assert not (tmp_path / "odd" / "settings.json").exists()
