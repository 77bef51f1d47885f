"""Pictures of the synthetic world: shaded renders of humans and a PNG grid of samples."""

from __future__ import annotations

import torch

from get3dhuman._checks import check_int, check_seed
from get3dhuman.render import Rendering, orbit_calibration, sphere_trace
from get3dhuman.synthetic.human import HumanField
from get3dhuman.synthetic.latent import human_parameters

LIGHT = (0.3, 0.5, 0.8)  # camera-space direction of the key light


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


def silhouettes(images: torch.Tensor) -> torch.Tensor:
    """[B, H, W] bool: where stand-in images [B, H, W, 3] (on black, in [0, 1] or uint8) show
    the human. Exact for the synthetic world: every colour it paints has a channel of at least
    0.05 (synthetic.human's palettes and colour ranges), shading keeps 0.35 of it, so no
    surface pixel rounds to black in 8 bits."""
    return images.amax(-1) > (0 if images.dtype == torch.uint8 else 0.5 / 255)


def shading_factor(rendering: Rendering) -> torch.Tensor:
    """[B, H, W] in [0.35, 1]: the factor `shade` multiplies a rendering's colours by,
    0.35 + 0.65 max(0, n . l) for the camera-space key light LIGHT."""
    light = torch.tensor(LIGHT, device=rendering.normal.device)
    return 0.35 + 0.65 * (rendering.normal @ (light / light.norm())).clamp_min(0)


def shade(rendering: Rendering, background: float = 1.0, lit: bool = True) -> torch.Tensor:
    """The shaded colour image [B, H, W, 3] of a rendering: colour x `shading_factor` (the
    colour alone, the albedo, when not `lit`), `background` where nothing was hit."""
    mask = rendering.mask.unsqueeze(-1)
    color = rendering.color * shading_factor(rendering).unsqueeze(-1) if lit else rendering.color
    return mask * color + (1 - mask) * background


def save_grid(images: torch.Tensor, path: str, columns: int = 4) -> None:
    """Writes images [B, H, W, 3] in [0, 1] as one PNG grid (Pillow)."""
    from PIL import Image

    columns = check_int(columns, "columns", 1)
    batch, height, width, _ = images.shape
    rows = -(-batch // columns)
    grid = torch.ones(rows * height, columns * width, 3)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        grid[r * height : (r + 1) * height, c * width : (c + 1) * width] = image
    Image.fromarray((grid.clamp(0, 1) * 255).round().to(torch.uint8).numpy()).save(path)


def sample_grid(path: str, num: int = 16, seed: int = 0, resolution: int = 256, z_dim: int = 512) -> None:
    """Renders `num` humans from z ~ N(0, I) (seeded) front-on and saves them as a PNG grid."""
    num = check_int(num, "num", 1)
    resolution = check_int(resolution, "resolution", 2)
    z_dim = check_int(z_dim, "z_dim", 1)
    z = torch.randn(num, z_dim, generator=torch.Generator().manual_seed(check_seed(seed)))
    save_grid(render_humans(human_parameters(z), resolution), path)
