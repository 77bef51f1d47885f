"""Orthographic sphere tracing of implicit fields: mask, depth, normal and colour maps.

Cameras share the pixel-aligned query's convention: a calibration [B, 4, 4] maps world points
to NDC, where x runs left to right and y top to bottom over the image (align_corners=True:
NDC -1 and 1 are the centres of the first and last pixels) and z grows towards the camera.
`orbit_calibration` builds the cameras of Get3DHuman's renders: rotated about the vertical
(y) axis, 0 degrees looking at the front (+z) of a human, 180 at the back.

The field is any callable ``sdf(points [B, N, 3]) -> [B, N]`` in world units, negative inside
and close to a true distance (sphere tracing steps by its value); for an occupancy field,
pass a signed-distance-like transform of it. Maps are differentiable with respect to the
parameters the callables close over: the hit point is re-attached to the graph by implicit
differentiation of f(x) = 0 along the ray, x = x* - d f(x*) / (grad f(x*) . d), exact to first
order; normals come from the field's gradient with create_graph, so normal losses train too.
`render_meshes` draws the same maps from triangle meshes (ops.rasterize), not differentiably.
`shade` lights a rendering's colours; `save_grid` writes images as one PNG.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch

from get3dhuman._checks import check_int
from get3dhuman.ops.rasterize import rasterize

Field = Callable[[torch.Tensor], torch.Tensor]
LIGHT = (0.3, 0.5, 0.8)  # camera-space direction of the key light


class Rendering(NamedTuple):
    """Maps of one rendering, each [B, H, W] or [B, H, W, 3]; background pixels hold zeros.

    mask: 1.0 where the ray hit the surface. depth: NDC z of the hit (the pixel-aligned depth
    feature's z). normal: unit surface normal in camera space (x right, y up, z towards the
    camera). color: colour_fn at the hit (zeros without one). points: world hit points.
    """

    mask: torch.Tensor
    depth: torch.Tensor
    normal: torch.Tensor
    color: torch.Tensor
    points: torch.Tensor


def orbit_calibration(angles_deg: torch.Tensor, extent: float = 1.0) -> torch.Tensor:
    """[B, 4, 4] world -> NDC calibrations of orthographic cameras rotated by `angles_deg` [B]
    about the y axis; the image covers [-extent, extent]^2 of the (rotated) x/y plane."""
    angles = torch.deg2rad(torch.as_tensor(angles_deg, dtype=torch.float32)).reshape(-1)
    cos, sin, scale = torch.cos(angles), torch.sin(angles), 1.0 / extent
    calib = torch.zeros(len(angles), 4, 4)
    calib[:, 0, 0], calib[:, 0, 2] = scale * cos, -scale * sin
    calib[:, 1, 1] = -scale  # image rows run downwards
    calib[:, 2, 0], calib[:, 2, 2] = scale * sin, scale * cos
    calib[:, 3, 3] = 1
    return calib


def _gradient(field: Field, points: torch.Tensor, create_graph: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The field and its gradient at points; the value keeps its graph to the field's parameters."""
    with torch.enable_grad():
        if not points.requires_grad:
            points = points.requires_grad_()
        value = field(points)
        (gradient,) = torch.autograd.grad(value.sum(), points, create_graph=create_graph, retain_graph=True)
    return value, gradient


def _difference_gradient(field: Field, points: torch.Tensor, step: float) -> torch.Tensor:
    """Central differences [B, N, 3] of the field at points (6 evaluations per point);
    differentiable with first-order gradients only."""
    offsets = step * torch.cat([torch.eye(3), -torch.eye(3)]).to(points)  # [6, 3]
    values = field((points.unsqueeze(2) + offsets).flatten(1, 2)).reshape(*points.shape[:2], 6)
    return (values[..., :3] - values[..., 3:]) / (2 * step)


