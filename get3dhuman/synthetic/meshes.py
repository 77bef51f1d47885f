"""Ground-truth meshes of synthetic humans, for evaluation (Chamfer, IoU) and dataset export.

The iso-surface is extracted by the package's marching cubes on a dense SDF grid over the
[-1, 1]^3 box, padded so that nothing stays open at the border.
"""

from __future__ import annotations

import numpy as np
import torch

from get3dhuman._checks import check_int
from get3dhuman.ops.marching_cubes import marching_cubes
from get3dhuman.synthetic.human import HumanField, human_color

CHUNK = 1 << 18  # points per SDF evaluation


def sdf_grid(params: torch.Tensor, resolution: int) -> torch.Tensor:
    """SDF of one human `params` [P] on the resolution^3 lattice over [-1, 1]^3: [R, R, R],
    indexed [x, y, z]."""
    coords = torch.linspace(-1, 1, resolution)
    grid = torch.stack(torch.meshgrid(coords, coords, coords, indexing="ij"), -1).reshape(1, -1, 3)
    field = HumanField(params.reshape(1, -1))
    values = torch.cat([field.sdf(chunk) for chunk in grid.split(CHUNK, dim=1)], 1)
    return values.reshape(resolution, resolution, resolution)


def ground_truth_mesh(params: torch.Tensor, resolution: int = 128):
    """The surface of one human `params` [P] as a trimesh.Trimesh in world coordinates, with
    outward-facing triangles and vertex colours from the colour field. Watertight."""
    import trimesh

    resolution = check_int(resolution, "resolution", 8)
    # Outward faces for a field negative inside; +inf padding closes shapes at the border.
    vertices, faces = marching_cubes(sdf_grid(params, resolution), 0.0, spacing=2.0 / (resolution - 1), origin=-1.0,
                                     pad_value=float("inf"))
    colors = human_color(params.reshape(1, -1), vertices.unsqueeze(0))[0]
    return trimesh.Trimesh(vertices.numpy(), faces.numpy(), vertex_colors=(colors.numpy() * 255).astype(np.uint8),
                           process=False)
