"""Applications of a trained Generator (DESIGN.md section 7): walks between latents, new
textures on a fixed shape, and inversion of an image into latents. Command line:
`get3dhuman interpolate`, `get3dhuman retexture` and `get3dhuman invert`.

Latents are the Generator's z (`Generator.latents(seeds)` names them by seed). Interpolation in
z is spherical (`slerp`): z is Gaussian, and points on the straight line between two draws have
a smaller norm than any typical draw, which the mapping network has rarely seen. In w (the
mapping networks' outputs, `Generator.mapping`) it is linear, as StyleGAN's walks are.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import torch

from get3dhuman._checks import check_int
from get3dhuman.mesh import MeshingOptions, TexturedMesh
from get3dhuman.nn.modes import evaluation_mode, frozen_parameters
from get3dhuman.refine import render_textured
from get3dhuman.render import camera_rays

MOVING = ("shape", "texture", "both")
SPACES = ("z", "w")  # latent spaces of walks: the inputs z, the mapping networks' outputs w


def slerp(start: torch.Tensor, end: torch.Tensor, fractions: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation of latents start, end [D] at fractions [T] (0: start, 1: end) ->
    [T, D]: the great-circle path between their directions, the norm interpolated linearly.
    Parallel latents fall back to linear interpolation."""
    if start.dim() != 1 or end.shape != start.shape:
        raise ValueError(f"start and end must both be [D], got {tuple(start.shape)} and {tuple(end.shape)}")
    fractions = torch.as_tensor(fractions, dtype=start.dtype, device=start.device).reshape(-1, 1)
    start_norm, end_norm = start.norm(), end.norm()
    cosine = (start @ end / (start_norm * end_norm).clamp_min(1e-12)).clamp(-1, 1)
    angle = torch.arccos(cosine)
    if float(angle.sin()) < 1e-6:
        return torch.lerp(start, end, fractions)
    direction = (torch.sin((1 - fractions) * angle) * start / start_norm
                 + torch.sin(fractions * angle) * end / end_norm) / angle.sin()
    return direction * torch.lerp(start_norm, end_norm, fractions)


def interpolation_latents(start: tuple[torch.Tensor, torch.Tensor], end: tuple[torch.Tensor, torch.Tensor],
                          steps: int, moving: str = "both", space: str = "z") -> tuple[torch.Tensor, torch.Tensor]:
    """(shape latents, texture latents), each [steps, *latent shape], from the latent pair start =
    (shape latent, texture latent) to end, evenly spaced (both ends included). `moving`: which
    latent walks ('shape', 'texture' or 'both'); the other stays at start's. `space` 'z': latents
    [D] on the great circle (`slerp`); 'w': intermediate latents ([num_ws, w_dim] of
    `Generator.mapping`) on the straight line, as StyleGAN walks its W space."""
    steps = check_int(steps, "steps", 2)
    if moving not in MOVING:
        raise ValueError(f"moving must be one of {', '.join(MOVING)}, got {moving!r}")
    if space not in SPACES:
        raise ValueError(f"space must be one of {', '.join(SPACES)}, got {space!r}")
    fractions = torch.linspace(0, 1, steps)

    def walk(first: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        if space == "z":
            return slerp(first, last, fractions)
        return torch.lerp(first, last, fractions.to(first).reshape(-1, *[1] * first.dim()))

    shape = walk(start[0], end[0]) if moving != "texture" else start[0].expand(steps, *start[0].shape)
    texture = walk(start[1], end[1]) if moving != "shape" else start[1].expand(steps, *start[1].shape)
    return shape.contiguous(), texture.contiguous()


def _progress_bar(total: int, progress: bool, unit: str):
    """A tqdm bar of `total` `unit`s on stderr, or None when not `progress`."""
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit=unit)


def extract_meshes(generator, shape_latents: torch.Tensor, texture_latents: torch.Tensor, *, space: str = "z",
                   batch_size: int = 4, progress: bool = False, **extract_options) -> list[TexturedMesh]:
    """Textured meshes of the latent pairs shape_latents, texture_latents ([N, D], or [N, num_ws,
    w_dim] in `space` 'w'), made `batch_size` at a time by `generator.extract_mesh` (or
    `extract_mesh_from_ws`) with `extract_options`, in the dtype and on the device of its weights;
    a progress bar on stderr with `progress`."""
    batch_size = check_int(batch_size, "batch_size", 1)
    if space not in SPACES:
        raise ValueError(f"space must be one of {', '.join(SPACES)}, got {space!r}")
    extract = generator.extract_mesh if space == "z" else generator.extract_mesh_from_ws
    weights = next(generator.parameters())
    meshes = []
    bar = _progress_bar(shape_latents.shape[0], progress, "human")
    for begin in range(0, shape_latents.shape[0], batch_size):
        part = slice(begin, begin + batch_size)
        meshes += extract(shape_latents[part].to(weights), texture_latents[part].to(weights), **extract_options)
        if bar is not None:
            bar.update(len(meshes) - bar.n)
    if bar is not None:
        bar.close()
    return meshes


