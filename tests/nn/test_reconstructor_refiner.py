"""Reconstructor (PIFu-style prior source) and the refinement U-Net with its PatchGAN."""

import dataclasses

import pytest
import torch

from get3dhuman import Generator, Reconstructor, Refiner
from get3dhuman.nn import MultiScalePatchDiscriminator
from get3dhuman.nn.generator import PRESETS
from get3dhuman.ops import reference_query_field
from get3dhuman.train.reconstructor import PRESETS as RECONSTRUCTOR_PRESETS
from get3dhuman.train.reconstructor import evaluate_reconstruction


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_reconstructor_volumes_match_the_generator(preset):
    torch.manual_seed(0)
    reconstructor, generator = Reconstructor(preset).eval(), Generator(preset).eval()
    side = reconstructor.config.backbone_resolution
    with torch.no_grad():
        shape_volume, texture_volume = reconstructor(torch.randn(2, 3, side, side))
        generated, generated_texture = generator(torch.randn(2, generator.config.z_dim), torch.randn(2, generator.config.z_dim))
    assert shape_volume.shape == generated.volume.shape and texture_volume.shape == generated_texture.shape
    # Same decoders: a generator's volumes can be pulled towards the reconstructor's.
    decoders = lambda model: {k: v.shape for k, v in model.state_dict().items() if k.startswith("mlp_")}  # noqa: E731
    assert decoders(reconstructor) == decoders(generator)


def test_reconstructor_queries_and_gradients():
    torch.manual_seed(0)
    reconstructor = Reconstructor("tiny")
    image = torch.randn(2, 3, 32, 32)
    points = torch.rand(2, 80, 3) * 2 - 1
    shape_volume, texture_volume = reconstructor(image)
    occupancy = reconstructor.query_occupancy(shape_volume, points)
    expected = reference_query_field(reconstructor.mlp_shape, shape_volume, points, torch.eye(4).expand(2, 4, 4))
    assert torch.allclose(occupancy, expected[:, 0], atol=1e-5)
    color = reconstructor.query_color(shape_volume, texture_volume, points)
    (occupancy.sum() + color.sum()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in reconstructor.parameters())
    with pytest.raises(ValueError, match="image must be"):
        reconstructor(torch.randn(2, 3, 64, 64))


def test_refiner_official_widths_and_output():
    refiner = Refiner()
    widths = [encoder[0].out_channels for encoder in refiner.encoders]
    assert widths == [64, 128, 256, 512, 1024]
    small = Refiner(base_channels=8, depth=2).eval()
    image = torch.rand(2, 3, 16, 24) * 2 - 1
    with torch.no_grad():
        out = small(image)
        assert out.shape == image.shape and out.abs().max() < 1
        assert torch.equal(out, small(image))  # inference is deterministic
        assert not torch.allclose(small.train()(image), out)  # training mode normalises by batch statistics
    with pytest.raises(ValueError, match="divisible by 4"):
        small(torch.randn(1, 3, 18, 16))
    with pytest.raises(ValueError, match=r"^image must be \[B, 3, H, W\] with H and W divisible by 4, got \(1, 4, 16"):
        small(torch.randn(1, 4, 16, 16))


def test_instance_normalised_refiner_is_the_same_in_training_and_inference():
    torch.manual_seed(0)
    refiner = Refiner(base_channels=8, depth=2, norm="instance")
    assert refiner.sizes["norm"] == "instance"
    images = torch.rand(3, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        trained = refiner.train()(images)
        assert torch.allclose(refiner.eval()(images), trained, atol=1e-6)
        assert torch.allclose(refiner(images[1:2]), trained[1:2], atol=1e-6)  # no image sees another's statistics
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in refiner.modules())
    with pytest.raises(ValueError, match="norm must be one of .*'batch', 'instance'.* got 'layer'"):
        Refiner(norm="layer")


@pytest.mark.parametrize("norm", ["batch", "instance"])
def test_refiner_gradients_reach_every_parameter(norm):
    torch.manual_seed(0)
    refiner = Refiner(base_channels=8, depth=2, norm=norm)
    refiner(torch.randn(2, 3, 16, 16)).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in refiner.parameters())


def test_residual_refiner_starts_as_the_identity_and_learns():
    torch.manual_seed(0)
    refiner = Refiner(base_channels=8, depth=2, residual=True)
    image = (torch.rand(2, 3, 16, 16) * 2 - 1).index_fill(3, torch.tensor([0]), -1.0)  # a saturated column
    assert torch.equal(refiner(image), image)
    background = torch.full_like(image, -1.0)
    (refiner(background) - 0.3).square().mean().backward()
    assert bool((refiner.head.bias.grad < 0).all())  # saturated pixels learn too, from the zero head
    refiner.zero_grad()
    (refiner(image) - 0.3).square().mean().backward()
    torch.optim.SGD(refiner.parameters(), lr=0.01).step()
    refiner.zero_grad()
    (refiner(image) - 0.3).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in refiner.parameters())
    with pytest.raises(ValueError, match="out_channels == in_channels"):
        Refiner(in_channels=4, residual=True)


def test_multiscale_patch_discriminator():
    torch.manual_seed(0)
    discriminator = MultiScalePatchDiscriminator(in_channels=6, base_channels=8)
    x = torch.randn(2, 6, 64, 64)
    outputs = discriminator(x)
    assert len(outputs) == 2
    full, half = outputs
    assert full[0].shape[-1] > half[0].shape[-1]  # the second scale sees a down-sampled input
    assert full[-1].shape[1] == 1 and half[-1].shape[1] == 1  # patch logits
    sum(o[-1].sum() for o in outputs).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in discriminator.parameters())


def test_the_packaged_reconstructor_reconstructs_humans_it_never_saw():
    """The shipped stage-1 model (TRAINING.md) against an untrained one, on synthetic humans of
    another seed than its training's and its evaluation's: occupancy IoU and Chamfer distance."""
    trained = Reconstructor.from_pretrained()
    assert trained.config == PRESETS["small"] and not trained.training
    assert torch.equal(trained.calibration, Generator.from_pretrained().calibration)
    config = dataclasses.replace(RECONSTRUCTOR_PRESETS["small"], seed=123, eval_humans=4, eval_points=5000,
                                 eval_mesh_resolution=48, eval_surface_points=1024)
    metrics = evaluate_reconstruction(trained, config)
    torch.manual_seed(0)
    untrained = evaluate_reconstruction(Reconstructor("small").eval(), config)
    assert metrics["iou"] > 0.7 and metrics["iou"] > untrained["iou"] + 0.3, (metrics, untrained)
    assert metrics["chamfer"] < 0.1 * untrained["chamfer"], (metrics, untrained)
