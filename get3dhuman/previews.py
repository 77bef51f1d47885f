"""Previews of generated meshes: views from orbit cameras, per-view maps and their encoding.

A preview is a mesh rasterized through the generator's calibration turned about the vertical
axis and raised where asked (`refine.mesh_views`), then shaded. Maps (mask, 16-bit depth,
normal) are the same views' pixels, encoded as PNG (`encode_map`, `decode_map`); `cameras.json`
(`write_cameras`) holds the cameras that lift depth maps back to world points (`lift_depth`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np
import torch

from get3dhuman._checks import check_int, is_finite_number
from get3dhuman.claims import write_atomically, write_file_atomically
from get3dhuman.nn.modes import evaluation_mode
from get3dhuman.refine import mesh_views, render_textured, view_calibration
from get3dhuman.render import Rendering, save_grid

MAPS = ("mask", "depth", "normal")  # per-view maps `preview_maps` may add (encode_map)
CAMERAS = "cameras.json"
CAMERA_CONVENTION = ("orthographic: ndc = calibration @ [x, y, z, 1] of world points; pixel (row i, column j) of an "
                     "R x R image is centred at ndc x = -1 + 2j/(R-1), y = -1 + 2i/(R-1); ndc z grows towards the camera")
PREVIEW_BACKGROUND = 1.0  # white behind the previews


@torch.no_grad()
def render_previews(generator, z_shape: torch.Tensor, z_texture: torch.Tensor, resolution: int = 256,
                    truncation_psi: float = 1.0, background: float = PREVIEW_BACKGROUND) -> torch.Tensor:
    """Front views [B, resolution, resolution, 3] in [0, 1] of latents z_shape, z_texture
    [B, z_dim] through the generator's calibration (refine.render_textured: the field
    ray-marched, coloured by the texture decoder, shaded), `background` where nothing is hit:
    what `mesh_previews` draws from the meshes, at seconds rather than milliseconds a view."""
    with evaluation_mode(generator):
        shape, texture = generator(z_shape, z_texture, truncation_psi)
        calib = generator.calibration.expand(z_shape.shape[0], 4, 4)
        return render_textured(generator, shape.volume, texture, calib, resolution, background=background)[0]


def mesh_previews(generator, meshes: Sequence, resolution: int = 256, background: float = PREVIEW_BACKGROUND,
                  angle: float = 0.0, elevation: float = 0.0) -> torch.Tensor:
    """Views [B, resolution, resolution, 3] in [0, 1] of `meshes` (B TexturedMeshes in world
    coordinates) rasterized through the generator's calibration turned by `angle` degrees about
    the vertical axis and raised by `elevation` degrees (refine.mesh_views), their vertex
    colours shaded as `render_previews` shades the field's, `background` where no triangle is
    drawn. They show what the files hold, and cost milliseconds where ray-marching the field
    costs seconds."""
    return mesh_views(generator, meshes, (angle,), resolution, background=background, elevation=elevation)[0][0]


def encode_map(rendering: Rendering, index: int, kind: str) -> np.ndarray:
    """The pixels of map `kind` (one of MAPS) of view `index` of a Rendering: 'mask' uint8
    [H, W] (255 on the mesh), 'depth' uint16 [H, W] (round((z + 1) / 2 * 65535) of the NDC
    depth z, larger nearer; 0 off the mesh), 'normal' uint8 [H, W, 3] (round((n + 1) / 2 * 255)
    of the camera-space normal: x right, y up, z towards the camera; 0 off the mesh)."""
    mask = rendering.mask[index].bool().cpu()
    if kind == "mask":
        return (mask.to(torch.uint8) * 255).numpy()
    if kind == "depth":
        depth = ((rendering.depth[index].cpu() + 1) / 2 * 65535).round().clamp(0, 65535)
        return torch.where(mask, depth, 0).to(torch.int32).numpy().astype(np.uint16)
    if kind == "normal":
        normal = ((rendering.normal[index].cpu() + 1) / 2 * 255).round().clamp(0, 255)
        return torch.where(mask.unsqueeze(-1), normal, 0).to(torch.uint8).numpy()
    raise ValueError(f"kind must be one of {', '.join(MAPS)}, got {kind!r}")


def decode_map(pixels: np.ndarray, kind: str) -> torch.Tensor:
    """The inverse of `encode_map`, NaN off the mesh: 'mask' bool [H, W]; 'depth' float32
    [H, W], the NDC depth z (within 1/65535 of the rendering's); 'normal' float32 [H, W, 3],
    the camera-space normal (within 1/255 per component). Off the mesh is where encode_map
    wrote zeros (a pixel of the mesh encodes to zero only at the far plane, z = -1)."""
    if kind not in MAPS:
        raise ValueError(f"kind must be one of {', '.join(MAPS)}, got {kind!r}")
    expected = {"mask": (np.uint8, 2), "depth": (np.uint16, 2), "normal": (np.uint8, 3)}[kind]
    pixels = np.asarray(pixels)
    if pixels.dtype != expected[0] or pixels.ndim != expected[1] or (kind == "normal" and pixels.shape[-1] != 3):
        shape = "[H, W, 3]" if kind == "normal" else "[H, W]"
        raise ValueError(f"pixels of a {kind} map must be {np.dtype(expected[0]).name} {shape}, got "
                         f"{pixels.dtype} {list(pixels.shape)}")
    values = torch.from_numpy(pixels.astype(np.float32))
    if kind == "mask":
        return values > 0
    if kind == "depth":
        return torch.where(values > 0, values / 65535 * 2 - 1, float("nan"))
    off = (values == 0).all(-1, keepdim=True)
    return torch.where(off, float("nan"), values / 255 * 2 - 1)


def lift_depth(depth: torch.Tensor, calibration: torch.Tensor) -> torch.Tensor:
    """World points [..., R, R, 3] of depth maps [..., R, R] (NDC z, as `decode_map` gives;
    NaN pixels give NaN points) seen through cameras calibration [..., 4, 4] (world -> NDC, as
    in cameras.json), by CAMERA_CONVENTION: pixel (i, j) lies at NDC x = -1 + 2j/(R-1),
    y = -1 + 2i/(R-1)."""
    if depth.dim() < 2 or depth.shape[-1] != depth.shape[-2] or depth.shape[-1] < 2:
        raise ValueError(f"depth must be [..., R, R] with R >= 2, got {list(depth.shape)}")
    if calibration.shape[-2:] != (4, 4):
        raise ValueError(f"calibration must be [..., 4, 4], got {list(calibration.shape)}")
    side = depth.shape[-1]
    ndc_axis = torch.linspace(-1, 1, side, dtype=torch.float64, device=depth.device)
    rows, columns = torch.meshgrid(ndc_axis, ndc_axis, indexing="ij")
    ndc = torch.stack(torch.broadcast_tensors(columns, rows, depth.double()), -1)  # [..., R, R, 3]
    calibration = calibration.double()
    inverse = torch.linalg.inv(calibration[..., :3, :3])  # once per camera, not per pixel
    world = torch.einsum("...ij,...rcj->...rci", inverse, ndc - calibration[..., None, None, :3, 3])
    return world.to(depth.dtype)


def save_png(image: torch.Tensor | np.ndarray, path: str) -> None:
    """Writes an image in [0, 1] [H, W, 3] (a tensor) or pixels (uint8/uint16 array) as a PNG,
    under a unique temporary name first (removed if the write fails), with the umask's mode."""
    from PIL import Image

    if isinstance(image, torch.Tensor):
        image = (image.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    write_file_atomically(path, lambda temporary: Image.fromarray(image).save(temporary, format="PNG"))


def preview_angles(views: int) -> list[float]:
    """The angles in degrees of `views` previews about the vertical axis: 360 / views apart, the
    front (0) first."""
    return [360 * k / views for k in range(views)]


def check_preview_options(preview_resolution: int | None, preview_views: int = 1, preview_maps: Sequence[str] = (),
                          preview_elevation: float = 0.0) -> tuple[int | None, int, list[str], float]:
    """Validates the preview options of `write_samples` / `write_previews` (naming the argument
    and what it must be); returns them as (int or None, int, list, float), as settings.json
    records them."""
    preview_resolution = check_int(preview_resolution, "preview_resolution", 2, none_ok=True)
    preview_views = check_int(preview_views, "preview_views", 1, 360)
    if preview_views > 1 and preview_resolution is None:
        raise ValueError("preview_views > 1 needs preview_resolution (the views are previews)")
    preview_maps = list(preview_maps)
    if any(kind not in MAPS for kind in preview_maps) or len(set(preview_maps)) < len(preview_maps):
        raise ValueError(f"preview_maps must be distinct names of {', '.join(MAPS)}, got {preview_maps!r}")
    if preview_maps and preview_resolution is None:
        raise ValueError("preview_maps needs preview_resolution (the maps are the previews' pixels)")
    if not is_finite_number(preview_elevation) or not -90 <= preview_elevation <= 90:
        raise ValueError(f"preview_elevation must be a number of degrees in [-90, 90], got {preview_elevation!r}")
    if preview_elevation != 0 and preview_resolution is None:
        raise ValueError("preview_elevation needs preview_resolution (it raises the previews' cameras)")
    return preview_resolution, preview_views, preview_maps, float(preview_elevation)


def write_cameras(out_dir: str, generator, views: int, resolution: int, elevation: float = 0.0) -> None:
    """Writes `out_dir`/cameras.json: the resolution, the angles of `views` previews, their
    elevation (degrees, positive from above) and their cameras (`refine.view_calibration` of
    each angle: world -> NDC [4, 4]) with CAMERA_CONVENTION, under a temporary name first."""
    angles = preview_angles(views)
    cameras = {"resolution": resolution, "angles": angles, "elevation": elevation,
               "calibrations": [view_calibration(generator, angle, elevation).double().cpu().tolist()
                                for angle in angles],
               "convention": CAMERA_CONVENTION}
    write_atomically(os.path.join(out_dir, CAMERAS), json.dumps(cameras, indent=1))


def write_previews(generator, out_dir: str, names: Sequence[str], meshes: Sequence, resolution: int, views: int = 1,
                   maps: Sequence[str] = (), elevation: float = 0.0) -> list[dict]:
    """Writes the previews of B `meshes` (`mesh_previews` through the generator's cameras, raised
    by `elevation` degrees): per mesh i `names[i].png` (the front), with `views` > 1 also
    `names[i]-AAA.png` from AAA degrees (`preview_angles`), and per view the `maps` of MAPS
    (`names[i][-AAA]-MAP.png`, encode_map).

    Returns per mesh its manifest entries: {"preview": file} and, with more than one view,
    "views": {"angles", "files"} (the front first), with maps "maps": {MAP: [files per view]}.
    """
    resolution, views, maps, elevation = check_preview_options(resolution, views, maps, elevation)
    angles = preview_angles(views)
    rendered = mesh_views(generator, meshes, angles, resolution, background=PREVIEW_BACKGROUND, elevation=elevation)
    images = [image for image, _, _ in rendered]  # per angle [B, R, R, 3]
    renderings = [rendering for _, _, rendering in rendered]
    suffixes = [""] + [f"-{round(angle):03d}" for angle in angles[1:]]
    entries = []
    for index, name in enumerate(names):
        files = [f"{name}{suffix}.png" for suffix in suffixes]
        for file, image in zip(files, images):
            save_png(image[index], os.path.join(out_dir, file))
        entry = {"preview": files[0]}
        if views > 1:
            entry["views"] = {"angles": angles, "files": files}
        if maps:
            entry["maps"] = {kind: [f"{name}{suffix}-{kind}.png" for suffix in suffixes] for kind in maps}
            for kind in maps:
                for file, rendering in zip(entry["maps"][kind], renderings):
                    save_png(encode_map(rendering, index, kind), os.path.join(out_dir, file))
        entries.append(entry)
    return entries


def save_preview_grid(out_dir: str, records: Sequence[dict], path: str, columns: int = 4) -> None:
    """One PNG grid (render.save_grid) of the preview images of `records` (manifest
    records of `out_dir`, each with a preview)."""
    from PIL import Image

    missing = [record["seed"] for record in records if record.get("preview") is None]
    if missing:
        raise ValueError(f"records must all have previews; seeds {missing[:5]} have none (sample with previews)")
    images = [torch.from_numpy(np.array(Image.open(os.path.join(out_dir, record["preview"])).convert("RGB")))
              for record in records]
    save_grid(torch.stack(images).float() / 255, path, columns)
