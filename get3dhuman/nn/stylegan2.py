"""StyleGAN2 generator: mapping network and 'skip' synthesis network.

Parameter and buffer names follow StyleGAN2-ADA / EG3D (``mapping.fc0.weight``,
``synthesis.b64.conv0.affine.weight``, ``synthesis.b4.const``, ...) so that the authors'
Get3DHuman checkpoint loads, and so does the parametrisation: equalised learning rate (weights
stored unscaled, multiplied by their gain at run time), lr multiplier 0.01 in the mapping
network, FIR [1, 3, 3, 1] resampling, weight demodulation, per-layer noise, conv clamping.
Convolutions with up-sampling are a transposed convolution followed by the FIR filter.

Noise defaults to the stored per-layer constant ('const'), so the same latent gives the same
output; 'random' draws fresh noise (the authors' inference), 'none' disables it.

bias_act and the weight modulation are get3dhuman.ops.stylegan2's: fused Triton kernels on
CUDA tensors where Triton is installed, pure torch otherwise.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from get3dhuman._checks import check_int, check_truncation_psi
from get3dhuman.ops.stylegan2 import bias_act, modulate_weights

NOISE_MODES = ("const", "random", "none")
LRELU_GAIN = math.sqrt(2)


def setup_filter(taps=(1, 3, 3, 1)) -> torch.Tensor:
    """The separable 2-D FIR filter (outer product of `taps`), normalised to sum 1: [k, k]."""
    taps = torch.as_tensor(taps, dtype=torch.float32)
    kernel = torch.outer(taps, taps)
    return kernel / kernel.sum()


def upfirdn2d(x: torch.Tensor, kernel: torch.Tensor, up: int = 1, down: int = 1, padding=(0, 0, 0, 0), gain: float = 1.0) -> torch.Tensor:
    """Up-samples by zero insertion, pads (x0, x1, y0, y1; negative crops), convolves each
    channel with the 2-D FIR `kernel` scaled by `gain`, and keeps every `down`-th sample:
    [B, C, H, W] -> [B, C, H', W']."""
    batch, channels, height, width = x.shape
    if up > 1:
        x = x.reshape(batch, channels, height, 1, width, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1]).reshape(batch, channels, height * up, width * up)
    pad_x0, pad_x1, pad_y0, pad_y1 = padding
    x = F.pad(x, [max(pad_x0, 0), max(pad_x1, 0), max(pad_y0, 0), max(pad_y1, 0)])
    x = x[:, :, max(-pad_y0, 0) : x.shape[2] - max(-pad_y1, 0), max(-pad_x0, 0) : x.shape[3] - max(-pad_x1, 0)]
    # A true convolution: conv2d correlates, so flip the kernel.
    weight = (kernel * gain).flip([0, 1]).to(x.dtype)[None, None].repeat(channels, 1, 1, 1)
    return F.conv2d(x, weight, groups=channels)[:, :, ::down, ::down]


def upsample2d(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """2x FIR up-sampling: [B, C, H, W] -> [B, C, 2H, 2W]; preserves constants."""
    taps = kernel.shape[-1]
    return upfirdn2d(x, kernel, up=2, padding=((taps + 1) // 2, (taps - 2) // 2) * 2, gain=4)


def _correlate(x, weight, stride=1, padding=0, groups=1, transpose=False, flip_weight=True):
    """conv2d / conv_transpose2d; flip_weight=False makes it a true convolution (StyleGAN2's convention)."""
    if not flip_weight and weight.shape[-1] * weight.shape[-2] > 1:
        weight = weight.flip([2, 3])
    if transpose:
        return F.conv_transpose2d(x, weight, stride=stride, padding=padding, groups=groups)
    return F.conv2d(x, weight, stride=stride, padding=padding, groups=groups)


def conv2d_resample(x, weight, kernel, up=1, down=1, padding=0, groups=1, flip_weight=True):
    """2-D convolution with optional 2x up-sampling (a transposed convolution, then the FIR
    `kernel`) or 2x down-sampling (the FIR, then a strided convolution), as StyleGAN2 does:
    [B, I, H, W] -> [B, O, H * up / down, W * up / down]."""
    if (up, down) not in ((1, 1), (2, 1), (1, 2)):
        raise ValueError(f"(up, down) must be (1, 1), (2, 1) or (1, 2), got {(up, down)}")
    if up == 1 and down == 1:
        return _correlate(x, weight, padding=padding, groups=groups, flip_weight=flip_weight)
    out_channels, in_per_group, kernel_h, kernel_w = weight.shape
    taps = kernel.shape[-1]
    if down == 2:
        pad0, pad1 = padding + (taps - down + 1) // 2, padding + (taps - down) // 2
        if kernel_w == 1:  # 1x1: down-sample first, then convolve the smaller image
            x = upfirdn2d(x, kernel, down=2, padding=(pad0, pad1) * 2)
            return _correlate(x, weight, groups=groups, flip_weight=flip_weight)
        x = upfirdn2d(x, kernel, padding=(pad0, pad1) * 2)
        return _correlate(x, weight, stride=2, groups=groups, flip_weight=flip_weight)
    pad0 = padding + (taps + up - 1) // 2 - (kernel_w - 1)
    pad1 = padding + (taps - up) // 2 - (kernel_w - up)
    # Transposed convolution swaps the roles of in/out channels within each group.
    weight = weight.reshape(groups, out_channels // groups, in_per_group, kernel_h, kernel_w).transpose(1, 2)
    weight = weight.reshape(groups * in_per_group, out_channels // groups, kernel_h, kernel_w)
    crop = max(min(-pad0, -pad1), 0)
    x = _correlate(x, weight, stride=up, padding=crop, groups=groups, transpose=True, flip_weight=not flip_weight)
    return upfirdn2d(x, kernel, padding=(pad0 + crop, pad1 + crop) * 2, gain=up**2)


def modulated_conv2d(x, weight, styles, noise=None, up=1, padding=0, kernel=None, demodulate=True, flip_weight=True):
    """StyleGAN2 modulated convolution, one grouped convolution for the whole batch.

    x [B, I, H, W], weight [O, I, k, k], styles [B, I], noise broadcastable to the output.
    Each sample's weight is weight * styles[b] over input channels, demodulated to unit norm
    per output channel when `demodulate`.
    """
    batch = x.shape[0]
    out_channels, in_channels, kernel_h, kernel_w = weight.shape
    w = modulate_weights(weight, styles, demodulate)
    x = x.reshape(1, batch * in_channels, *x.shape[2:])
    w = w.reshape(batch * out_channels, in_channels, kernel_h, kernel_w)
    x = conv2d_resample(x, w, kernel, up=up, padding=padding, groups=batch, flip_weight=flip_weight)
    x = x.reshape(batch, out_channels, *x.shape[2:])
    return x if noise is None else x + noise


def check_like_weights(tensor: torch.Tensor, name: str, module: nn.Module) -> None:
    """Raises ValueError, naming `name`, unless `tensor` has the dtype and device of `module`'s
    weights (torch would fail inside a layer, naming neither)."""
    weight = next(module.parameters())
    if tensor.dtype != weight.dtype or tensor.device != weight.device:
        raise ValueError(f"{name} must be {weight.dtype} on {weight.device} like the network's weights, got "
                         f"{tensor.dtype} on {tensor.device}")


class FullyConnectedLayer(nn.Module):
    """Equalised-learning-rate linear layer (weight [out, in], bias [out])."""

    def __init__(self, in_features, out_features, activation="linear", lr_multiplier=1.0, bias_init=0.0):
        super().__init__()
        self.activation = activation
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init)))
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, in] -> [B, out]."""
        out = x @ (self.weight * self.weight_gain).T
        gain = LRELU_GAIN if self.activation == "lrelu" else 1.0
        return bias_act(out, self.bias * self.bias_gain, self.activation, gain)


class MappingNetwork(nn.Module):
    """z [B, z_dim] -> ws [B, num_ws, w_dim], with the running average w_avg for truncation."""

    def __init__(self, z_dim, w_dim, num_ws, num_layers=8, lr_multiplier=0.01, w_avg_beta=0.998):
        super().__init__()
        self.z_dim, self.w_dim, self.num_ws, self.num_layers = z_dim, w_dim, num_ws, num_layers
        self.w_avg_beta = w_avg_beta
        widths = [z_dim] + [w_dim] * num_layers
        for i in range(num_layers):
            setattr(self, f"fc{i}", FullyConnectedLayer(widths[i], widths[i + 1], "lrelu", lr_multiplier))
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(self, z, truncation_psi=1.0, truncation_cutoff=None, update_w_avg=False):
        """Maps z (normalised to unit second moment) to ws; truncation pulls the first
        `truncation_cutoff` ws (all by default) towards w_avg by 1 - psi."""
        check_truncation_psi(truncation_psi)
        truncation_cutoff = check_int(truncation_cutoff, "truncation_cutoff", 0, none_ok=True)
        z = z.to(self.fc0.weight.dtype)
        x = z * (z.square().mean(1, keepdim=True) + 1e-8).rsqrt()
        for i in range(self.num_layers):
            x = getattr(self, f"fc{i}")(x)
        if update_w_avg:
            self.w_avg.copy_(x.detach().mean(0).lerp(self.w_avg, self.w_avg_beta))
        ws = x.unsqueeze(1).repeat(1, self.num_ws, 1)
        if truncation_psi != 1:
            cutoff = self.num_ws if truncation_cutoff is None else truncation_cutoff
            truncated = self.w_avg.lerp(ws[:, :cutoff], truncation_psi)
            ws = torch.cat([truncated, ws[:, cutoff:]], 1)
        return ws


class SynthesisLayer(nn.Module):
    """Modulated 3x3 convolution (optionally 2x up-sampling), noise, bias, leaky ReLU, clamp."""

    def __init__(self, in_channels, out_channels, w_dim, resolution, up=1, conv_clamp=None, kernel_size=3,
                 portrait=False):
        super().__init__()
        self.resolution, self.up, self.conv_clamp, self.padding = resolution, up, conv_clamp, kernel_size // 2
        self.width = resolution // 2 if portrait else resolution
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.register_buffer("resample_filter", setup_filter())
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.register_buffer("noise_const", torch.randn(resolution, self.width))
        self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x, w, noise_mode="const"):
        """x [B, I, r/up, width/up], w [B, w_dim] -> [B, O, r, width] (width r, or r/2 in portrait)."""
        styles = self.affine(w)
        noise = None
        if noise_mode == "random":
            noise = torch.randn(x.shape[0], 1, self.resolution, self.width, device=x.device, dtype=x.dtype) * self.noise_strength
        elif noise_mode == "const":
            noise = self.noise_const * self.noise_strength
        x = modulated_conv2d(x, self.weight, styles, noise, self.up, self.padding, self.resample_filter, flip_weight=self.up == 1)
        return bias_act(x, self.bias, "lrelu", LRELU_GAIN, self.conv_clamp)


class ToRGBLayer(nn.Module):
    """Modulated (not demodulated) 1x1 convolution to the output channels."""

    def __init__(self, in_channels, out_channels, w_dim, conv_clamp=None):
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.weight_gain = 1 / math.sqrt(in_channels)

    def forward(self, x, w):
        """x [B, I, H, W], w [B, w_dim] -> [B, out_channels, H, W]."""
        x = modulated_conv2d(x, self.weight, self.affine(w) * self.weight_gain, demodulate=False)
        return bias_act(x, self.bias, clamp=self.conv_clamp)


class SynthesisBlock(nn.Module):
    """One resolution of the 'skip' synthesis network: (const | up-sampling conv0), conv1, torgb.
    In `portrait` its maps are half as wide as tall (StyleGAN-Human's 4x2 constant)."""

    def __init__(self, in_channels, out_channels, w_dim, resolution, img_channels, conv_clamp=None, portrait=False):
        super().__init__()
        self.in_channels = in_channels
        self.register_buffer("resample_filter", setup_filter())
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn(out_channels, resolution, resolution // 2 if portrait else resolution))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim, resolution, up=2, conv_clamp=conv_clamp,
                                        portrait=portrait)
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution, conv_clamp=conv_clamp,
                                    portrait=portrait)
        self.torgb = ToRGBLayer(out_channels, img_channels, w_dim, conv_clamp=conv_clamp)
        self.num_conv = 1 if in_channels == 0 else 2
        self.num_torgb = 1

    def forward(self, x, img, ws, noise_mode="const"):
        """ws [B, num_conv + num_torgb, w_dim]; returns the features and the running image."""
        w_iter = iter(ws.unbind(1))
        if self.in_channels == 0:
            x = self.const.unsqueeze(0).repeat(ws.shape[0], 1, 1, 1)
        else:
            x = self.conv0(x, next(w_iter), noise_mode)
        x = self.conv1(x, next(w_iter), noise_mode)
        y = self.torgb(x, next(w_iter))
        img = y if img is None else upsample2d(img, self.resample_filter) + y
        return x, img


