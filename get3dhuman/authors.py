"""The authors' colouring of a generated mesh, as their inference.py does it
(`tools.inference_avatar`), for generators with their conventions
(`GeneratorConfig.authors_conventions`, e.g. `Generator.from_official_checkpoint`):

1. two orthographic views, from the back (180 degrees) and the front (0), each `render_size`
   pixels square, are sphere-traced: 55 steps of their pseudo-distance (2 o - 1) * 25 / 128 (o:
   their occupancy, 1 = outside) from the near plane, query points clamped to [-0.99, 0.99]; a
   ray keeps the step with the smallest |distance|, and hits where that distance is below
   HIT_DISTANCE, the point lies inside their cube and the depth after that step is within
   DEPTH_RANGE;
2. the texture decoder colours each pixel at its kept point, composited on white with the hit
   mask dilated by a 4 x 4 square;
3. their refinement U-Net refines each view (`nn.OfficialRefiner`; none: the views as they are);
4. every hit pixel is lifted back to 3D by its depth through their `calib_define` (pixel
   (u, v) at u / R, not u / (R - 1), of the vertically flipped image), the back view rotated
   back, and each mesh vertex takes the colour of the nearest lifted pixel (a k-d tree); so
   does each texel of a UV-textured mesh, at its surface point (`texture.rebake_texture`).

`AuthorsColouring` is the option `Generator.extract_mesh(..., recolor=...)` takes. It traces
only the rays near the mesh's silhouette (`near_silhouette`; farther rays can neither hit nor
border a hit unless the field comes within their hit distance of its level where the mesh has
no surface), and stops each ray once its outcome is settled (`trace_view`).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
import torch.nn.functional as F

from get3dhuman._checks import check_int
from get3dhuman.mesh import TexturedMesh
from get3dhuman.nn.generator import AUTHORS_BOX
from get3dhuman.ops import rasterize
from get3dhuman.texture import rebake_texture

VIEW_ANGLES = (180.0, 0.0)  # degrees about the vertical axis, in their order
TRACE_STEPS = 55
DISTANCE_SCALE = 25 / 128  # their pseudo-distance: (2 o - 1) * 25 / 128
STEP_CLAMP = 0.2  # their ray marcher's clamp of a step (never reached: |distance| <= 25 / 128)
POINT_CLAMP = 0.99  # query points are clamped to [-0.99, 0.99] in every coordinate
HIT_DISTANCE = 0.0008
CONVERGED = 1e-6  # a ray whose |distance| falls below this stops (trace_view)
CUBE_LOWER = -0.999  # a kept point must exceed this in every coordinate of its view's frame
DEPTH_RANGE = (0.4, 2.0)  # exclusive
DILATION = 4  # side of the square the hit mask is dilated by (cv2.dilate's anchor: its centre)
# Their `calib_define`: lifted NDC (x, y, z) -> world (s x, s y + 95, -s z).
LIFT_SCALE = 107.78947529
LIFT_CENTRE_Y = 95.0
_FLIP_Y = torch.tensor([1.0, -1.0, 1.0])  # their tracer's frame <-> NDC


def _rotation(angle_deg: float, dtype: torch.dtype) -> torch.Tensor:
    """Their make_rotate(0, angle, 0): a rotation about the vertical axis [3, 3], applied to row
    vectors from the right. float32 as their tracer's (torch), float64 as their lift's (numpy)."""
    if dtype == torch.float32:
        angle = torch.deg2rad(torch.tensor(angle_deg, dtype=torch.float32))
        cos, sin = torch.cos(angle).item(), torch.sin(angle).item()
    else:
        cos, sin = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
    return torch.tensor([[cos, 0.0, sin], [0.0, 1.0, 0.0], [-sin, 0.0, cos]], dtype=dtype)


def _distance(occupancy, points: torch.Tensor) -> torch.Tensor:
    """Their pseudo-distance [1, N] at points [1, N, 3] of their tracer's frame (NDC with y
    negated), the points clamped to POINT_CLAMP first; `occupancy` a generator's `shape_query`."""
    ndc = points.clamp(-POINT_CLAMP, POINT_CLAMP) * _FLIP_Y.to(points.device)
    outside = 1 - occupancy(ndc)
    return (2 * outside - 1) * DISTANCE_SCALE


