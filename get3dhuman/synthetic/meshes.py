"""Ground-truth meshes of synthetic humans, for evaluation (Chamfer, IoU) and dataset export.

Until the project's marching cubes exists (issue 4), the iso-surface is extracted with
scikit-image's marching cubes (`pip install scikit-image`, part of the `test` extra) on a dense
SDF grid over the [-1, 1]^3 box, padded so that nothing stays open at the border.
"""

from __future__ import annotations

import numpy as np
import torch

from get3dhuman.synthetic.human import human_color, human_sdf

CHUNK = 1 << 18  # points per SDF evaluation


def sdf_grid(params: torch.Tensor, resolution: int) -> torch.Tensor:
    """SDF of one human `params` [P] on the resolution^3 lattice over [-1, 1]^3: [R, R, R],
    indexed [x, y, z]."""
    coords = torch.linspace(-1, 1, resolution)
    grid = torch.stack(torch.meshgrid(coords, coords, coords, indexing="ij"), -1).reshape(1, -1, 3)
    values = torch.cat([human_sdf(params.reshape(1, -1), chunk) for chunk in grid.split(CHUNK, dim=1)], 1)
    return values.reshape(resolution, resolution, resolution)


def ground_truth_mesh(params: torch.Tensor, resolution: int = 128):
    """The surface of one human `params` [P] as a trimesh.Trimesh in world coordinates, with
    outward-facing triangles and vertex colours from the colour field. Watertight."""
    try:
        from skimage.measure import marching_cubes
    except ImportError as error:
        raise ImportError("ground_truth_mesh needs scikit-image: pip install scikit-image") from error
    import trimesh

    if resolution < 8:
        raise ValueError(f"resolution must be >= 8, got {resolution}")
    volume = np.pad(sdf_grid(params, resolution).numpy(), 1, constant_values=1.0)  # closes shapes at the border
    spacing = 2.0 / (resolution - 1)
    vertices, faces, _, _ = marching_cubes(volume, level=0.0, spacing=(spacing,) * 3)
    vertices = vertices - 1.0 - spacing  # undo the padding offset: lattice index 0 is at -1
    # skimage's default orientation is outward for a field that is negative inside.
    colors = human_color(params.reshape(1, -1), torch.from_numpy(vertices).float().unsqueeze(0))[0]
    return trimesh.Trimesh(vertices, faces, vertex_colors=(colors.numpy() * 255).astype(np.uint8), process=False)