class SynthesisNetwork(nn.Module):
    """ws [B, num_ws, w_dim] -> image [B, img_channels, R, R] (R/2 wide in `portrait`), blocks b4 ... bR."""

    def __init__(self, w_dim, img_resolution, img_channels, channel_base=32768, channel_max=512, conv_clamp=256,
                 portrait=False):
        super().__init__()
        if img_resolution < 4 or img_resolution & (img_resolution - 1):
            raise ValueError(f"img_resolution must be a power of two >= 4, got {img_resolution}")
        self.w_dim, self.img_resolution, self.img_channels = w_dim, img_resolution, img_channels
        self.portrait = portrait
        self.block_resolutions = [2**i for i in range(2, int(math.log2(img_resolution)) + 1)]
        channels = {res: min(channel_base // res, channel_max) for res in self.block_resolutions}
        self.num_ws = 0
        for res in self.block_resolutions:
            block = SynthesisBlock(channels[res // 2] if res > 4 else 0, channels[res], w_dim, res, img_channels, conv_clamp,
                                   portrait)
            self.num_ws += block.num_conv
            setattr(self, f"b{res}", block)
        self.num_ws += 1  # the last block's torgb

    def forward(self, ws, noise_mode="const"):
        """ws [B, num_ws, w_dim] -> image [B, img_channels, R, R] ([B, img_channels, R, R/2] in
        `portrait`): each block takes its convolutions' ws and the next one for its toRGB."""
        x = img = None
        start = 0
        for res in self.block_resolutions:
            block = getattr(self, f"b{res}")
            x, img = block(x, img, ws.narrow(1, start, block.num_conv + block.num_torgb), noise_mode)
            start += block.num_conv
        return img


class StyleGAN2Generator(nn.Module):
    """Mapping + synthesis: z [B, z_dim] -> image [B, img_channels, R, R] ([B, img_channels, R, R/2]
    in `portrait`).

    The Get3DHuman backbones are instances with z_dim = w_dim = 512, 2 mapping layers,
    R = 512, 16 output channels, channel_base 32768, channel_max 512, conv_clamp 256.
    StyleGAN-Human's 2-D generator (nn.image_generator) is one with 8 mapping layers, R = 1024
    or 512, 3 channels and `portrait` images.
    """

    def __init__(self, z_dim=512, w_dim=512, img_resolution=512, img_channels=16, mapping_layers=2,
                 channel_base=32768, channel_max=512, conv_clamp=256, portrait=False):
        super().__init__()
        self.z_dim = z_dim
        self.synthesis = SynthesisNetwork(w_dim, img_resolution, img_channels, channel_base, channel_max, conv_clamp,
                                          portrait)
        self.mapping = MappingNetwork(z_dim, w_dim, self.synthesis.num_ws, mapping_layers)

    def check_latent(self, z: torch.Tensor, name: str = "z") -> None:
        """Raises ValueError unless `z` is a finite floating-point [B, z_dim] tensor on the weights'
        device. Its dtype may differ from the weights' (float64 latents, as numpy draws them): the
        mapping casts it first, as the authors' mapping does."""
        if not isinstance(z, torch.Tensor) or z.dim() != 2 or z.shape[1] != self.z_dim:
            shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(f"{name} must be [B, {self.z_dim}], got {shape}")
        weight = next(self.mapping.parameters())
        if not z.is_floating_point() or z.device != weight.device:
            raise ValueError(f"{name} must be a floating-point tensor on {weight.device} like the network's weights, "
                             f"got {z.dtype} on {z.device}")
        if not torch.isfinite(z).all():
            raise ValueError(f"{name} must be finite (it holds NaN or inf)")

    def forward(self, z, truncation_psi=1.0, truncation_cutoff=None, noise_mode="const", mix_z=None, mix_cutoff=None):
        """Generates images; with `mix_z`, ws from index `mix_cutoff` on come from mix_z (style mixing)."""
        self.check_latent(z)
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        ws = self.mapping(z, truncation_psi, truncation_cutoff, update_w_avg=self.training)
        if mix_z is not None:
            self.check_latent(mix_z, "mix_z")
            if mix_cutoff is None or not 0 <= mix_cutoff <= ws.shape[1]:
                raise ValueError(f"mix_cutoff must be in [0, {ws.shape[1]}] with mix_z, got {mix_cutoff!r}")
            mixed = self.mapping(mix_z, truncation_psi, truncation_cutoff)
            ws = torch.cat([ws[:, :mix_cutoff], mixed[:, mix_cutoff:]], 1)
        return self.synthesis(ws, noise_mode)