def interpolate(generator, start: tuple[torch.Tensor, torch.Tensor], end: tuple[torch.Tensor, torch.Tensor],
                steps: int = 8, *, moving: str = "both", space: str = "z", batch_size: int = 4,
                truncation_psi: float = 1.0, progress: bool = False, **extract_options) -> list[TexturedMesh]:
    """Textured meshes of `steps` humans from the latent pair start = (z_shape, z_texture) ([D]
    each) to end (`interpolation_latents`): in `space` 'z' the latents' great circle, in 'w'
    the straight line between their intermediate latents (`Generator.mapping`, truncated by
    `truncation_psi`), which StyleGAN generators follow more evenly. A progress bar on stderr
    with `progress`."""
    if space == "z":
        z_shape, z_texture = interpolation_latents(start, end, steps, moving)
        return extract_meshes(generator, z_shape, z_texture, batch_size=batch_size, truncation_psi=truncation_psi,
                              progress=progress, **extract_options)
    device = next(generator.parameters()).device
    with torch.no_grad(), evaluation_mode(generator):
        pair = torch.stack([start[0], end[0]]).to(device), torch.stack([start[1], end[1]]).to(device)
        ws_shape, ws_texture = generator.mapping(*pair, truncation_psi)
    ws = interpolation_latents((ws_shape[0], ws_texture[0]), (ws_shape[1], ws_texture[1]), steps, moving, space)
    return extract_meshes(generator, *ws, space="w", batch_size=batch_size, progress=progress, **extract_options)


@torch.no_grad()
def retexture(generator, z_shape: torch.Tensor, z_textures: torch.Tensor, resolution: int = 256, *,
              truncation_psi: float = 1.0, meshing: MeshingOptions | None = None, progress: bool = False,
              **extract_options) -> list[TexturedMesh]:
    """The shape of z_shape [D] (or [1, D]) with each texture of z_textures [T, D]: the mesh is
    extracted once (`generator.extract_mesh`) and its vertices are coloured by the texture
    decoder T times. Mesh t is `extract_mesh(z_shape, z_textures[t])` (with the same
    `meshing`), bit for bit. A progress bar on stderr with `progress`, a step a texture."""
    z_shape = z_shape.reshape(1, -1)
    if z_textures.dim() != 2 or z_textures.shape[1] != z_shape.shape[1] or z_textures.shape[0] < 1:
        raise ValueError(f"z_textures must be [T, {z_shape.shape[1]}] with T >= 1, got {tuple(z_textures.shape)}")
    meshing = meshing if meshing is not None else MeshingOptions()
    mesh = generator.extract_mesh(z_shape, z_textures[:1], resolution, truncation_psi=truncation_psi, meshing=meshing,
                                  **extract_options)[0]
    if mesh.is_empty:
        return [mesh for _ in range(z_textures.shape[0])]
    meshes = []
    bar = _progress_bar(z_textures.shape[0], progress, "texture")
    with evaluation_mode(generator):
        shape = generator.shape_features(z_shape, truncation_psi)
        calib = generator.calibration[None]
        vertices = mesh.vertices.to(shape.volume.device)[None]
        for z_texture in z_textures.split(1):  # one at a time, as extract_mesh does: the same bits
            texture = generator.texture_features(shape, z_texture, truncation_psi)
            colors = torch.cat([generator.query_color(shape.volume, texture, part, calib,
                                                      compute_dtype=meshing.compute_dtype)
                                for part in vertices.split(meshing.chunk, dim=1)], 1)[0].float().clamp(0, 1)
            meshes.append(TexturedMesh(mesh.vertices, mesh.faces, colors.to(mesh.colors.device), mesh.normals))
            if bar is not None:
                bar.update()
    if bar is not None:
        bar.close()
    return meshes


@dataclasses.dataclass
class Inversion:
    """The result of `invert`: the best latents z_shape, z_texture [1, D] and the loss per step."""

    z_shape: torch.Tensor
    z_texture: torch.Tensor
    losses: list[float]


def foreground_of(image: torch.Tensor, tolerance: float = 2 / 255) -> torch.Tensor:
    """The mask [H, W] (float 0/1) of the pixels of image [H, W, 3] whose colour differs from its
    top-left pixel's (the background) by more than `tolerance` in some channel."""
    return ((image - image[0, 0]).abs() > tolerance).any(-1).float()


