"""Pictures of the synthetic world: shaded renders of humans and a PNG grid of samples."""

from __future__ import annotations

import torch

from get3dhuman.render import Rendering, orbit_calibration, sphere_trace
from get3dhuman.synthetic.human import human_color, human_sdf
from get3dhuman.synthetic.latent import human_parameters

LIGHT = (0.3, 0.5, 0.8)  # camera-space direction of the key light


def render_humans(params: torch.Tensor, resolution: int = 256, angles_deg: float | torch.Tensor = 0.0,
                  background: float = 1.0) -> torch.Tensor:
    """Shaded colour images [B, H, W, 3] in [0, 1] of the humans `params` [B, P] on a grey
    `background`, seen by orbit cameras at `angles_deg` (a float or [B]; 0: front). The
    cameras are render.orbit_calibration(angles_deg)."""
    calib = orbit_calibration(torch.as_tensor(angles_deg, dtype=torch.float32).expand(params.shape[0]))
    with torch.no_grad():
        rendering = sphere_trace(lambda p: human_sdf(params, p), calib, resolution, lambda p: human_color(params, p))
    return shade(rendering, background)


def stand_in_images(z: torch.Tensor, resolution: int) -> torch.Tensor:
    """The stand-in 2-D generator: front views [B, resolution, resolution, 3] in [0, 1], on
    black, of the synthetic humans of latents z [B, z_dim]. The prior cache's images, which the
    Reconstructor turns into the Generator's prior."""
    return render_humans(human_parameters(z), resolution, 0.0, background=0.0)


def shading_factor(rendering: Rendering) -> torch.Tensor:
    """[B, H, W] in [0.35, 1]: the factor `shade` multiplies a rendering's colours by,
    0.35 + 0.65 max(0, n . l) for the camera-space key light LIGHT."""
    light = torch.tensor(LIGHT, device=rendering.normal.device)
    return 0.35 + 0.65 * (rendering.normal @ (light / light.norm())).clamp_min(0)


def shade(rendering: Rendering, background: float = 1.0) -> torch.Tensor:
    """The shaded colour image [B, H, W, 3] of a rendering: colour x `shading_factor`,
    `background` where nothing was hit."""
    mask = rendering.mask.unsqueeze(-1)
    return mask * rendering.color * shading_factor(rendering).unsqueeze(-1) + (1 - mask) * background


def save_grid(images: torch.Tensor, path: str, columns: int = 4) -> None:
    """Writes images [B, H, W, 3] in [0, 1] as one PNG grid (Pillow)."""
    from PIL import Image

    batch, height, width, _ = images.shape
    rows = -(-batch // columns)
    grid = torch.ones(rows * height, columns * width, 3)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        grid[r * height : (r + 1) * height, c * width : (c + 1) * width] = image
    Image.fromarray((grid.clamp(0, 1) * 255).round().to(torch.uint8).numpy()).save(path)


def sample_grid(path: str, num: int = 16, seed: int = 0, resolution: int = 256, z_dim: int = 512) -> None:
    """Renders `num` humans from z ~ N(0, I) (seeded) front-on and saves them as a PNG grid."""
    z = torch.randn(num, z_dim, generator=torch.Generator().manual_seed(seed))
    save_grid(render_humans(human_parameters(z), resolution), path)
