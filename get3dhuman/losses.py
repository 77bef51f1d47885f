"""Losses of the Generator's training (stage 3), each a scalar tensor.

- Latent prior: the generated feature volumes against the prior's (the Reconstructor's volumes
  of the stand-in image of the same z), as an L1 distance of the volumes and as L1 + L2
  distances of decoded values (occupancy, colour) at sampled points, the teacher decoding the
  prior's volumes.
- Adversarial: non-saturating logistic loss on feature volumes, R1 penalty on real volumes.
- Geometry: depth (L1) and normal (angular, 1 - cosine) errors of rendered maps where both the
  rendering and the target hit the surface.
- Refinement (stage 4, pix2pixHD style): least-squares GAN losses and feature matching over a
  multi-scale PatchGAN's layers, and a perceptual-style loss that needs no pretrained network
  (no VGG weights can be downloaded): L1 of the images and of their horizontal and vertical
  differences over an image pyramid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def volume_prior_loss(generated: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of volumes [B, C, V, V]."""
    return (generated - prior).abs().mean()


def decoded_prior_loss(generated: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """L1 + L2 (mean absolute plus mean squared) differences of decoded values of any shape."""
    difference = generated - teacher
    return difference.abs().mean() + difference.square().mean()


def generator_adversarial_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss: mean softplus(-D(fake))."""
    return F.softplus(-fake_logits).mean()


def discriminator_adversarial_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Logistic discriminator loss: mean softplus(D(fake)) + mean softplus(-D(real))."""
    return F.softplus(fake_logits).mean() + F.softplus(-real_logits).mean()


def r1_penalty(real_logits: torch.Tensor, real_inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Mean over the batch of the squared norm of d sum(D(real)) / d real, summed over the
    inputs (each [B, ...], requiring grad); the caller scales it by gamma / 2."""
    gradients = torch.autograd.grad(real_logits.sum(), real_inputs, create_graph=True)
    return sum(gradient.square().flatten(1).sum(1) for gradient in gradients).mean()


def depth_loss(depth: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean |depth - target| over pixels where mask [B, H, W] is set (0 when none is)."""
    mask = mask.to(depth.dtype)
    return ((depth - target).abs() * mask).sum() / mask.sum().clamp_min(1)


def normal_loss(normal: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean 1 - cos(angle) between unit normals [B, H, W, 3] over pixels where mask is set."""
    mask = mask.to(normal.dtype)
    cosine = F.cosine_similarity(normal, target, dim=-1, eps=1e-8)
    return ((1 - cosine) * mask).sum() / mask.sum().clamp_min(1)


def lsgan_discriminator_loss(real: list[list[torch.Tensor]], fake: list[list[torch.Tensor]]) -> torch.Tensor:
    """Least squares, per scale: mean (D(real) - 1)^2 + mean D(fake)^2 of the last layer; summed over scales."""
    return sum((r[-1] - 1).square().mean() + f[-1].square().mean() for r, f in zip(real, fake))


def lsgan_generator_loss(fake: list[list[torch.Tensor]]) -> torch.Tensor:
    """Least squares, per scale: mean (D(fake) - 1)^2 of the last layer; summed over scales."""
    return sum((f[-1] - 1).square().mean() for f in fake)


def feature_matching_loss(real: list[list[torch.Tensor]], fake: list[list[torch.Tensor]]) -> torch.Tensor:
    """Mean over scales and intermediate layers of L1(D_layer(fake), D_layer(real)), real detached."""
    terms = [(f - r.detach()).abs().mean() for rs, fs in zip(real, fake) for r, f in zip(rs[:-1], fs[:-1])]
    return sum(terms) / len(terms)


def pyramid_l1_loss(image: torch.Tensor, target: torch.Tensor, levels: int = 3) -> torch.Tensor:
    """Mean over `levels` 2x average-pooled levels of L1(image, target) + L1 of their x and y
    differences (where a level is at least 2 pixels wide); images [B, C, H, W]."""
    total = image.new_zeros(())
    for level in range(levels):
        if level:
            image, target = F.avg_pool2d(image, 2), F.avg_pool2d(target, 2)
        total = total + (image - target).abs().mean()
        for dim in (2, 3):
            if image.shape[dim] > 1:
                total = total + (image.diff(dim=dim) - target.diff(dim=dim)).abs().mean()
    return total / levels
