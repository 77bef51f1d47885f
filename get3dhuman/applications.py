"""Applications of a trained Generator (DESIGN.md section 7): walks between latents, and new
textures on a fixed shape. Command line: `get3dhuman interpolate` and `get3dhuman retexture`.

Latents are the Generator's z (`Generator.latents(seeds)` names them by seed). Interpolation is
spherical (`slerp`): z is Gaussian, and points on the straight line between two draws have a
smaller norm than any typical draw, which the mapping network has rarely seen.
"""

from __future__ import annotations

import os

import torch

from get3dhuman.mesh import TexturedMesh
from get3dhuman.nn.modes import evaluation_mode

MOVING = ("shape", "texture", "both")


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
                          steps: int, moving: str = "both") -> tuple[torch.Tensor, torch.Tensor]:
    """(z_shape, z_texture), each [steps, D], from the latent pair start = (z_shape, z_texture)
    ([D] each) to end, evenly spaced (both ends included). `moving`: which latent walks ('shape',
    'texture' or 'both'); the other stays at start's."""
    if not isinstance(steps, int) or steps < 2:
        raise ValueError(f"steps must be an int >= 2, got {steps!r}")
    if moving not in MOVING:
        raise ValueError(f"moving must be one of {', '.join(MOVING)}, got {moving!r}")
    fractions = torch.linspace(0, 1, steps)
    z_shape = slerp(start[0], end[0], fractions) if moving != "texture" else start[0].expand(steps, -1)
    z_texture = slerp(start[1], end[1], fractions) if moving != "shape" else start[1].expand(steps, -1)
    return z_shape.contiguous(), z_texture.contiguous()


def interpolate(generator, start: tuple[torch.Tensor, torch.Tensor], end: tuple[torch.Tensor, torch.Tensor],
                steps: int = 8, *, moving: str = "both", batch_size: int = 4, **extract_options) -> list[TexturedMesh]:
    """Textured meshes of `steps` latent pairs from start to end (`interpolation_latents`), made
    `batch_size` at a time by `generator.extract_mesh` (with `extract_options`)."""
    z_shape, z_texture = interpolation_latents(start, end, steps, moving)
    device = next(generator.parameters()).device
    meshes = []
    for begin in range(0, steps, batch_size):
        part = slice(begin, begin + batch_size)
        meshes += generator.extract_mesh(z_shape[part].to(device), z_texture[part].to(device), **extract_options)
    return meshes


@torch.no_grad()
def retexture(generator, z_shape: torch.Tensor, z_textures: torch.Tensor, resolution: int = 256, *,
              truncation_psi: float = 1.0, chunk: int = 1 << 18, **extract_options) -> list[TexturedMesh]:
    """The shape of z_shape [D] (or [1, D]) with each texture of z_textures [T, D]: the mesh is
    extracted once (`generator.extract_mesh`) and its vertices are coloured by the texture
    decoder T times. Mesh t equals `extract_mesh(z_shape, z_textures[t])` up to float rounding."""
    z_shape = z_shape.reshape(1, -1)
    if z_textures.dim() != 2 or z_textures.shape[1] != z_shape.shape[1] or z_textures.shape[0] < 1:
        raise ValueError(f"z_textures must be [T, {z_shape.shape[1]}] with T >= 1, got {tuple(z_textures.shape)}")
    mesh = generator.extract_mesh(z_shape, z_textures[:1], resolution, truncation_psi=truncation_psi, chunk=chunk,
                                  **extract_options)[0]
    if mesh.is_empty:
        return [mesh for _ in range(z_textures.shape[0])]
    count = z_textures.shape[0]
    with evaluation_mode(generator):
        shape = generator.shape_features(z_shape.expand(count, -1), truncation_psi)
        textures = generator.texture_features(shape, z_textures, truncation_psi)
        calib = generator.calibration.to(shape.volume.dtype).expand(count, 4, 4)
        vertices = mesh.vertices.to(shape.volume).expand(count, -1, -1)
        colors = torch.cat([generator.query_color(shape.volume, textures, part, calib)
                            for part in vertices.split(chunk, dim=1)], 1).float().clamp(0, 1)
    return [TexturedMesh(mesh.vertices, mesh.faces, colors[t].to(mesh.colors.device), mesh.normals)
            for t in range(count)]


def write_results(generator, out_dir: str, names: list[str], meshes: list[TexturedMesh], z_shape: torch.Tensor,
                  z_texture: torch.Tensor, file_type: str = "glb", preview_resolution: int | None = None,
                  grid: str | None = None) -> list[str]:
    """Writes mesh i as out_dir/names[i].file_type (empty meshes are left out), with
    `preview_resolution` front views names[i].png of its latents z_shape[i], z_texture[i]
    (`dataset.render_previews`) and their `grid` PNG; returns the paths written."""
    from get3dhuman.dataset import render_previews
    from get3dhuman.synthetic.preview import save_grid

    if grid is not None and preview_resolution is None:
        raise ValueError("grid needs preview_resolution (the grid is made of the previews)")
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for name, mesh in zip(names, meshes):
        if not mesh.is_empty:
            written.append(os.path.join(out_dir, f"{name}.{file_type}"))
            mesh.export(written[-1], file_type)
    if preview_resolution is not None:
        device = next(generator.parameters()).device
        previews = render_previews(generator, z_shape.to(device), z_texture.to(device), preview_resolution).cpu()
        for name, preview in zip(names, previews):
            written.append(os.path.join(out_dir, f"{name}.png"))
            save_grid(preview[None], written[-1], columns=1)
        if grid is not None:
            save_grid(previews, grid, columns=min(len(names), 8))
            written.append(grid)
    return written
