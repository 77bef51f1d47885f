"""The 2-D image generator of stage 2: StyleGAN2-ADA network pickles read as data, portrait
StyleGAN2 generators, background matting, and prior caches made from a generator's images."""

import dataclasses
import json
import os
import pickle

import numpy as np
import pytest
import torch
from inputs import generator_with_a_surface, write_network_pickle
from PIL import Image

from get3dhuman import cli
from get3dhuman.nn import Generator, ImageGenerator, StyleGAN2Generator
from get3dhuman.nn.generator import resolve_config
from get3dhuman.nn.image_generator import frame_figures, matte_background
from get3dhuman.nn.network_pickle import read_network_pickle
from get3dhuman.render import silhouettes
from get3dhuman.synthetic import human_parameters
from get3dhuman.synthetic.human import INDEX
from get3dhuman.synthetic.preview import stand_in_images, trace_humans
from get3dhuman.train import PRIOR_PRESETS, RECONSTRUCTOR_PRESETS, induce_priors, train_reconstructor
from get3dhuman.train.prior import MATTE_KEY, PriorCache, figure_masks, latents, load_reconstructor, silhouette_iou
from get3dhuman.train.refiner import PRESETS as REFINER_PRESETS
from get3dhuman.train.refiner import RefinerTrainer

TINY_Z = resolve_config("tiny").z_dim


def tiny_network(portrait=True, z_dim=TINY_Z, seed=0):
    torch.manual_seed(seed)
    network = StyleGAN2Generator(z_dim=z_dim, w_dim=16, img_resolution=16, img_channels=3, mapping_layers=8,
                                 channel_base=256, channel_max=32, conv_clamp=256, portrait=portrait).eval()
    with torch.no_grad():  # visible noise and a non-zero average style, so that a misread tensor shows
        for name, value in network.named_parameters():
            if name.endswith("noise_strength"):
                value.fill_(0.3)
        network.mapping.w_avg.normal_()
    return network


def kwargs_of(network, **changes):
    synthesis = network.synthesis
    kwargs = {"z_dim": network.z_dim, "c_dim": 0, "w_dim": 16, "img_resolution": synthesis.img_resolution,
              "img_channels": 3, "square": not synthesis.portrait, "mapping_kwargs": {"num_layers": 8},
              "synthesis_kwargs": {"channel_base": 256, "channel_max": 32, "conv_clamp": 256, "architecture": "skip",
                                   "num_fp16_res": 4}}
    return {**kwargs, **changes}


