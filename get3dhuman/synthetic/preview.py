"""Pictures of the synthetic world: shaded renders of its humans, the stand-in 2-D generator."""

from __future__ import annotations

import torch

from get3dhuman._checks import check_int, check_seed
from get3dhuman.render import Rendering, orbit_calibration, save_grid, shade, sphere_trace
from get3dhuman.synthetic.human import HumanField
from get3dhuman.synthetic.latent import human_parameters


def trace_humans(params: torch.Tensor, resolution: int = 256, angles_deg: float | torch.Tensor = 0.0) -> Rendering:
    """The Rendering (colour, normal, depth, mask) of the humans `params` [B, P] seen by orbit
    cameras at `angles_deg` (a float or [B]; 0: front): render.orbit_calibration(angles_deg),
    traced on the device of `params`."""
    angles = torch.as_tensor(angles_deg, dtype=torch.float32).cpu().expand(params.shape[0])
    calib = orbit_calibration(angles).to(params.device)
    field = HumanField(params)
    with torch.no_grad():
        return sphere_trace(field.sdf, calib, resolution, field.color)


def render_humans(params: torch.Tensor, resolution: int = 256, angles_deg: float | torch.Tensor = 0.0,
                  background: float = 1.0, lit: bool = True) -> torch.Tensor:
    """Colour images [B, H, W, 3] in [0, 1] of the humans `params` [B, P] on a grey
    `background`, seen as in `trace_humans`: shaded, or their albedo when not `lit` (`shade`)."""
    return shade(trace_humans(params, resolution, angles_deg), background, lit)


def stand_in_rendering(z: torch.Tensor, resolution: int) -> Rendering:
    """The Rendering behind `stand_in_images`: the front view of the synthetic humans of
    latents z [B, z_dim], `resolution` pixels a side (one trace gives both image kinds)."""
    return trace_humans(human_parameters(z), resolution, 0.0)


def stand_in_images(z: torch.Tensor, resolution: int, lit: bool = True) -> torch.Tensor:
    """The stand-in 2-D generator: front views [B, resolution, resolution, 3] in [0, 1], on
    black, of the synthetic humans of latents z [B, z_dim] (their albedo when not `lit`). The
    prior cache's images, which the Reconstructor turns into the Generator's prior."""
    return shade(stand_in_rendering(z, resolution), background=0.0, lit=lit)


def sample_grid(path: str, num: int = 16, seed: int = 0, resolution: int = 256, z_dim: int = 512) -> None:
    """Renders `num` humans from z ~ N(0, I) (seeded) front-on and saves them as a PNG grid."""
    num = check_int(num, "num", 1)
    resolution = check_int(resolution, "resolution", 2)
    z_dim = check_int(z_dim, "z_dim", 1)
    z = torch.randn(num, z_dim, generator=torch.Generator().manual_seed(check_seed(seed)))
    save_grid(render_humans(human_parameters(z), resolution), path)
