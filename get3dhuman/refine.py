"""Texture refinement at inference: render views of generated humans, refine them with the
Refiner U-Net, and back-project the refined colours onto the meshes' vertices (the authors'
step 3, with projection and a depth test instead of a nearest-neighbour search). A Refiner of
albedo (`Refiner.albedo`) refines unshaded renders; the shading of a refiner's shaded views is
divided out before back-projection, as vertex colours are albedo."""

from __future__ import annotations

import math

import torch

from get3dhuman.mesh import TexturedMesh, back_project_colors
from get3dhuman.nn.modes import evaluation_mode
from get3dhuman.render import Rendering, ray_march
from get3dhuman.synthetic.preview import shade, shading_factor, silhouettes, stand_in_images


def view_calibration(generator, angle_deg: float) -> torch.Tensor:
    """[4, 4] world -> NDC camera of `generator`'s calibration turned by `angle_deg` about the
    vertical axis through the world point its NDC origin sees (0: the generator's own view)."""
    base = generator.calibration.double().cpu()
    centre = torch.linalg.solve(base[:3, :3], -base[:3, 3])
    cos, sin = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
    turn = torch.eye(4, dtype=torch.float64)
    turn[:3, :3] = torch.tensor([[cos, 0, -sin], [0, 1, 0], [sin, 0, cos]], dtype=torch.float64)
    turn[:3, 3] = centre - turn[:3, :3] @ centre
    return (base @ turn).to(generator.calibration)


def render_textured(generator, shape_volume: torch.Tensor, texture_volume: torch.Tensor, calib: torch.Tensor,
                    resolution: int, samples: int = 96, background: float = 0.0,
                    normal_step: float | None = None, lit: bool = True) -> tuple[torch.Tensor, Rendering]:
    """Shaded colour images [B, H, W, 3] in [0, 1] (their albedo when not `lit`) on `background`
    (default black: the prior's images' convention) of the generated humans with volumes
    [B, F, V, V], seen through cameras calib [B, 4, 4]; and the Rendering (depth, mask, ...).
    The field (level 0.5) is `ray_march`ed and coloured by the texture decoder. Differentiable in the volumes; give
    `normal_step` (render.ray_march) when gradients must flow through the shading, since the
    fused queries have no second-order backward for autograd normals."""
    own = generator.calibration.expand(shape_volume.shape[0], 4, 4)
    rendering = ray_march(lambda p: 0.5 - generator.query_occupancy(shape_volume, p, own), calib, resolution,
                          lambda p: generator.query_color(shape_volume, texture_volume, p, own), samples=samples,
                          normal_step=normal_step)
    return shade(rendering, background, lit), rendering


@torch.no_grad()
def refined_views(generator, refiner, z_shape: torch.Tensor, z_texture: torch.Tensor,
                  angles: tuple[float, ...] = (0.0, 180.0), resolution: int | None = None, samples: int = 96,
                  truncation_psi: float = 1.0) -> list[tuple[torch.Tensor, torch.Tensor, Rendering]]:
    """Per angle of `angles` (degrees about the vertical axis, 0: the generator's own view): the
    refiner's images [B, H, W, 3] in [0, 1] of the rendered views of latents z_shape, z_texture
    [B, z_dim] (H = W = `resolution`, default the generator's backbone resolution, which the
    refiner was trained at), the cameras [B, 4, 4] and the Renderings (depth, mask, ...). The
    views are shaded, or unshaded for a Refiner of albedo (`Refiner.albedo`)."""
    resolution = resolution or generator.config.backbone_resolution
    with evaluation_mode(generator, refiner):
        shape, texture = generator(z_shape, z_texture, truncation_psi)
        views = []
        for angle in angles:
            calib = view_calibration(generator, angle).expand(z_shape.shape[0], 4, 4)
            image, rendering = render_textured(generator, shape.volume, texture, calib, resolution, samples,
                                               lit=not refiner.albedo)
            refined = (refiner(image.permute(0, 3, 1, 2) * 2 - 1).permute(0, 2, 3, 1) + 1) / 2
            views.append((refined, calib, rendering))
        return views


