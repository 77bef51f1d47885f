"""Texture refinement at inference: rasterize views of the generated meshes, refine them with
the Refiner U-Net, and back-project the refined colours onto the meshes' vertices (the authors'
step 3, with projection and a depth test instead of a nearest-neighbour search). Stage 4 trains
the Refiner on the same rasterized views (`front_renders`). A Refiner of
albedo (`Refiner.albedo`) refines unshaded renders; the shading of a refiner's shaded views is
divided out before back-projection, as vertex colours are albedo."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from get3dhuman.mesh import TexturedMesh, back_project_colors, back_projected_colors
from get3dhuman.nn.modes import evaluation_mode
from get3dhuman.render import Rendering, ray_march, render_meshes, shade, shading_factor, silhouettes
from get3dhuman.synthetic.preview import stand_in_images
from get3dhuman.texture import rebake_texture


def view_calibration(generator, angle_deg: float, elevation_deg: float = 0.0) -> torch.Tensor:
    """[4, 4] world -> NDC camera of `generator`'s calibration turned by `angle_deg` about the
    vertical axis through the world point its NDC origin sees, then raised by `elevation_deg`
    (positive: from above, looking down) about its horizontal image axis through that point
    (0, 0: the generator's own view)."""
    base = generator.calibration.double().cpu()
    centre = torch.linalg.solve(base[:3, :3], -base[:3, 3])
    cos, sin = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
    turn = torch.eye(4, dtype=torch.float64)
    turn[:3, :3] = torch.tensor([[cos, 0, -sin], [0, 1, 0], [sin, 0, cos]], dtype=torch.float64)
    turn[:3, 3] = centre - turn[:3, :3] @ centre
    # In NDC (x right, y down the image, z towards the camera; one scale on every axis), raising
    # the camera brings the top of the view (y < 0) nearer.
    cos, sin = math.cos(math.radians(elevation_deg)), math.sin(math.radians(elevation_deg))
    tilt = torch.eye(4, dtype=torch.float64)
    tilt[1:3, 1:3] = torch.tensor([[cos, sin], [-sin, cos]], dtype=torch.float64)
    return (tilt @ base @ turn).to(generator.calibration)


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
def mesh_views(generator, meshes: Sequence[TexturedMesh], angles: Sequence[float] = (0.0, 180.0),
               resolution: int | None = None, lit: bool = True, background: float = 0.0,
               elevation: float = 0.0) -> list[tuple[torch.Tensor, torch.Tensor, Rendering]]:
    """Per angle of `angles` (degrees about the vertical axis, 0: the generator's own view;
    cameras raised by `elevation` degrees, positive from above; `view_calibration`): the images
    [B, R, R, 3] in [0, 1] of B `meshes` (TexturedMeshes in world coordinates, e.g. of
    `generator.extract_mesh`) rasterized (render.render_meshes),
    their vertex colours shaded (left unshaded when not `lit`) on `background`, the cameras
    [B, 4, 4] and the Renderings (mask, depth, normals, ...). R = `resolution`, default the
    generator's backbone resolution (the refiner's). Milliseconds, where ray-marching the field
    (`render_textured`) takes seconds."""
    resolution = resolution or generator.config.backbone_resolution
    views = []
    for angle in angles:
        calib = view_calibration(generator, angle, elevation).float().expand(len(meshes), 4, 4)
        rendering = render_meshes(meshes, calib, resolution)
        views.append((shade(rendering, background, lit), calib, rendering))
    return views


def refine_images(refiner, images: torch.Tensor) -> torch.Tensor:
    """The `refiner`'s output [B, H, W, 3] in [0, 1] for images [B, H, W, 3] in [0, 1] (it works
    in [-1, 1], channels first), one image at a time: batched convolutions round differently
    with the batch size, and a sample's refined colours must not depend on its batch."""
    return torch.cat([(refiner(image.permute(0, 3, 1, 2) * 2 - 1).permute(0, 2, 3, 1) + 1) / 2
                      for image in images.split(1)])


@torch.no_grad()
def refined_views(generator, refiner, meshes: Sequence[TexturedMesh], angles: Sequence[float] = (0.0, 180.0),
                  resolution: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor, Rendering]]:
    """`mesh_views` of `meshes` with the refiner's images [B, R, R, 3] in [0, 1] in place of the
    renders: views shaded, or unshaded for a Refiner of albedo (`Refiner.albedo`), at the
    backbone resolution unless `resolution` is given (the refiner was trained at it)."""
    with evaluation_mode(refiner):
        return [(refine_images(refiner, image), calib, rendering) for image, calib, rendering
                in mesh_views(generator, meshes, angles, resolution, lit=not refiner.albedo)]