class CameraRays(NamedTuple):
    """One ray per pixel of orthographic cameras (`camera_rays`), row-major over the image."""

    origin: torch.Tensor  # [B, N, 3] world points on the NDC plane z = +1
    direction: torch.Tensor  # [B, 1, 3] unit world direction towards NDC z = -1
    far: torch.Tensor  # [B, 1] world length of the NDC depth range
    linear: torch.Tensor  # [B, 3, 3] of the calibration
    offset: torch.Tensor  # [B, 3]


def _camera_rotation(linear: torch.Tensor) -> torch.Tensor:
    """World -> camera axes [B, 3, 3] of calibrations' linear parts [B, 3, 3]: their rows
    without their scale, y flipped to point up."""
    return linear / linear.norm(dim=2, keepdim=True) * torch.tensor([1.0, -1.0, 1.0], device=linear.device).reshape(1, 3, 1)


def camera_rays(calib: torch.Tensor, resolution: int) -> CameraRays:
    """The rays [B, resolution^2] of the cameras `calib` [B, 4, 4], from NDC z = +1 towards -1."""
    if not isinstance(calib, torch.Tensor) or calib.dim() != 3 or calib.shape[1:] != (4, 4):
        raise ValueError(f"calib must be [B, 4, 4], got {tuple(calib.shape) if isinstance(calib, torch.Tensor) else calib!r}")
    resolution = check_int(resolution, "resolution", 2)
    batch, device = calib.shape[0], calib.device
    linear, offset = calib[:, :3, :3], calib[:, :3, 3]
    inverse = torch.linalg.inv(linear)
    coords = torch.linspace(-1, 1, resolution, device=device)
    v, u = torch.meshgrid(coords, coords, indexing="ij")
    ndc = torch.stack([u, v, torch.ones_like(u)], -1).reshape(1, -1, 3).expand(batch, -1, -1)
    origin = (ndc - offset.unsqueeze(1)) @ inverse.transpose(1, 2)
    toward = torch.tensor([0.0, 0.0, -1.0], device=device).expand(batch, 3)
    direction = toward.unsqueeze(1) @ inverse.transpose(1, 2)  # world displacement per NDC unit of depth
    ndc_length = direction.norm(dim=-1, keepdim=True)  # [B, 1, 1]
    return CameraRays(origin, direction / ndc_length, 2 * ndc_length[..., 0], linear, offset)


def sphere_trace(field: Field, calib: torch.Tensor, resolution: int = 256, color_fn: Field | None = None,
                 steps: int = 96, epsilon: float = 1e-4) -> Rendering:
    """Renders `field` through the orthographic cameras `calib` [B, 4, 4] at resolution^2.

    Rays start on the NDC plane z = +1 and march towards z = -1, stepping by the field value;
    a ray hits where |field| < epsilon. color_fn(points [B, N, 3]) -> [B, N, 3] colours hits.
    """
    steps = check_int(steps, "steps", 0)
    rays = camera_rays(calib, resolution)
    batch, count, device = calib.shape[0], resolution * resolution, calib.device
    t = torch.zeros(batch, count, device=device)
    # The rays still marching, per batch row in ascending order, padded to a common width with
    # finished rays (whose t the step leaves as it is); compacted after each step, so that the
    # long tail of a few slow rays costs no pass over every ray.
    order = torch.arange(count, device=device).expand(batch, count)
    valid = torch.ones(batch, count, dtype=torch.bool, device=device)
    with torch.no_grad():
        for _ in range(steps):
            t_active = torch.gather(t, 1, order)
            points = torch.gather(rays.origin, 1, order.unsqueeze(-1).expand(-1, -1, 3)) + t_active.unsqueeze(-1) * rays.direction
            value = field(points)
            t_new = torch.where(valid, t_active + value, t_active)
            t = t.scatter(1, order, t_new)
            marching = valid & (value.abs() >= epsilon) & (t_new <= rays.far)
            counts = marching.sum(1)
            width = int(counts.max())
            if width == 0:
                break
            kept = torch.argsort((~marching).to(torch.int8), dim=1, stable=True)[:, :width]
            order = torch.gather(order, 1, kept)
            valid = torch.arange(width, device=device).unsqueeze(0) < counts.unsqueeze(1)
    return _surface_maps(field, rays, t, t < rays.far, resolution, color_fn, hit_tolerance=10 * epsilon)