@torch.no_grad()
def front_renders(generator, z: torch.Tensor, samples: int = 64, lit: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, masks): shaded front views [B, S, S, 3] in [0, 1] (S: the backbone resolution,
    the stand-in images' side; their albedo when not `lit`) of latents z [B, z_dim] fed to both
    branches, as stage 4 trains on them, and where they show the human [B, S, S] (bool)."""
    shape, texture = generator(z, z)
    calib = view_calibration(generator, 0.0).expand(z.shape[0], 4, 4)
    image, rendering = render_textured(generator, shape.volume, texture, calib, generator.config.backbone_resolution,
                                       samples, lit=lit)
    return image, rendering.mask > 0.5


def view_errors(refined: torch.Tensor, rendered: torch.Tensor, target: torch.Tensor,
                overlap: torch.Tensor) -> dict[str, float]:
    """{'refined_l1', 'rendered_l1', 'refined_overlap_l1', 'rendered_overlap_l1'}: stage 4's
    metrics, the mean L1 RGB differences (images [B, H, W, 3] in [0, 1]) of the refined and the
    rendered views from their targets over the whole images and over the pixels `overlap`
    [B, H, W] (bool) where both the render and the target show the human: the colours that
    back-projection uses, leaving out silhouette differences."""
    errors = {}
    for name, image in (("refined", refined), ("rendered", rendered)):
        difference = (image - target).abs()
        errors[f"{name}_l1"] = difference.mean().item()
        errors[f"{name}_overlap_l1"] = difference[overlap].mean().item() if overlap.any() else 0.0
    return errors


@torch.no_grad()
def front_views(generator, refiner, z: torch.Tensor, samples: int = 64) -> tuple[torch.Tensor, ...]:
    """(refined, rendered, target, overlap): the refiner's front views [B, S, S, 3] of latents z
    [B, z_dim], the unrefined renders (both branches fed z, as in stage 4; `samples` depth
    samples per ray; all unshaded for a Refiner of albedo), the stand-in images of z and the
    pixels [B, S, S] where both the render and the stand-in image show the human: the
    arguments of `view_errors`."""
    lit = not refiner.albedo
    with evaluation_mode(generator, refiner):
        rendered, mask = front_renders(generator, z, samples, lit)
        refined = (refiner(rendered.permute(0, 3, 1, 2) * 2 - 1).permute(0, 2, 3, 1) + 1) / 2
    target = stand_in_images(z.cpu(), generator.config.backbone_resolution, lit).to(rendered.device)
    return refined, rendered, target, mask & silhouettes(target)


def front_view_errors(generator, refiner, z: torch.Tensor, samples: int = 64) -> dict[str, float]:
    """`view_errors` of the `front_views` of latents z [B, z_dim]: stage 4's metrics, for
    latents outside its training cache."""
    return view_errors(*front_views(generator, refiner, z, samples))


def refine_meshes(generator, refiner, z_shape: torch.Tensor, z_texture: torch.Tensor, meshes: list[TexturedMesh],
                  resolution: int | None = None, angles: tuple[float, ...] = (0.0, 180.0),
                  samples: int = 96, truncation_psi: float = 1.0) -> list[TexturedMesh]:
    """The meshes of latents z_shape, z_texture [B, z_dim] (from `generator.extract_mesh` with
    the same `truncation_psi`) with vertex colours back-projected from the `refined_views` at
    `angles` (default front and back) of `resolution` pixels (default: the generator's
    backbone resolution); shaded views have their shading removed first (`colors_from_views`)."""
    if len(meshes) != z_shape.shape[0]:
        raise ValueError(f"meshes must hold one mesh per latent ({z_shape.shape[0]}), got {len(meshes)}")
    views = refined_views(generator, refiner, z_shape, z_texture, angles, resolution, samples, truncation_psi)
    return colors_from_views(meshes, views, remove_shading=not refiner.albedo)


def colors_from_views(meshes: list[TexturedMesh], views: list[tuple[torch.Tensor, torch.Tensor, Rendering]],
                      remove_shading: bool = True) -> list[TexturedMesh]:
    """The meshes (one per batch row of the views) with vertex colours back-projected from
    `views`, the output of `refined_views` (per view: images [B, H, W, 3], cameras [B, 4, 4],
    Renderings). Vertex colours are albedo (as the generator's own), so for shaded views
    `remove_shading` first divides each image by its rendering's `shading_factor` (clamped to
    [0, 1]); without it the light is baked in. Views of a Refiner of albedo need no division."""
    if remove_shading:
        views = [((image / shading_factor(rendering).unsqueeze(-1)).clamp(0, 1), calib, rendering)
                 for image, calib, rendering in views]
    return [back_project_colors(mesh, torch.stack([v[0][b] for v in views]), torch.stack([v[1][b] for v in views]),
                                torch.stack([v[2].depth[b] for v in views]), torch.stack([v[2].mask[b] for v in views]))
            for b, mesh in enumerate(meshes)]
