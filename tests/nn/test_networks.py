"""StyleGAN2 backbone and HGFilter: the authors' checkpoint layout and independent checks."""

import pytest
import torch
import torch.nn.functional as F
from inputs import official_checkpoint_layout

from get3dhuman.nn import HGFilter, ImplicitDecoder, ResNetDiscriminator, StyleGAN2Generator
from get3dhuman.nn.discriminator import minibatch_stddev
from get3dhuman.nn.stylegan2 import conv2d_resample, modulated_conv2d, setup_filter, upfirdn2d, upsample2d


def layout(module):
    return {name: tuple(t.shape) for name, t in module.state_dict().items()}


def tiny_generator(**overrides):
    config = dict(z_dim=32, w_dim=32, img_resolution=16, img_channels=4, channel_base=256, channel_max=32)
    torch.manual_seed(0)
    return StyleGAN2Generator(**{**config, **overrides})


@pytest.mark.parametrize("branch", ["shape", "texture"])
def test_official_backbone_matches_the_checkpoint_layout(branch):
    assert layout(StyleGAN2Generator()) == official_checkpoint_layout(f"backbone_{branch}.")


@pytest.mark.parametrize("branch, in_channels", [("shape", 16), ("texture", 32)])
def test_official_filter_matches_the_checkpoint_layout(branch, in_channels):
    assert layout(HGFilter(in_channels)) == official_checkpoint_layout(f"filter_{branch}.")


@pytest.mark.parametrize("branch", ["shape", "texture"])
def test_official_decoder_matches_the_checkpoint_layout(branch):
    decoder = getattr(ImplicitDecoder, f"official_{branch}")()
    assert layout(decoder) == official_checkpoint_layout(f"mlp_{branch}.")


def test_fir_upsampling_preserves_constants():
    kernel = setup_filter()
    assert kernel.sum().item() == pytest.approx(1.0)
    out = upsample2d(torch.full((1, 2, 8, 8), 3.0), kernel)
    assert out.shape == (1, 2, 16, 16)
    assert torch.allclose(out[:, :, 2:-2, 2:-2], torch.full((1, 2, 12, 12), 3.0))


def test_upfirdn2d_impulse_response_is_the_flipped_kernel():
    kernel = torch.arange(16.0).reshape(4, 4)
    x = torch.zeros(1, 1, 7, 7)
    x[0, 0, 3, 3] = 1
    out = upfirdn2d(x, kernel)  # valid convolution: 7 - 4 + 1 = 4
    assert torch.equal(out[0, 0], kernel)  # a true convolution of an impulse reproduces the kernel


def _full_true_conv(x, weight):
    """Full (zero-padded) true convolution: [1, I, H, W] * [O, I, k, k] -> [1, O, H + k - 1, W + k - 1]."""
    k = weight.shape[-1]
    return F.conv2d(x, weight.flip([2, 3]), padding=k - 1)


@pytest.mark.parametrize("up", [1, 2])
def test_modulated_conv_equals_explicit_per_sample_weights(up):
    torch.manual_seed(0)
    x, weight, styles = torch.randn(3, 4, 6, 6), torch.randn(5, 4, 3, 3), torch.randn(3, 4)
    kernel = setup_filter()
    out = modulated_conv2d(x, weight, styles, up=up, padding=1, kernel=kernel, flip_weight=up == 1)
    for b in range(3):
        w = weight * styles[b].reshape(1, 4, 1, 1)
        w = w / (w.square().sum([1, 2, 3], keepdim=True) + 1e-8).sqrt()
        if up == 1:
            expected = F.conv2d(x[b : b + 1], w, padding=1)
        else:
            # Up-sample first (zero insertion + FIR, gain 4), then convolve: linear
            # shift-invariant steps commute, so this equals StyleGAN2's transposed form.
            inserted = torch.zeros(1, 4, 12, 12)
            inserted[:, :, ::2, ::2] = x[b : b + 1]
            fir = (kernel * 4).flip([0, 1]).expand(4, 1, 4, 4)
            smooth = F.conv2d(inserted, fir, padding=3, groups=4)  # full true convolution with the FIR
            expected = _full_true_conv(smooth, w)[:, :, 2:14, 2:14]
        assert torch.allclose(out[b : b + 1], expected, atol=1e-5), b