def ray_march(field: Field, calib: torch.Tensor, resolution: int = 256, color_fn: Field | None = None,
              samples: int = 128, bisections: int = 10, slab: int = 16, normal_step: float | None = None) -> Rendering:
    """Renders the first crossing of `field` from positive (outside) to negative (inside)
    along each ray, for fields that are not distances (e.g. ``0.5 - occupancy``).

    Each ray is sampled at `samples` uniform depths from NDC z = +1 to -1 (`slab` depths per
    field call, stopping once every ray has crossed); the first bracketing pair is narrowed
    by `bisections` bisection steps and the hit placed by linear interpolation inside it.
    A ray that starts inside hits only where it enters the shape again. Maps and their
    gradients are those of `sphere_trace` (implicit differentiation at the hit). With
    `normal_step`, normals are central differences of that world step instead of autograd
    gradients: normal losses then need only first-order derivatives of the field (fused
    queries have no second-order backward).
    """
    samples = check_int(samples, "samples", 2)
    bisections = check_int(bisections, "bisections", 0)
    slab = check_int(slab, "slab", 1)
    if normal_step is not None and not normal_step > 0:
        raise ValueError(f"normal_step must be a positive world length or None, got {normal_step!r}")
    rays = camera_rays(calib, resolution)
    batch, count, device = calib.shape[0], resolution * resolution, calib.device
    step = rays.far / (samples - 1)  # [B, 1]

    def evaluate(t: torch.Tensor) -> torch.Tensor:  # t [B, N, K] -> field [B, N, K]
        points = rays.origin.unsqueeze(2) + t.unsqueeze(-1) * rays.direction.unsqueeze(2)
        return field(points.reshape(batch, -1, 3)).reshape(t.shape)

    with torch.no_grad():
        low = torch.zeros(batch, count, device=device)
        value_low = torch.zeros(batch, count, device=device)
        found = torch.zeros(batch, count, dtype=torch.bool, device=device)
        previous = None  # the field at the last depth of the previous slab
        for begin in range(0, samples, slab):
            index = torch.arange(begin, min(begin + slab, samples), device=device, dtype=torch.float32)
            values = evaluate((index * step.unsqueeze(-1)).expand(batch, count, -1))
            # Index 0 is compared with itself, so it never brackets.
            before = torch.cat([values[..., :1] if previous is None else previous.unsqueeze(-1), values[..., :-1]], -1)
            crossing = (before >= 0) & (values < 0)
            first = crossing.int().argmax(-1)
            new = crossing.any(-1) & ~found
            low = torch.where(new, (index[first] - 1) * step, low)
            value_low = torch.where(new, before.gather(-1, first.unsqueeze(-1)).squeeze(-1), value_low)
            found |= new
            previous = values[..., -1]
            if found.all():
                break
        high = low + step
        for _ in range(bisections):
            middle = 0.5 * (low + high)
            value = evaluate(middle.unsqueeze(-1)).squeeze(-1)
            outside = value >= 0
            low, value_low = torch.where(outside, middle, low), torch.where(outside, value, value_low)
            high = torch.where(outside, high, middle)
        value_high = evaluate(high.unsqueeze(-1)).squeeze(-1)
        fraction = (value_low / (value_low - value_high).clamp_min(1e-12)).clamp(0, 1)
        t = low + fraction * (high - low)
    return _surface_maps(field, rays, t, found, resolution, color_fn, hit_tolerance=None, normal_step=normal_step)