@torch.no_grad()
def trace_view(generator, shape_volume: torch.Tensor, angle_deg: float, size: int, exhaustive: bool = False,
               rays: torch.Tensor | None = None):
    """One of their views of the shape volume [1, F, V, V]: (kept points [size * size, 3] in
    their tracer's frame, depth [size, size] with inf where no hit, hit mask [size, size]),
    pixels in row-major order.

    A ray stops marching once its outcome is settled: when its query point, clamped to the box,
    can only repeat (it left the box through the near or far plane and steps on outwards; exact),
    or when |distance| < CONVERGED (its kept point could then move by less than that). With
    `exhaustive`, every ray takes all TRACE_STEPS, as theirs do. `rays` (bool [size, size])
    traces only those pixels' rays; the others hit nothing."""
    device = shape_volume.device
    # Their pixel -> camera mapping: the inverse intrinsic of focal length and centre (R - 1) / 2.
    pixel = torch.arange(size, dtype=torch.float32) * torch.tensor(2 / (size - 1), dtype=torch.float32) - 1
    rows, columns = torch.meshgrid(pixel, pixel, indexing="ij")
    # Their rays start on the near plane z = -1 of the camera frame, flipped to z = 1 - t.
    start = torch.stack([columns, -rows, torch.ones_like(rows)], -1).reshape(-1, 3).to(device)
    rotation = _rotation(angle_deg, torch.float32).to(device)
    occupancy = generator.shape_query(shape_volume)
    count = start.shape[0]
    depth = torch.zeros(count, device=device)
    best = torch.full_like(depth, math.inf)
    kept_points, kept_distance, kept_depth = torch.zeros_like(start), torch.full_like(depth, math.inf), depth.clone()
    active = torch.arange(count, device=device) if rays is None else torch.nonzero(rays.reshape(-1))[:, 0].to(device)
    for _ in range(TRACE_STEPS):
        if active.numel() == 0:
            break
        camera_z = start[active, 2] - depth[active]
        points = torch.cat([start[active, :2], camera_z[:, None]], 1) @ rotation
        distance = _distance(occupancy, points[None])[0]
        depth[active] = depth[active] + distance.clamp(-STEP_CLAMP, STEP_CLAMP)
        closer = distance.abs() < best[active]  # the first of equal minima, as a strict minimum
        chosen = active[closer]
        best[chosen] = distance.abs()[closer]
        kept_points[chosen], kept_distance[chosen], kept_depth[chosen] = points[closer], distance[closer], depth[chosen]
        if not exhaustive:
            leaving = ((camera_z < -POINT_CLAMP) & (distance >= 0)) | ((camera_z > POINT_CLAMP) & (distance <= 0))
            active = active[~(leaving | (distance.abs() < CONVERGED))]
    in_cube = ((kept_points @ rotation) > CUBE_LOWER).all(-1)
    hit = (kept_distance < HIT_DISTANCE) & in_cube
    depth_map = torch.where(hit, kept_depth, math.inf).reshape(size, size)  # the depth after the kept step, as theirs
    mask = (depth_map > DEPTH_RANGE[0]) & (depth_map < DEPTH_RANGE[1])
    return kept_points, depth_map, mask


def check_render_size(size) -> int:
    """`size` as an int when it is a side their views can have: a multiple of 16 (their refiner
    pools 4 times); ValueError otherwise."""
    size = check_int(size, "render_size", 16)
    if size % 16:
        raise ValueError(f"render_size must be a multiple of 16 (the refiner pools 4 times), got {size}")
    return size


def check_authors_conventions(generator) -> None:
    """ValueError unless `generator` has the authors' conventions (their colouring lifts pixels
    into their world, which only their camera makes)."""
    if not generator.config.authors_conventions:
        raise ValueError("the authors' colouring needs a generator with their conventions "
                         "(Generator.from_official_checkpoint, or GeneratorConfig(authors_conventions=True))")


def dilate(mask: torch.Tensor) -> torch.Tensor:
    """mask [H, W] dilated by a DILATION x DILATION square anchored at its centre (cv2.dilate's
    default): a pixel is set where any pixel 2 above/left to 1 below/right of it is."""
    before, after = DILATION // 2, DILATION - 1 - DILATION // 2
    padded = F.pad(mask[None, None].float(), (before, after, before, after))
    return F.max_pool2d(padded, DILATION, stride=1)[0, 0] > 0


def near_silhouette(generator, mesh: TexturedMesh, size: int, resolution: int) -> torch.Tensor:
    """bool [size, size]: the pixels of their front view (their camera: `generator.calibration`,
    pixel centres at 2u / (size - 1) - 1) within a margin of the silhouette of `mesh`, meshed at
    `resolution` over their box: 3 pixels and two of its cells. Their back view's is this one
    flipped left to right (an orthographic silhouette seen from behind)."""
    calib = generator.calibration.to(mesh.vertices.device)
    ndc = (mesh.vertices.float() @ calib[:3, :3].T + calib[:3, 3]).contiguous()
    drawn = (rasterize(ndc, mesh.faces, size).face_index >= 0).float()
    cell = (AUTHORS_BOX[1][0] - AUTHORS_BOX[0][0]) / resolution * calib[0, 0].abs().item()  # in NDC
    margin = 3 + math.ceil(2 * cell / (2 / (size - 1)))
    return F.max_pool2d(drawn[None, None], 2 * margin + 1, stride=1, padding=margin)[0, 0] > 0