def test_mapping_normalises_z_and_truncates_towards_w_avg():
    generator = tiny_generator()
    mapping = generator.mapping.eval()
    mapping.w_avg.normal_()
    z = torch.randn(3, 32)
    ws = mapping(z)
    assert ws.shape == (3, generator.synthesis.num_ws, 32)
    assert torch.allclose(ws, ws[:, :1].expand_as(ws))  # one w broadcast to every layer
    assert torch.allclose(mapping(3 * z), ws, atol=1e-5)  # z is normalised to unit second moment
    truncated = mapping(z, truncation_psi=0.0, truncation_cutoff=2)
    assert torch.allclose(truncated[:, :2], mapping.w_avg.expand(3, 2, 32))
    assert torch.allclose(truncated[:, 2:], ws[:, 2:])
    assert torch.allclose(mapping(z, truncation_psi=0.5), (ws + mapping.w_avg) / 2, atol=1e-6)


def test_w_avg_tracks_w_in_training_only():
    generator = tiny_generator()
    generator.train()(torch.randn(4, 32))
    assert generator.mapping.w_avg.abs().sum() > 0
    before = generator.mapping.w_avg.clone()
    generator.eval()(torch.randn(4, 32))
    assert torch.equal(generator.mapping.w_avg, before)


def test_generator_shapes_num_ws_and_determinism():
    generator = tiny_generator().eval()
    assert generator.synthesis.num_ws == 2 * 3 - 1 + 1  # b4: conv1; b8, b16: conv0 + conv1; last torgb
    for module in generator.modules():
        if hasattr(module, "noise_strength"):
            module.noise_strength.data.fill_(0.5)
    z = torch.randn(2, 32)
    with torch.no_grad():
        out = generator(z)
        assert out.shape == (2, 4, 16, 16)
        assert torch.equal(out, generator(z))  # 'const' noise: same latent, same output
        assert not torch.equal(out, generator(z, noise_mode="random"))
        assert not torch.equal(out, generator(z, noise_mode="none"))
        # Samples are independent of the batch (to rounding: GEMM paths differ by batch size).
        assert torch.allclose(out[1:], generator(z[1:]), atol=1e-5)


def test_style_mixing():
    generator = tiny_generator().eval()
    z, other = torch.randn(2, 32), torch.randn(2, 32)
    with torch.no_grad():
        assert torch.allclose(generator(z, mix_z=other, mix_cutoff=generator.synthesis.num_ws), generator(z))
        assert torch.allclose(generator(z, mix_z=other, mix_cutoff=0), generator(other))
        mixed = generator(z, mix_z=other, mix_cutoff=2)
        assert not torch.allclose(mixed, generator(z)) and not torch.allclose(mixed, generator(other))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"z": torch.randn(2, 31)}, "z must be"),
        ({"z": torch.full((1, 32), float("nan"))}, "z must be finite"),
        ({"z": torch.randn(1, 32), "noise_mode": "fresh"}, "noise_mode"),
        ({"z": torch.randn(1, 32), "mix_z": torch.randn(1, 32)}, "mix_cutoff"),
        ({"z": torch.randn(1, 32), "mix_z": torch.randn(1, 8), "mix_cutoff": 1}, "mix_z must be"),
    ],
)
def test_bad_latents_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_generator()(**kwargs)


def test_gradients_reach_every_parameter():
    generator = tiny_generator()
    generator(torch.randn(2, 32), mix_z=torch.randn(2, 32), mix_cutoff=3).square().mean().backward()
    missing = [name for name, p in generator.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_synthesis_clamps_activations():
    generator = tiny_generator(conv_clamp=0.01).eval()
    with torch.no_grad():
        out = generator(torch.randn(2, 32))
    # Each block adds a torgb output clamped to +-0.01 to the up-sampled (constant-preserving) image.
    assert out.abs().max() <= 0.01 * len(generator.synthesis.block_resolutions) + 1e-6


def test_hgfilter_sizes_and_gradients():
    torch.manual_seed(0)
    hg = HGFilter(16)
    with torch.no_grad():
        assert hg(torch.randn(1, 16, 512, 512)).shape == (1, 256, 128, 128)  # 512 -> 257 -> 128
    small = HGFilter(8, depth=2, features=128)
    x = torch.randn(2, 8, 64, 64)
    out = small(x)
    assert out.shape == (2, 128, 16, 16)
    out.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in small.parameters())
    with pytest.raises(ValueError, match="x must be"):
        small(torch.randn(2, 3, 64, 64))