@torch.no_grad()
def front_renders(generator, z: torch.Tensor, mesh_resolution: int = 256,
                  lit: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, masks): shaded front views [B, S, S, 3] in [0, 1] (S: the backbone resolution,
    the stand-in images' side; their albedo when not `lit`) of latents z [B, z_dim] fed to both
    branches, as stage 4 trains on them: their meshes of `mesh_resolution` cells per axis
    (`generator.extract_mesh`) rasterized (`mesh_views`), as `refine_meshes` sees the meshes it
    colours; and where they show the human [B, S, S] (bool)."""
    meshes = generator.extract_mesh(z, z, mesh_resolution)
    image, _, rendering = mesh_views(generator, meshes, (0.0,), lit=lit)[0]
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
def front_views(generator, refiner, z: torch.Tensor, mesh_resolution: int = 256) -> tuple[torch.Tensor, ...]:
    """(refined, rendered, target, overlap): the refiner's front views [B, S, S, 3] of latents z
    [B, z_dim], the unrefined renders (`front_renders` of meshes of `mesh_resolution`; both
    branches fed z, as in stage 4; all unshaded for a Refiner of albedo), the stand-in images of
    z and the pixels [B, S, S] where both the render and the stand-in image show the human: the
    arguments of `view_errors`."""
    lit = not refiner.albedo
    with evaluation_mode(refiner):
        rendered, mask = front_renders(generator, z, mesh_resolution, lit)
        refined = refine_images(refiner, rendered)
    target = stand_in_images(z.cpu(), generator.config.backbone_resolution, lit).to(rendered.device)
    return refined, rendered, target, mask & silhouettes(target)


def front_view_errors(generator, refiner, z: torch.Tensor, mesh_resolution: int = 256) -> dict[str, float]:
    """`view_errors` of the `front_views` of latents z [B, z_dim]: stage 4's metrics, for
    latents outside its training cache."""
    return view_errors(*front_views(generator, refiner, z, mesh_resolution))


def refine_meshes(generator, refiner, meshes: Sequence[TexturedMesh], resolution: int | None = None,
                  angles: Sequence[float] = (0.0, 180.0)) -> list[TexturedMesh]:
    """`meshes` (B TexturedMeshes of `generator.extract_mesh`) with vertex colours back-projected
    from their `refined_views` at `angles` (default front and back) of `resolution` pixels
    (default: the generator's backbone resolution); shaded views have their shading removed
    first (`colors_from_views`). Each mesh is coloured from views of itself, so the depth test
    of back-projection compares a vertex with the very surface it lies on."""
    views = refined_views(generator, refiner, meshes, angles, resolution)
    return colors_from_views(meshes, views, remove_shading=not refiner.albedo)


def colors_from_views(meshes: list[TexturedMesh], views: list[tuple[torch.Tensor, torch.Tensor, Rendering]],
                      remove_shading: bool = True) -> list[TexturedMesh]:
    """The meshes (one per batch row of the views) with vertex colours back-projected from
    `views`, the output of `refined_views` or `mesh_views` (per view: images [B, H, W, 3],
    cameras [B, 4, 4], Renderings), and the texels of UV-textured ones alike, each at its
    surface point (`texture.rebake_texture`). Vertex colours are albedo (as the generator's
    own), so for shaded views `remove_shading` first divides each image by its rendering's
    `shading_factor` (clamped to [0, 1]); without it the light is baked in. Views of a Refiner
    of albedo need no division."""
    if remove_shading:
        views = [((image / shading_factor(rendering).unsqueeze(-1)).clamp(0, 1), calib, rendering)
                 for image, calib, rendering in views]
    coloured = []
    for b, mesh in enumerate(meshes):
        seen = (torch.stack([v[0][b] for v in views]), torch.stack([v[1][b] for v in views]),
                torch.stack([v[2].depth[b] for v in views]), torch.stack([v[2].mask[b] for v in views]))
        mesh = back_project_colors(mesh, *seen)
        if mesh.texture is not None and not mesh.is_empty:  # each texel as a vertex, at its surface point
            mesh = rebake_texture(mesh, lambda points, normals, current: back_projected_colors(
                points, normals, current, *seen))
        coloured.append(mesh)
    return coloured