def _surface_maps(field: Field, rays: CameraRays, t: torch.Tensor, found: torch.Tensor, resolution: int,
                  color_fn: Field | None, hit_tolerance: float | None, normal_step: float | None = None) -> Rendering:
    """Maps from ray lengths t [B, N] (rays with `found` false are misses), with the hit points
    re-attached to the field's parameters by implicit differentiation."""
    batch = t.shape[0]
    t = torch.where(found, t, torch.zeros_like(t))  # misses are masked out; keep their points finite
    surface = rays.origin + t.unsqueeze(-1) * rays.direction
    value, gradient = _gradient(field, surface.detach().clone(), create_graph=torch.is_grad_enabled() and normal_step is None)
    hit = found if hit_tolerance is None else found & (value.detach().abs() < hit_tolerance)
    along = (gradient.detach() * rays.direction).sum(-1)
    safe_along = torch.where(along.abs() > 1e-6, along, -torch.ones_like(along))
    surface = surface.detach() - rays.direction * (value / safe_along).unsqueeze(-1)
    mask = hit.float()
    if normal_step is not None:
        gradient = _difference_gradient(field, surface.detach(), normal_step)
    normal_world = gradient / gradient.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    normal = normal_world @ _camera_rotation(rays.linear).transpose(1, 2)
    depth = ((surface @ rays.linear.transpose(1, 2)) + rays.offset.unsqueeze(1))[..., 2]
    color = color_fn(surface) if color_fn is not None else torch.zeros_like(surface)

    def image(x):
        shape = (batch, resolution, resolution) + x.shape[2:]
        return torch.where(hit.reshape(batch, -1, *([1] * (x.dim() - 2))), x, torch.zeros_like(x)).reshape(shape)

    return Rendering(mask.reshape(batch, resolution, resolution), image(depth), image(normal), image(color), image(surface))


def _interpolate(values: torch.Tensor, corners: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Vertex values [V, K] at pixels with face corners [H, W, 3] and weights [H, W, 3] -> [H, W, K]."""
    return (values.to(weights)[corners] * weights.unsqueeze(-1)).sum(-2)


def render_meshes(meshes: Sequence, calib: torch.Tensor, resolution: int = 256) -> Rendering:
    """The maps of `sphere_trace`, drawn from triangle meshes instead of a field: each of
    `meshes` (objects with world-space vertices [V, 3], faces [F, 3], colors [V, 3] and unit
    normals [V, 3], such as mesh.TexturedMesh) rasterized (ops.rasterize) through its camera
    calib [B, 4, 4] (B = len(meshes)) at resolution^2. Colours, normals (renormalised) and
    points interpolate the vertices' at each pixel centre, depth is the NDC z; a mesh without
    faces draws nothing. Not differentiable."""
    if not meshes:
        raise ValueError("meshes must hold at least one mesh")
    if not isinstance(calib, torch.Tensor) or calib.dim() != 3 or calib.shape[1:] != (4, 4) or calib.shape[0] != len(meshes):
        raise ValueError(f"calib must be [B, 4, 4] with B = len(meshes) = {len(meshes)}, got "
                         f"{tuple(calib.shape) if isinstance(calib, torch.Tensor) else calib!r}")
    resolution = check_int(resolution, "resolution", 2)
    calib = calib.float()
    linear, offset = calib[:, :3, :3], calib[:, :3, 3]
    rotation = _camera_rotation(linear)
    maps = []
    for camera, mesh in enumerate(meshes):
        vertices, faces = mesh.vertices.to(calib.device, torch.float32), mesh.faces.to(calib.device)
        ndc = vertices @ linear[camera].T + offset[camera]
        face_index, weights = rasterize(ndc.contiguous(), faces, resolution)
        if faces.shape[0] == 0:
            blank = weights.new_zeros(resolution, resolution)
            maps.append((blank, blank, weights, weights, weights))
            continue
        corners = faces[face_index.clamp_min(0)]  # [H, W, 3]; weights are zero off the mesh
        normal = _interpolate(mesh.normals, corners, weights)
        normal = normal / normal.norm(dim=-1, keepdim=True).clamp_min(1e-12) @ rotation[camera].T
        maps.append(((face_index >= 0).to(weights), _interpolate(ndc, corners, weights)[..., 2], normal,
                     _interpolate(mesh.colors, corners, weights), _interpolate(vertices, corners, weights)))
    return Rendering(*(torch.stack(parts) for parts in zip(*maps)))


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
