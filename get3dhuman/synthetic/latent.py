"""The latent map z ~ N(0, I) -> human parameters: the stand-in for the 2-D human generator.

Each parameter reads its own fixed unit direction of z, so it is N(0, 1) distributed when z
is; the normal CDF maps it into the parameter's range (continuous) or to a category with equal
probabilities. Deterministic: the directions depend only on z_dim.
"""

from __future__ import annotations

import torch

from get3dhuman.synthetic.human import NUM_PARAMETERS, PARAMETERS

_SEED = 3_141_592  # fixes the latent directions for every z_dim


def latent_directions(z_dim: int) -> torch.Tensor:
    """[P, z_dim] unit rows: parameter i reads z @ directions[i]."""
    if z_dim < 1:
        raise ValueError(f"z_dim must be >= 1, got {z_dim}")
    directions = torch.randn(NUM_PARAMETERS, z_dim, generator=torch.Generator().manual_seed(_SEED + z_dim), dtype=torch.float64)
    return (directions / directions.norm(dim=1, keepdim=True)).float()


def human_parameters(z: torch.Tensor) -> torch.Tensor:
    """z [B, z_dim] -> human parameters [B, P] (see get3dhuman.synthetic.PARAMETERS)."""
    if not isinstance(z, torch.Tensor) or z.dim() != 2:
        raise ValueError(f"z must be [B, z_dim], got {tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__}")
    if not torch.isfinite(z).all():
        raise ValueError("z must be finite (it holds NaN or inf)")
    quantile = torch.special.ndtr(z.float() @ latent_directions(z.shape[1]).to(z.device).T)  # [B, P] in (0, 1)
    low = torch.tensor([p.low for p in PARAMETERS], device=z.device)
    high = torch.tensor([p.high for p in PARAMETERS], device=z.device)
    choices = torch.tensor([p.choices for p in PARAMETERS], device=z.device, dtype=torch.float32)
    continuous = low + (high - low) * quantile
    categorical = torch.minimum((quantile * choices).floor(), choices - 1)
    return torch.where(choices > 0, categorical, continuous)