def expected_images(network, z, psi=1.0):
    with torch.no_grad():
        return ((network(z, psi).clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1)


@pytest.mark.parametrize("portrait", [True, False])
@pytest.mark.parametrize("protocol", [2, 4])
def test_a_network_pickle_reads_back_to_the_same_generator(tmp_path, portrait, protocol):
    network, other = tiny_network(portrait), tiny_network(portrait, seed=1)
    path = tmp_path / "network.pkl"
    plain = torch.nn.Sequential(torch.nn.Linear(2, 2))  # a torch container pickled as torch pickles it
    write_network_pickle(path, {"G": other, "D": torch.nn.Linear(2, 2), "G_ema": network, "plain": plain,
                                "training_set_kwargs": {"resolution": 16, "xflip": False}},
                         {"G_ema": kwargs_of(network), "G": kwargs_of(other)}, protocol, (torch.nn.Sequential,))
    model = ImageGenerator.load(path)
    z = torch.randn(3, TINY_Z, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        images = model(z, 0.7)
    assert images.shape == (3, 16, 8 if portrait else 16, 3) and model.image_shape == images.shape[1:3]
    assert torch.equal(images, expected_images(network, z, 0.7))
    assert not model.training
    assert torch.equal(ImageGenerator.load(path, network="G")(z), expected_images(other, z))
    records = read_network_pickle(path)
    assert records["training_set_kwargs"] == {"resolution": 16, "xflip": False}
    assert set(records["G_ema"].state_dict()) == set(network.state_dict())
    assert records["D"].class_name == "Linear" and set(records["D"].state_dict()) == {"weight", "bias"}
    assert records["plain"].class_name == "torch.nn.modules.container.Sequential"
    assert torch.equal(records["plain"].state_dict()["0.weight"], plain[0].weight.detach())


def test_images_agree_on_every_device(device):
    network = tiny_network()
    model = ImageGenerator(z_dim=TINY_Z, w_dim=16, img_resolution=16, mapping_layers=8, channel_base=256,
                           channel_max=32, portrait=True)
    model.network.load_state_dict(network.state_dict())
    z = torch.randn(3, TINY_Z, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        images = model.to(device)(z.to(device), 0.7)
        squares = frame_figures(images, 24, figure_height=0.9).images
    assert images.device.type == squares.device.type == device
    expected = expected_images(network, z, 0.7)
    assert torch.allclose(images.cpu(), expected, atol=1e-4)  # CUDA: Triton's fused bias_act and modulation
    assert torch.allclose(squares.cpu(), frame_figures(expected, 24, figure_height=0.9).images, atol=1e-4)


def test_reading_a_pickle_runs_nothing_and_names_what_it_refuses(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"G_ema": Payload()}))
    with pytest.raises(ValueError, match=r"refers to (posix|os)\.system"):
        ImageGenerator.load(path)
    assert not marker.exists()
    path.write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="neither an image generator file"):
        ImageGenerator.load(path)
    path.write_bytes(pickle.dumps({"G_ema": 3}))
    with pytest.raises(ValueError, match="holds no dict of networks"):
        read_network_pickle(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageGenerator.load(tmp_path / "missing.pkl")


def test_other_architectures_and_networks_are_refused_by_name(tmp_path):
    network = tiny_network()
    path = tmp_path / "network.pkl"
    cases = [({"c_dim": 10}, "c_dim must be 0"),
             ({"synthesis_kwargs": {"architecture": "resnet"}}, "architecture must be 'skip'"),
             ({"mapping_kwargs": {"num_layers": 8, "lr_multiplier": 0.1}}, "lr_multiplier must be 0.01"),
             ({"synthesis_kwargs": {"channel_base": 512, "channel_max": 32}}, "does not fit a StyleGAN2 generator")]
    for changes, message in cases:
        write_network_pickle(path, {"G_ema": network}, {"G_ema": kwargs_of(network, **changes)})
        with pytest.raises(ValueError, match=message):
            ImageGenerator.load(path)
    with pytest.raises(ValueError, match=r"network must be one of the pickle's networks \['G_ema'\]"):
        ImageGenerator.load(path, network="G")
    write_network_pickle(path, {"G_ema": torch.nn.Linear(3, 3)}, {})
    with pytest.raises(ValueError, match="is not a StyleGAN2 generator"):
        ImageGenerator.load(path)

    class SynthesisInput(torch.nn.Module):  # StyleGAN3's first synthesis layer
        pass

    network.synthesis.input = SynthesisInput()
    write_network_pickle(path, {"G_ema": network}, {"G_ema": kwargs_of(network)})
    with pytest.raises(ValueError, match="StyleGAN3 generator"):
        ImageGenerator.load(path)


def test_saved_generators_load_back_and_portrait_layers_are_half_as_wide(tmp_path):
    network = tiny_network()
    assert network.synthesis.b4.const.shape == (32, 4, 2)
    assert network.synthesis.b16.conv1.noise_const.shape == (16, 8)
    z = torch.randn(2, TINY_Z)
    with torch.no_grad():
        assert network(z, noise_mode="random").shape == (2, 3, 16, 8)
    model = ImageGenerator(z_dim=TINY_Z, w_dim=16, img_resolution=16, mapping_layers=8, channel_base=256,
                           channel_max=32, portrait=True)
    model.network.load_state_dict(network.state_dict())
    model.save_pretrained(tmp_path / "generator.safetensors")
    loaded = ImageGenerator.load(tmp_path / "generator.safetensors")
    assert loaded.settings == model.settings
    with torch.no_grad():
        assert torch.equal(loaded(z), expected_images(network, z))
    with pytest.raises(ValueError, match="img_channels must be 3"):
        ImageGenerator(img_channels=16)


def test_the_matte_is_the_background_coloured_region_reaching_the_border():
    params = human_parameters(torch.randn(3, 512, generator=torch.Generator().manual_seed(0)))
    rendering = trace_humans(params, 64)
    gray = torch.tensor([0.8, 0.8, 0.8])
    inside = rendering.mask > 0.5
    images = torch.where(inside.unsqueeze(-1), rendering.color * 0.5, gray)
    # Oracle: scikit-image's labelling of the background's 4-connected regions.
    measure = pytest.importorskip("skimage.measure")
    regions = torch.from_numpy(np.stack([measure.label(~image.numpy(), connectivity=1) for image in inside]))
    reach = [set(torch.cat([r[0], r[-1], r[:, 0], r[:, -1]]).tolist()) - {0} for r in regions]
    background = torch.stack([torch.isin(r, torch.tensor(sorted(s))) for r, s in zip(regions, reach)])
    assert torch.equal(matte_background(images, 0.02), ~background)
    assert (~background & ~inside).any()  # an enclosed patch of background, kept as foreground
    # A ring of colour around a patch of the background colour: the patch is inside the figure.
    ring = torch.ones(1, 9, 9, 3)
    ring[:, 2:7, 2:7] = torch.tensor([0.2, 0.3, 0.4])
    ring[:, 3:6, 3:6] = 1.0
    foreground = matte_background(ring)
    assert foreground[0, 2:7, 2:7].all() and foreground.sum() == 25
    # A winding corridor of background from the border reaches deep inside: still background.
    maze = torch.zeros(1, 7, 7, 3)
    for row, col in [(0, 1), (1, 1), (1, 2), (1, 3), (1, 4), (1, 5), (2, 5), (3, 5), (3, 4), (3, 3), (3, 2), (4, 2),
                     (5, 2), (5, 3), (5, 4)]:
        maze[0, row, col] = 1.0
    maze[0, 0] = maze[0, -1] = maze[0, :, 0] = maze[0, :, -1] = 1.0
    assert torch.equal(matte_background(maze), maze[..., 0] == 0)
    with pytest.raises(ValueError, match=r"images must be \[B, H, W, 3\]"):
        matte_background(torch.ones(9, 9, 3))


def test_unframed_images_are_padded_to_a_centred_square():
    images = torch.ones(2, 8, 4, 3)
    images[:, 2:6, 1:3] = torch.tensor([0.5, 0.25, 0.75])
    square, masks = frame_figures(images, 8)
    expected = torch.zeros(2, 8, 8, 3)
    expected[:, 2:6, 3:5] = torch.tensor([0.5, 0.25, 0.75])
    assert torch.equal(square, expected) and torch.equal(masks, (expected[..., 0] > 0).float())
    small = frame_figures(images, 4).images
    assert small.shape == (2, 4, 4, 3)
    # Oracle: Pillow's bilinear resize (antialiased: its filter widens with the scale), per channel.
    from PIL import Image

    pillow = [np.asarray(Image.fromarray(expected[0, ..., c].numpy(), mode="F").resize((4, 4), Image.BILINEAR))
              for c in range(3)]
    assert torch.allclose(small[1], torch.from_numpy(np.stack(pillow, -1)), atol=1e-6)


def test_figures_are_framed_centred_and_as_tall_as_asked():
    images = torch.ones(1, 16, 8, 3)
    images[:, 2:10, 3:5] = 0.5  # a figure 8 rows tall, centred on row 6, column 4
    framed = frame_figures(images, 16, figure_height=0.5).images
    expected = torch.zeros(1, 16, 16, 3)
    expected[:, 4:12, 7:9] = 0.5  # the window of 16 rows centred on the figure
    assert torch.equal(framed, expected)
    tall = frame_figures(images, 16, figure_height=1.0).images  # a window of 8, resized to 16: the figure fills it
    assert (tall[0, :, :, 0] > 0.4).any(1).all() and tall[0, :, :3].max() == 0
    assert torch.equal(frame_figures(torch.ones(1, 16, 8, 3), 16, figure_height=0.5).images, torch.zeros(1, 16, 16, 3))
    with pytest.raises(ValueError, match=r"figure_height must be in \(0, 1\]"):
        frame_figures(images, 16, figure_height=1.5)


def test_a_person_in_a_larger_picture_is_framed_as_the_training_views_show_one():
    # Oracle: the renderer. 1.8 m synthetic humans on white in an off-centre portrait crop of a
    # 256^2 view, framed to 64^2, against their own 64^2 views through the training camera.
    params = human_parameters(torch.randn(8, 512, generator=torch.Generator().manual_seed(3)))
    params[:, INDEX["height"]] = 1.8
    view = trace_humans(params, 256)
    picture = torch.where(view.mask.unsqueeze(-1) > 0.5, view.color * 0.8, torch.ones(3))[:, :, 50:178]
    framed = frame_figures(picture, 64, 0.02, figure_height=0.9).masks > 0.5
    truth = trace_humans(params, 64).mask > 0.5
    iou = (framed & truth).sum((1, 2)) / (framed | truth).sum((1, 2))
    assert iou.min() > 0.9 and iou.mean() > 0.94


@pytest.fixture(scope="module")
def reconstructor(tmp_path_factory):
    root = tmp_path_factory.mktemp("image-generator")
    train_reconstructor(dataclasses.replace(RECONSTRUCTOR_PRESETS["tiny"], steps=1, eval_every=100), str(root / "rec"),
                        progress=False)
    network = tiny_network()
    write_network_pickle(root / "human.pkl", {"G_ema": network}, {"G_ema": kwargs_of(network)})
    return root


def test_a_prior_cache_of_a_generators_images(reconstructor, tmp_path):
    pickle_path = str(reconstructor / "human.pkl")
    config = dataclasses.replace(PRIOR_PRESETS["tiny"], image_generator=pickle_path, albedo_images=False,
                                 truncation_psi=0.8)
    induce_priors(config, str(reconstructor / "rec"), str(tmp_path / "prior"), progress=False)
    cache = PriorCache(str(tmp_path / "prior"))
    assert "albedo" not in cache.keys and MATTE_KEY in cache.keys
    entries = cache.batch(range(len(cache)))
    z = latents(config, 0, config.count)
    assert torch.equal(entries["z"], z)
    network = read_network_pickle(pickle_path)["G_ema"]
    side = resolve_config("tiny").backbone_resolution
    generated = expected_images(ImageGenerator.from_pickled(network).network, z, 0.8)
    framed = frame_figures(generated, side, figure_height=0.9)
    expected = framed.images
    assert torch.equal(entries["image"], (expected * 255).round().to(torch.uint8))
    # The matte, framed as the images, tells where the figure is: black figure pixels included.
    assert torch.equal(entries[MATTE_KEY], (framed.masks * 255).round().to(torch.uint8))
    assert torch.equal(figure_masks(cache, range(len(cache)), entries["image"]), framed.masks > 0.5)
    # A cache made before the mattes (its prior.json without "mattes") reads without them and
    # finds figures by colour, and is not completed with shards that hold them.
    path = tmp_path / "prior" / "prior.json"
    path.write_text(json.dumps({k: v for k, v in json.loads(path.read_text()).items() if k != "mattes"}))
    older = PriorCache(str(tmp_path / "prior"))
    first = older.batch([0])["image"]
    assert MATTE_KEY not in older.keys and torch.equal(figure_masks(older, [0], first), silhouettes(first))
    with pytest.raises(ValueError, match=r"other settings \(mattes\)"):
        induce_priors(dataclasses.replace(config, count=config.count + 1), str(reconstructor / "rec"),
                      str(tmp_path / "prior"), progress=False)
    model = load_reconstructor(str(reconstructor / "rec"), "tiny")
    with torch.no_grad():
        shape, _ = model(expected[:4].permute(0, 3, 1, 2) * 2 - 1)  # the volumes of the unrounded images
    assert torch.allclose(entries["shape"][:4], shape, rtol=2e-3, atol=1e-4)  # stored as float16
    with pytest.raises(ValueError, match="albedo_images: an image generator paints shaded images only"):
        induce_priors(dataclasses.replace(config, albedo_images=True), str(reconstructor / "rec"), str(tmp_path / "b"),
                      progress=False)
    with pytest.raises(ValueError, match="draws latents of 32 dimensions, the preset 'small' has z_dim 256"):
        induce_priors(dataclasses.replace(config, preset="small"), str(reconstructor / "rec"), str(tmp_path / "c"),
                      progress=False)
    assert not (tmp_path / "b" / "prior.json").exists()  # refused before anything was written


def test_silhouette_iou_compares_the_masks_with_the_figures():
    figures = torch.zeros(3, 8, 8, dtype=torch.bool)
    figures[0, :4, :4] = True  # 2 x 2 mask cells of figure
    figures[1, :4, :4] = True
    figures[1, 4, 4] = True  # a quarter of a cell: not counted
    masks = torch.zeros(3, 4, 4)
    masks[0, :2, :2] = 1.0  # the same cells
    masks[1, :2, 1:3] = 1.0  # shifted by one cell: 2 shared of 6
    assert torch.allclose(silhouette_iou(figures, masks), torch.tensor([1.0, 1 / 3, 1.0]))  # both empty: 1
    with pytest.raises(ValueError, match="the same K"):
        silhouette_iou(figures[:2], masks)


def test_stage_4_finds_the_figures_of_real_images_by_their_matte(reconstructor, tmp_path):
    settings = {"image_generator": str(reconstructor / "human.pkl"), "albedo_images": False, "images_only": True}
    induce_priors(dataclasses.replace(PRIOR_PRESETS["tiny"], **settings), None, str(tmp_path / "real"), progress=False)
    induce_priors(dataclasses.replace(PRIOR_PRESETS["tiny"], images_only=True), None, str(tmp_path / "stand-in"),
                  progress=False)
    real, stand_in = PriorCache(str(tmp_path / "real")), PriorCache(str(tmp_path / "stand-in"))
    indices = range(4)
    # Black pixels of a figure (hair, clothes) would be background by their colour; so would the
    # figure's thinly covered edge pixels (antialiased) be figure: the matte tells.
    images, matte = (real.batch(indices)[key] for key in ("image", MATTE_KEY))
    assert torch.equal(figure_masks(real, indices, images), matte > 127) and not torch.equal(matte > 127, silhouettes(images))
    pictures = stand_in.batch(indices)["image"]
    assert torch.equal(figure_masks(stand_in, indices, pictures), silhouettes(pictures))
    trainer = RefinerTrainer(REFINER_PRESETS["tiny"], real, Generator("tiny"))
    trainer.generator = generator_with_a_surface(seen_from_the_front=True)  # renders that show a surface
    _, _, overlap = trainer.images(indices)
    render_masks = torch.stack([trainer.render(i)[1] for i in indices])
    assert render_masks.any() and overlap.any()
    assert torch.equal(overlap, render_masks & (matte > 127))


def test_train_prior_takes_an_image_generator_on_the_command_line(reconstructor, tmp_path, capsys):
    pickle_path = str(reconstructor / "human.pkl")
    out = tmp_path / "prior"
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps({"prior": {"count": 4, "shard_size": 4, "images_only": True}}))
    cli.main(["train", "prior", "--preset", "tiny", "--image-generator", pickle_path, "--config", str(settings),
              "--out", str(out), "--quiet"])
    recorded = json.loads((out / "prior.json").read_text())
    assert recorded["image_generator"] == pickle_path and recorded["albedo_images"] is False
    cache = PriorCache(str(out))
    assert cache.keys == ("z", "image", MATTE_KEY)
    # `images` shows the cache's images, two to a row.
    cli.main(["images", "--preset", "tiny", "--image-generator", pickle_path, "--num", "4", "--columns", "2",
              "--out", str(tmp_path / "grid.png")])
    grid = torch.from_numpy(np.asarray(Image.open(tmp_path / "grid.png")).copy())
    cached = cache.batch(range(4))["image"]
    assert torch.equal(grid, torch.cat([torch.cat([cached[0], cached[1]], 1), torch.cat([cached[2], cached[3]], 1)]))
    cli.main(["images", "--preset", "tiny", "--num", "1", "--out", str(tmp_path / "stand-in.png")])
    stand_in = stand_in_images(latents(PRIOR_PRESETS["tiny"], 0, 1), resolve_config("tiny").backbone_resolution)
    stand_in_grid = np.asarray(Image.open(tmp_path / "stand-in.png"))
    assert torch.equal(torch.from_numpy(stand_in_grid[:, :32].copy()), (stand_in[0] * 255).round().to(torch.uint8))
    capsys.readouterr()
    full = {"prior": {"count": 4, "shard_size": 4, "batch_size": 2}}
    settings.write_text(json.dumps(full))
    cli.main(["train", "prior", "--preset", "tiny", "--image-generator", pickle_path, "--reconstructor",
              str(reconstructor / "rec"), "--config", str(settings), "--out", str(tmp_path / "full"), "--quiet"])
    printed = capsys.readouterr().out
    mean = float(printed.split("(first 4 latents): mean ")[1].split(",")[0])
    full = PriorCache(str(tmp_path / "full"))
    entries = full.batch(range(4), ("image", "mask"))
    iou = silhouette_iou(figure_masks(full, range(4), entries["image"]), entries["mask"])
    assert mean == pytest.approx(iou.mean().item(), abs=1e-3)
    settings.write_text(json.dumps({"prior": {"count": 4, "shard_size": 4, "images_only": True}}))
    with pytest.raises(SystemExit, match="--image-generator applies to the prior stage only"):
        cli.main(["train", "reconstructor", "--preset", "tiny", "--image-generator", pickle_path, "--out",
                  str(tmp_path / "rec"), "--quiet"])
    # `export --image-generator` writes the pickle's generator as one file that the option takes too.
    cli.main(["export", "--image-generator", pickle_path, "--dtype", "float16", "--out", str(tmp_path / "g.safetensors")])
    exported = ImageGenerator.load(tmp_path / "g.safetensors")
    z = torch.randn(2, TINY_Z)
    with torch.no_grad():
        assert torch.allclose(exported(z), ImageGenerator.load(pickle_path)(z), atol=5e-3)  # float16 weights
    with pytest.raises(SystemExit, match="get3dhuman train all: image_generator: .* the preset 'small' has z_dim 256"):
        cli.main(["train", "all", "--image-generator", pickle_path, "--out", str(tmp_path / "all"), "--quiet"])
    assert not (tmp_path / "all").exists()  # refused before stage 1 began
    (tmp_path / "plain.bin").write_bytes(b"\0" * 8)
    with pytest.raises(SystemExit, match="neither an image generator file"):
        cli.main(["train", "prior", "--preset", "tiny", "--image-generator", str(tmp_path / "plain.bin"), "--config",
                  str(settings), "--out", str(tmp_path / "other"), "--quiet"])