def soft_silhouette(generator, shape_volume: torch.Tensor, samples: torch.Tensor, calib: torch.Tensor) -> torch.Tensor:
    """Per ray the largest occupancy of its K samples [K, R, 3] (R rays, points in the world) of
    the field of shape_volume [1, F, V, V] through calib [1, 4, 4]: [R], differentiable in the
    volume. As for `amax`, the gradient reaches the largest sample of each ray alone, so the K * R
    samples are queried without autograd and only the R largest again with it (the backward of
    all K * R queries took half of an inversion step)."""
    depth_samples, rays = samples.shape[:2]
    with torch.no_grad():
        occupancy = generator.query_occupancy(shape_volume, samples.reshape(1, -1, 3), calib)
        largest = occupancy.view(depth_samples, rays).argmax(0)
    points = samples[largest, torch.arange(rays, device=samples.device)]  # [R, 3]
    return generator.query_occupancy(shape_volume, points.unsqueeze(0), calib)[0]


def invert(generator, image: torch.Tensor, mask: torch.Tensor | None = None, *, steps: int = 200,
           learning_rate: float = 0.05, seed: int = 0, depth_samples: int = 48, march_samples: int = 48,
           silhouette_weight: float = 1.0, color_weight: float = 1.0, latent_weight: float = 0.01,
           normal_step: float = 0.01, progress: bool = False) -> Inversion:
    """Latents whose front view (the generator's camera) matches `image` [S, S, 3] in [0, 1],
    by Adam on (z_shape, z_texture) from the latents of `seed` (`Generator.latents`).

    Loss per step: silhouette_weight * L1 between `mask` [S, S] (default `foreground_of(image)`)
    and the soft silhouette (per pixel, the largest occupancy at `depth_samples` depths along
    its ray, `soft_silhouette`; 16 missed thin limbs between them, which no number of steps
    made up),
    + color_weight * L1 between the shaded render (`refine.render_textured`, `march_samples`
    samples per ray, central-difference normals of `normal_step` world units; gradients through
    the hit colours, points and normals) and the image where both are foreground,
    + latent_weight * (|z|^2 / D - 1)^2 for each latent, which keeps them where the mapping
    network saw its training draws. Images follow the renders'
    convention (row 0 at NDC y = -1, as the previews are written).
    """
    if image.dim() != 3 or image.shape[-1] != 3 or image.shape[0] != image.shape[1] or image.shape[0] < 2:
        raise ValueError(f"image must be [S, S, 3] with S >= 2, got {tuple(image.shape)}")
    side = image.shape[0]
    mask = foreground_of(image) if mask is None else mask.float()
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask must be [{side}, {side}] like the image, got {tuple(mask.shape)}")
    if not bool(mask.any()):
        raise ValueError("image holds no figure: its mask is empty (without a mask: every pixel has the "
                         "top-left pixel's colour, the background's); give an image of a figure on a plain "
                         "background, or its mask")
    steps = check_int(steps, "steps", 1)
    depth_samples = check_int(depth_samples, "depth_samples", 2)
    device = generator.calibration.device
    image, mask = image.to(device), mask.to(device)
    z_shape, z_texture = (z.requires_grad_() for z in generator.latents([seed]))
    optimizer = torch.optim.Adam([z_shape, z_texture], lr=learning_rate)
    calib = generator.calibration.expand(1, 4, 4)
    rays = camera_rays(calib, side)
    depths = torch.linspace(0, 1, depth_samples, device=device)[:, None, None] * rays.far[:, None]  # [K, 1, 1]
    samples = rays.origin + depths * rays.direction  # [K, S * S, 3]
    best, losses = None, []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, desc="invert", unit="step")
    with evaluation_mode(generator), frozen_parameters(generator):
        for _ in range(steps):
            shape, texture = generator(z_shape, z_texture)
            silhouette = soft_silhouette(generator, shape.volume, samples, calib).reshape(side, side)
            rendered, rendering = render_textured(generator, shape.volume, texture, calib, side, march_samples,
                                                 normal_step=normal_step)
            both = (rendering.mask[0] * mask).unsqueeze(-1)
            color = ((rendered[0] - image).abs() * both).sum() / (3 * both.sum()).clamp_min(1)
            prior = sum((z.square().mean() - 1).square() for z in (z_shape, z_texture))
            loss = (silhouette_weight * (silhouette - mask).abs().mean() + color_weight * color
                    + latent_weight * prior)
            losses.append(loss.item())
            if best is None or losses[-1] < best[0]:
                best = (losses[-1], z_shape.detach().clone(), z_texture.detach().clone())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
    if bar is not None:
        bar.close()
    return Inversion(best[1], best[2], losses)