@torch.no_grad()
def authors_views(generator, shape_volume: torch.Tensor, texture_volume: torch.Tensor, refiner=None,
                  render_size: int = 512, exhaustive: bool = False,
                  rays: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Their two views of one generated human (volumes [1, F, V, V]), VIEW_ANGLES order: the
    decoded images composited on white [2, 3, R, R], the refined images [2, 3, R, R] in [0, 1]
    (`refiner` an nn.OfficialRefiner, or None: the images as they are), and the depth maps
    [2, R, R] (inf where no hit; NDC depth from the near plane). `exhaustive`: see trace_view;
    `rays` (bool [R, R], the front view's, e.g. `near_silhouette`): trace only those rays."""
    render_size = check_render_size(render_size)
    images, depths = [], []
    for angle in VIEW_ANGLES:
        view_rays = None if rays is None else (rays.flip(1) if angle == 180.0 else rays)
        points, depth, mask = trace_view(generator, shape_volume, angle, render_size, exhaustive, view_rays)
        dilated = dilate(mask).reshape(-1)
        image = torch.ones(render_size * render_size, 3, device=shape_volume.device)
        if dilated.any():
            ndc = points[dilated].clamp(-POINT_CLAMP, POINT_CLAMP) * _FLIP_Y.to(points.device)
            image[dilated] = generator.query_color(shape_volume, texture_volume, ndc[None])[0].float()
        images.append(image.T.reshape(3, render_size, render_size))
        depths.append(torch.where(mask, depth, math.inf))
    images = torch.stack(images)
    refined = images if refiner is None else refiner(images)
    return images, refined, torch.stack(depths)


def lift_views(refined: torch.Tensor, depths: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Their lifted pixels: (world points [P, 3] float64, colours [P, 3]) of every hit pixel of
    views refined [2, 3, R, R] with depths [2, R, R] (VIEW_ANGLES order)."""
    size = refined.shape[-1]
    all_points, all_colours = [], []
    for angle, image, depth in zip(VIEW_ANGLES, refined.cpu(), depths.cpu()):
        rows, columns = torch.nonzero(torch.isfinite(depth).flip(0), as_tuple=True)  # their flipped image's order
        stored = (depth.flip(0)[rows, columns] / 2 * 255 * 255).numpy()  # their 16-bit-range depth, float32
        ndc = np.stack([columns.numpy() / size, rows.numpy() / size, stored / 255.0 / 255.0], 1) * 2 - 1
        world = np.stack([ndc[:, 0] * LIFT_SCALE, ndc[:, 1] * LIFT_SCALE + LIFT_CENTRE_Y, -ndc[:, 2] * LIFT_SCALE], 1)
        all_points.append(world @ _rotation(angle, torch.float64).numpy())
        all_colours.append(image.permute(1, 2, 0).flip(0)[rows, columns].double().numpy())
    return np.concatenate(all_points), np.concatenate(all_colours)


class AuthorsColouring:
    """The authors' colouring (module docstring) as an option of `Generator.extract_mesh`
    (`recolor=`) and of `dataset.write_samples`: `refiner` an nn.OfficialRefiner (their
    Get3DHuman_refinement_v1.pth) or None (the decoded views as they are); `render_size` the
    views' side (None: the mesh resolution, as their --render_size sets both; a multiple of 16).
    With `keep_views`, `views` receives each mesh's (decoded, refined) images [2, 3, R, R]."""

    def __init__(self, refiner=None, render_size: int | None = None, keep_views: bool = False):
        self.refiner, self.keep_views = refiner, keep_views
        self.render_size = None if render_size is None else check_render_size(render_size)
        self.views: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __call__(self, generator, shape_volume: torch.Tensor, texture_volume: torch.Tensor, mesh: TexturedMesh,
                 resolution: int) -> TexturedMesh:
        """`mesh` (of volumes [1, F, V, V], meshed at `resolution`) with the authors' colours.
        Where their views hit nothing (their code stops there), the texture decoder colours the
        vertices."""
        check_authors_conventions(generator)
        size = check_render_size(self.render_size or resolution)
        # An empty mesh traces no ray: its views are white (and kept, one pair a mesh).
        rays = (torch.zeros(size, size, dtype=torch.bool) if mesh.is_empty
                else near_silhouette(generator, mesh, size, resolution))
        images, refined, depths = authors_views(generator, shape_volume, texture_volume, self.refiner, size, rays=rays)
        if self.keep_views:
            self.views.append((images.cpu(), refined.cpu()))
        points, colours = lift_views(refined, depths)
        if mesh.is_empty:
            return mesh
        if len(points) == 0:
            calib = generator.calibration[None]

            def colour_at(at: torch.Tensor) -> torch.Tensor:
                return generator.query_color(shape_volume, texture_volume, at[None], calib)[0].float()
        else:
            from scipy.spatial import cKDTree

            tree = cKDTree(points)

            def colour_at(at: torch.Tensor) -> torch.Tensor:  # the nearest lifted pixel's
                return torch.from_numpy(colours[tree.query(at.double().cpu().numpy(), k=1)[1]]).to(at.device)
        recoloured = dataclasses.replace(mesh, colors=colour_at(mesh.vertices).to(mesh.colors).clamp(0, 1))
        if mesh.texture is None:
            return recoloured
        return rebake_texture(recoloured, lambda at, normals, current: colour_at(at))  # a texel as a vertex
