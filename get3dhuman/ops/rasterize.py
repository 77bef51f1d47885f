"""Z-buffer rasterization of triangle meshes under orthographic cameras, and a pure-torch reference.

Conventions (those of `get3dhuman.render`): vertices are in NDC, x and y over the image with
align_corners=True (pixel (row i, column j) is centred at x = -1 + 2j/(W-1), y = -1 + 2i/(H-1)),
z the depth, larger nearer the camera. A pixel shows the nearest triangle whose closed area
(edges included) holds its centre, ties to the lowest face index; both orientations are
drawn. Edge functions are evaluated from the edge's lower vertex index, so the two triangles
of a shared edge get exactly opposite values: welded meshes show no cracks. CPU and CUDA
kernels use the same rounded arithmetic and pick the same triangles. Not differentiable.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from get3dhuman._checks import check_int

_MAX_FACES = 2**32 - 1


class Rasterized(NamedTuple):
    """face_index [H, W] int64 (-1 where nothing is drawn) and barycentric [H, W, 3] float32:
    the weights of the drawn face's three corners at the pixel centre (zeros where none)."""

    face_index: torch.Tensor
    barycentric: torch.Tensor


def check_mesh_inputs(vertices: torch.Tensor, faces: torch.Tensor) -> None:
    """Raises naming the argument unless vertices is float32 [V, 3] and faces int64 [F, 3]
    with indices in [0, V), on one device."""
    if not isinstance(vertices, torch.Tensor) or vertices.dim() != 2 or vertices.shape[1] != 3:
        raise ValueError(f"vertices must be a [V, 3] tensor, got {tuple(getattr(vertices, 'shape', ())) or type(vertices).__name__}")
    if vertices.dtype != torch.float32:
        raise TypeError(f"vertices must be float32, got {vertices.dtype}")
    if not isinstance(faces, torch.Tensor) or faces.dim() != 2 or faces.shape[1] != 3:
        raise ValueError(f"faces must be a [F, 3] tensor, got {tuple(getattr(faces, 'shape', ())) or type(faces).__name__}")
    if faces.dtype != torch.int64:
        raise TypeError(f"faces must be int64, got {faces.dtype}")
    if faces.device != vertices.device:
        raise ValueError(f"faces must be on the device of vertices ({vertices.device}), got {faces.device}")
    if faces.shape[0] >= _MAX_FACES:
        raise ValueError(f"faces must number fewer than 2^32 - 1, got {faces.shape[0]}")
    if faces.numel() and (int(faces.min()) < 0 or int(faces.max()) >= vertices.shape[0]):
        raise ValueError(f"faces must index vertices in [0, {vertices.shape[0]}), got indices in "
                         f"[{int(faces.min())}, {int(faces.max())}]")


def rasterize(vertices: torch.Tensor, faces: torch.Tensor, height: int, width: int | None = None) -> Rasterized:
    """Draws the triangles `faces` [F, 3] (int64) of `vertices` [V, 3] (float32, NDC) into a
    height x width image (width defaults to height) with a z-buffer; CPU or CUDA tensors.
    Faces with a non-finite corner or no area are skipped."""
    height = check_int(height, "height", 2)
    width = height if width is None else check_int(width, "width", 2)
    check_mesh_inputs(vertices, faces)
    return Rasterized(*torch.ops.get3dhuman.rasterize(vertices, faces, height, width))


@torch.library.register_fake("get3dhuman::rasterize")
def _rasterize_fake(vertices, faces, height, width):
    return faces.new_empty(height, width), vertices.new_empty(height, width, 3)


def reference_rasterize(vertices: torch.Tensor, faces: torch.Tensor, height: int, width: int | None = None,
                        faces_per_chunk: int = 256) -> Rasterized:
    """The rasterization of `rasterize` by whole-array torch operations in float64 (every pixel
    against every face, `faces_per_chunk` faces at a time): the test oracle. Pixels on a shared
    edge or at equal depths may resolve differently from the kernels' rounded arithmetic."""
    height = check_int(height, "height", 2)
    width = height if width is None else check_int(width, "width", 2)
    check_mesh_inputs(vertices, faces)
    rows, columns = torch.meshgrid(torch.arange(height, dtype=torch.float64, device=vertices.device),
                                   torch.arange(width, dtype=torch.float64, device=vertices.device), indexing="ij")
    pixels = torch.stack([columns.reshape(-1), rows.reshape(-1)], -1)  # [P, 2] (x, y)
    scale = torch.tensor([(width - 1) / 2, (height - 1) / 2], dtype=torch.float64, device=vertices.device)
    corners = vertices.double()[faces]  # [F, 3, 3]
    screen = (corners[..., :2] + 1) * scale  # [F, 3, 2]
    best_depth = torch.full((pixels.shape[0],), -torch.inf, dtype=torch.float64, device=vertices.device)
    best_face = torch.full((pixels.shape[0],), -1, dtype=torch.int64, device=vertices.device)
    best_weights = torch.zeros(pixels.shape[0], 3, dtype=torch.float64, device=vertices.device)
    for begin in range(0, faces.shape[0], faces_per_chunk):
        a, b, c = screen[begin:begin + faces_per_chunk].unbind(1)  # [K, 2] each
        area = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])  # [K]
        relative = pixels.unsqueeze(1) - a  # [P, K, 2]
        # Weights of b and c by Cramer's rule, a's the rest.
        weight_b = (relative[..., 0] * (c[:, 1] - a[:, 1]) - relative[..., 1] * (c[:, 0] - a[:, 0])) / area
        weight_c = ((b[:, 0] - a[:, 0]) * relative[..., 1] - (b[:, 1] - a[:, 1]) * relative[..., 0]) / area
        weights = torch.stack([1 - weight_b - weight_c, weight_b, weight_c], -1)  # [P, K, 3]
        finite = torch.isfinite(corners[begin:begin + faces_per_chunk]).all(-1).all(-1) & (area != 0)
        inside = (weights >= 0).all(-1) & finite
        depth = (weights * corners[begin:begin + faces_per_chunk, :, 2]).sum(-1)
        depth = torch.where(inside, depth, -torch.inf)
        chunk_depth, chunk_face = depth.max(1)  # first maximum: the lowest face index of a tie
        better = chunk_depth > best_depth
        best_depth = torch.where(better, chunk_depth, best_depth)
        best_face = torch.where(better, chunk_face + begin, best_face)
        best_weights = torch.where(better.unsqueeze(-1), weights.gather(1, chunk_face.reshape(-1, 1, 1).expand(-1, 1, 3))[:, 0],
                                   best_weights)
    return Rasterized(best_face.reshape(height, width), best_weights.float().reshape(height, width, 3))