@pytest.mark.parametrize("branch, channels", [("shape", 256), ("texture", 512)])
def test_official_discriminator_matches_the_checkpoint_layout(branch, channels):
    assert layout(ResNetDiscriminator(img_channels=channels)) == official_checkpoint_layout(f"Dis_{branch}.")


@pytest.mark.parametrize("kernel_size", [1, 3])
def test_downsampling_conv_equals_filter_then_strided_correlation(kernel_size):
    torch.manual_seed(0)
    x, weight = torch.randn(2, 3, 8, 8), torch.randn(5, 3, kernel_size, kernel_size)
    kernel = setup_filter()
    out = conv2d_resample(x, weight, kernel, down=2, padding=kernel_size // 2)
    # Full FIR smoothing, then the valid correlation, sampled every second pixel; the first
    # kept sample is where the padded and the full results line up.
    smooth = F.conv2d(x, kernel.flip([0, 1]).expand(3, 1, 4, 4), padding=3, groups=3)
    start = 1 if kernel_size == 3 else 2
    expected = F.conv2d(smooth, weight)[:, :, start::2, start::2][:, :, :4, :4]
    assert out.shape == (2, 5, 4, 4)
    assert torch.allclose(out, expected, atol=1e-5)


def test_minibatch_stddev_appends_the_group_standard_deviation():
    x = torch.randn(8, 3, 4, 4)
    out = minibatch_stddev(x, group_size=4)
    assert out.shape == (8, 4, 4, 4) and torch.equal(out[:, :3], x)
    groups = x.reshape(4, 2, 3, 4, 4)  # sample i belongs to slot i % 2 of the groups
    expected = groups.std(0, unbiased=False).mean([1, 2, 3])
    assert torch.allclose(out[:, 3, 0, 0], expected.repeat(4), atol=1e-5)
    with pytest.raises(ValueError, match="multiple"):
        minibatch_stddev(torch.randn(6, 3, 4, 4), group_size=4)


def test_discriminator_outputs_and_gradients():
    torch.manual_seed(0)
    discriminator = ResNetDiscriminator(img_resolution=16, img_channels=8, channel_base=256, channel_max=32)
    logits = discriminator(torch.randn(4, 8, 16, 16))
    assert logits.shape == (4, 1)
    logits.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in discriminator.parameters())
    with pytest.raises(ValueError, match="x must be"):
        discriminator(torch.randn(4, 8, 32, 32))


def test_evaluation_mode_restores_each_flag_even_on_error():
    from get3dhuman.nn import evaluation_mode

    training, frozen = torch.nn.Linear(2, 2), torch.nn.Sequential(torch.nn.Dropout())
    frozen.eval()
    with pytest.raises(RuntimeError, match="inside"):
        with evaluation_mode(training, frozen):
            assert not training.training and not frozen.training and not frozen[0].training
            raise RuntimeError("inside")
    assert training.training and not frozen.training and not frozen[0].training


def test_frozen_parameters_let_gradients_reach_only_the_inputs():
    from get3dhuman.nn import frozen_parameters

    layer, fixed = torch.nn.Linear(3, 2), torch.nn.Linear(2, 1)
    fixed.bias.requires_grad_(False)
    x = torch.randn(4, 3, requires_grad=True)
    with frozen_parameters(layer, fixed):
        fixed(layer(x)).sum().backward()
    assert x.grad is not None and layer.weight.grad is None and fixed.weight.grad is None
    assert layer.weight.requires_grad and fixed.weight.requires_grad and not fixed.bias.requires_grad
