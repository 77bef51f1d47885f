"""Losses of the Generator's training (stage 3), each a scalar tensor.

- Latent prior: the generated feature volumes against the prior's (the Reconstructor's volumes
  of the stand-in image of the same z), as an L1 distance of the volumes and as L1 + L2
  distances of decoded values (occupancy, colour) at sampled points, the teacher decoding the
  prior's volumes.
- Adversarial: non-saturating logistic loss on feature volumes, R1 penalty on real volumes.
- Geometry: depth (L1) and normal (angular, 1 - cosine) errors of rendered maps where both the
  rendering and the target hit the surface.
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