def write_results(generator, out_dir: str, names: list[str], meshes: list[TexturedMesh], file_type: str = "glb",
                  preview_resolution: int | None = None, grid: str | None = None, preview_views: int = 1,
                  preview_maps: Sequence[str] = (), ground: bool = False, up: str = "y",
                  preview_elevation: float = 0.0) -> list[str]:
    """Writes mesh i as out_dir/names[i].file_type (empty meshes are left out; placed by
    `ground` and `up`, `TexturedMesh.placed`); with
    `preview_resolution` also its previews as `get3dhuman sample` writes them
    (`previews.write_previews`: the front view names[i].png, `preview_views` views about the
    vertical axis, `preview_maps`, raised by `preview_elevation` degrees), `cameras.json` and the
    `grid` PNG of the front views.
    Returns the paths written."""
    from get3dhuman.previews import CAMERAS, check_preview_options, save_preview_grid, write_cameras, write_previews

    preview_resolution, preview_views, preview_maps, preview_elevation = check_preview_options(
        preview_resolution, preview_views, preview_maps, preview_elevation)
    if grid is not None and preview_resolution is None:
        raise ValueError("grid needs preview_resolution (the grid is made of the previews)")
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for name, mesh in zip(names, meshes):
        if not mesh.is_empty:
            written.append(os.path.join(out_dir, f"{name}.{file_type}"))
            mesh.export(written[-1], file_type, ground=ground, up=up)
    if preview_resolution is not None:
        write_cameras(out_dir, generator, preview_views, preview_resolution, preview_elevation)
        entries = write_previews(generator, out_dir, names, meshes, preview_resolution, preview_views, preview_maps,
                                 preview_elevation)
        files = [CAMERAS]
        for entry in entries:
            files += entry["views"]["files"] if "views" in entry else [entry["preview"]]
            files += [file for per_view in entry.get("maps", {}).values() for file in per_view]
        written += [os.path.join(out_dir, file) for file in files]
        if grid is not None:
            save_preview_grid(out_dir, entries, grid, columns=min(len(names), 8))
            written.append(grid)
    return written


def read_picture(path: str, mode: str = "RGB", side: int | None = None) -> torch.Tensor:
    """The picture at `path` (Pillow `mode` 'RGB' or 'L') as floats in [0, 1], [H, W, 3] or
    [H, W]; with `side`, a square picture resized (bilinear) to side x side. ValueError naming
    the file when it cannot be read or is not square."""
    import numpy as np
    from PIL import Image

    try:
        picture = Image.open(path).convert(mode)
    except OSError as error:
        raise ValueError(f"cannot read {path}: {error}") from error
    if side is not None:
        if picture.width != picture.height:
            raise ValueError(f"{path} is {picture.width} x {picture.height}, not square: pass --frame to matte and "
                             "frame a picture of any shape")
        picture = picture.resize((side, side), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.asarray(picture, dtype=np.float32) / 255)


def inversion_target(image_path: str, side: int, mask_path: str | None = None, frame: bool = False,
                     matte_tolerance: float = 0.06) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The image [side, side, 3] and mask [side, side] (or None: `invert`'s default) that `invert`
    matches, from files: a square picture resized, with its mask file; or with `frame`, a
    picture of any shape on a uniform background, matted (`matte_tolerance`) and framed as the
    prior stage frames generated figures, its mask the matte."""
    from get3dhuman.nn.image_generator import frame_figures
    from get3dhuman.train.prior import PriorConfig

    if not frame:
        mask = None if mask_path is None else (read_picture(mask_path, "L", side) > 0.5).float()
        return read_picture(image_path, "RGB", side), mask
    if mask_path is not None:
        raise ValueError("--frame takes the mask from the matte; drop --mask")
    framed = frame_figures(read_picture(image_path)[None], side, matte_tolerance, PriorConfig.figure_height)
    return framed.images[0], (framed.masks[0] > 0.5).float()


def write_inversion(generator, result: Inversion, out_dir: str, resolution: int = 256, file_type: str = "glb",
                    preview_resolution: int | None = None, ground: bool = False, up: str = "y",
                    **options) -> list[str]:
    """Writes an `invert` result to `out_dir`: latents.safetensors (z_shape, z_texture),
    losses.json, and the latents' mesh `inverted.FILE_TYPE` (`Generator.extract_mesh` with
    `options`; placed by `ground` and `up`) with its front view. Returns the mesh and preview paths."""
    import json

    from safetensors.torch import save_file

    os.makedirs(out_dir, exist_ok=True)
    save_file({"z_shape": result.z_shape.cpu(), "z_texture": result.z_texture.cpu()},
              os.path.join(out_dir, "latents.safetensors"))
    with open(os.path.join(out_dir, "losses.json"), "w") as handle:
        json.dump(result.losses, handle)
    meshes = generator.extract_mesh(result.z_shape, result.z_texture, resolution, **options)
    return write_results(generator, out_dir, ["inverted"], meshes, file_type, preview_resolution, ground=ground, up=up)
