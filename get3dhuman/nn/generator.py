"""The two-branch Get3DHuman generator.

Shape branch: z_shape -> StyleGAN2 backbone -> map [B, 16, R, R] -> HGFilter -> shape feature
volume [B, F, R/4, R/4] -> shape decoder (occupancy). Texture branch: z_texture -> backbone ->
concat(texture map, shape map) -> HGFilter -> texture feature volume -> texture decoder on
concat(shape, texture) sampled features (colour).

Camera: the feature volumes are pixel-aligned for a world -> NDC calibration, the Generator's
`calibration` buffer ([4, 4]; not saved in the state dict): `render.orbit_calibration(0)` for
models of this package (the synthetic world's front camera, the one the prior was made with),
OFFICIAL_CALIBRATION after `from_official_checkpoint`. Meshes come out in world coordinates.

Occupancy convention of this package: the shape decoder's output is the probability of being
INSIDE (iso-level 0.5). The authors' decoder predicts 1 = outside; `from_official_checkpoint`
converts by negating its last layer (sigmoid(-a) = 1 - sigmoid(a), exact).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from get3dhuman._checks import check_int, check_seed, is_finite_number
from get3dhuman.mesh import ExtractionTimings, MeshingOptions, TexturedMesh, extract_textured_meshes
from get3dhuman.nn.discriminator import ResNetDiscriminator
from get3dhuman.nn.hourglass import HGFilter
from get3dhuman.nn.implicit import ImplicitDecoder
from get3dhuman.nn.modes import evaluation_mode
from get3dhuman.nn.pretrained import (
    WEIGHTS_DIR,
    check_official_kind,
    load_pretrained_state,
    read_pretrained,
    read_state_dict,
    write_pretrained,
)
from get3dhuman.nn.stylegan2 import NOISE_MODES, StyleGAN2Generator, check_like_weights
from get3dhuman.ops import OFFICIAL_DEPTH_SCALE, project_inputs, query_field
from get3dhuman.render import orbit_calibration
from get3dhuman.texture import bake_texture, decimate

# Volumes of these dtypes are queried in float32 geometry (PixelAlignedModel.query_occupancy).
REDUCED_DTYPES = (torch.bfloat16, torch.float16)
# Dtypes a Generator's weights and networks can run in (`Generator.from_pretrained`).
MODEL_DTYPES = (torch.float32, torch.float64, *REDUCED_DTYPES)

# The authors' world -> NDC calibration (x*s, -y*s + 0.88134766, z*s; body centred at y = 95
# in a [-128, -28, -128] .. [128, 228, 128] box).
OFFICIAL_SCALE = 0.00927734
OFFICIAL_CALIBRATION = torch.tensor(
    [[OFFICIAL_SCALE, 0, 0, 0], [0, -OFFICIAL_SCALE, 0, 0.88134766], [0, 0, OFFICIAL_SCALE, 0], [0, 0, 0, 1]]
)

# The box the authors mesh (their inference.py's b_min, b_max), in their world units.
AUTHORS_BOX = ((-128.0, -28.0, -128.0), (128.0, 228.0, 128.0))
# Their `query_mlp` sets 0.9 (their 1 = outside) where a point projects outside the image; they
# mesh 1 - that, in float32: this value.
OUTSIDE_IMAGE_OCCUPANCY = (torch.tensor(1.0) - torch.tensor(0.9)).item()


@dataclasses.dataclass(frozen=True)
class GeneratorConfig:
    """Sizes of a Generator. The defaults are the published model ("official")."""

    z_dim: int = 512
    w_dim: int = 512
    mapping_layers: int = 2
    backbone_resolution: int = 512
    backbone_channels: int = 16
    channel_base: int = 32768
    channel_max: int = 512
    conv_clamp: int | None = 256
    hourglass_depth: int = 2
    feature_channels: int = 256
    shape_hidden: tuple[int, ...] = (512, 256, 128)
    shape_concat: tuple[int, ...] = (1, 2)
    texture_hidden: tuple[int, ...] = (1024, 512, 256, 128)
    texture_concat: tuple[int, ...] = (2, 3)
    depth_scale: float = OFFICIAL_DEPTH_SCALE
    # The authors' inference conventions (set by `Generator.from_official_checkpoint`): a point
    # that projects outside the image has occupancy OUTSIDE_IMAGE_OCCUPANCY, and meshes cover
    # AUTHORS_BOX, their lattice's points included (`PixelAlignedModel.mesh_lattice`).
    authors_conventions: bool = False

    def __post_init__(self) -> None:
        # Checked here rather than deep inside the networks (a KeyError or ZeroDivisionError
        # there), also for the sizes a weights file carries.
        for name in ("z_dim", "w_dim", "mapping_layers", "backbone_channels", "channel_base", "channel_max",
                     "hourglass_depth", "feature_channels"):
            check_int(getattr(self, name), name, 1)
        check_int(self.conv_clamp, "conv_clamp", 1, none_ok=True)
        resolution = check_int(self.backbone_resolution, "backbone_resolution", 4)
        if resolution & (resolution - 1):
            raise ValueError(f"backbone_resolution must be a power of two >= 4, got {resolution}")
        if not isinstance(self.authors_conventions, bool):
            raise ValueError(f"authors_conventions must be a bool, got {self.authors_conventions!r}")
        if not is_finite_number(self.depth_scale):  # any sign: the depth feature's, as the op takes it
            raise ValueError(f"depth_scale must be a finite number, got {self.depth_scale!r}")

    @property
    def volume_resolution(self) -> int:
        """Side of the feature volumes: (R / 2 + 1) // 2 (conv1 stride 2 with padding 3, then pooling)."""
        return (self.backbone_resolution // 2 + 1) // 2


PRESETS = {
    "official": GeneratorConfig(),
    # Trainable on a CPU in hours: 128^2 backbones, 32^2 x 128 feature volumes.
    "small": GeneratorConfig(
        z_dim=256, w_dim=256, backbone_resolution=128, channel_base=8192, channel_max=256, feature_channels=128,
        shape_hidden=(256, 128, 64), texture_hidden=(512, 256, 128, 64),
    ),
    # Tests in seconds: 32^2 backbones, 8^2 x 128 feature volumes.
    "tiny": GeneratorConfig(
        z_dim=32, w_dim=32, backbone_resolution=32, backbone_channels=8, channel_base=512, channel_max=64,
        feature_channels=128, shape_hidden=(32, 16), shape_concat=(1,), texture_hidden=(32, 16), texture_concat=(1,),
    ),
}


class ShapeFeatures(NamedTuple):
    """The shape branch's outputs: the backbone map [B, C, R, R] (also an input of the texture
    branch) and the pixel-aligned shape feature volume [B, F, V, V]."""

    map: torch.Tensor
    volume: torch.Tensor


def resolve_config(config: GeneratorConfig | str) -> GeneratorConfig:
    """A GeneratorConfig from itself or a preset name ('official', 'small', 'tiny')."""
    if isinstance(config, GeneratorConfig):
        return config
    if config not in PRESETS:
        raise ValueError(f"config must be a GeneratorConfig or one of {sorted(PRESETS)}, got {config!r}")
    return PRESETS[config]


def latents_of_seeds(seeds, z_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(z_shape, z_texture), each [len(seeds), z_dim] on the CPU: row i drawn from a generator
    seeded with seeds[i] alone, so a seed always names the same sample."""
    seeds = [check_seed(seed) for seed in seeds]
    pairs = [torch.randn(2, z_dim, generator=torch.Generator().manual_seed(s)) for s in seeds]
    if not pairs:
        return torch.empty(0, z_dim), torch.empty(0, z_dim)
    z = torch.stack(pairs)
    return z[:, 0], z[:, 1]


class PixelAlignedModel(nn.Module):
    """The part shared by the Generator and the Reconstructor: the shape decoder ``mlp_shape``
    (occupancy from shape features) and the texture decoder ``mlp_texture`` (colour from
    concatenated shape and texture features), queried through the fused op, the camera
    (`calibration`, see the module docstring) and mesh extraction from feature volumes."""

    def __init__(self, config: GeneratorConfig | str):
        super().__init__()
        self.config = c = resolve_config(config)
        self.mlp_shape = ImplicitDecoder([c.feature_channels + 1, *c.shape_hidden, 1], c.shape_concat)
        self.mlp_texture = ImplicitDecoder([2 * c.feature_channels + 1, *c.texture_hidden, 3], c.texture_concat)
        self.register_buffer("calibration", orbit_calibration(torch.zeros(1))[0], persistent=False)

    def _apply(self, fn, recurse=True):
        # The camera keeps its float32 values whatever dtype the networks are cast to (rounded
        # to bfloat16 it would move the world by up to a voxel); moves without a cast apply.
        calibration = self.calibration
        super()._apply(fn, recurse)
        if self.calibration.dtype != calibration.dtype:
            self.calibration = calibration.to(self.calibration.device)
        return self

    def world_bounds(self) -> tuple[list[float], list[float]]:
        """(lower, upper) world corners of the box the camera sees: the axis-aligned bounds of
        the NDC cube [-1, 1]^3 mapped back through `calibration`."""
        corners = torch.cartesian_prod(*[torch.tensor([-1.0, 1.0], dtype=torch.float64)] * 3)
        calibration = self.calibration.double().cpu()
        world = (corners - calibration[:3, 3]) @ torch.linalg.inv(calibration[:3, :3]).T
        return world.min(0).values.tolist(), world.max(0).values.tolist()

    def mesh_lattice(self, resolution: int) -> tuple[list[float], list[float], int]:
        """(lower, upper, cells per axis) of the lattice meshes are made on at `resolution`:
        `world_bounds()` cut in `resolution` cells, or with the authors' conventions AUTHORS_BOX
        cut in `resolution` cells. Their lattice is that one's first `resolution` points per axis
        (from the lower corner, a step of the box's side over `resolution` apart); the package
        also evaluates the layer at the upper corner, so that the narrow band can halve its cells
        down to `resolution` (theirs has resolution - 1 cells, for 512 an odd number)."""
        resolution = check_int(resolution, "resolution", 1)
        lower, upper = AUTHORS_BOX if self.config.authors_conventions else self.world_bounds()
        return list(lower), list(upper), resolution

    def meshes_from_volumes(self, shape_volume: torch.Tensor, texture_volume: torch.Tensor | None,
                            resolution: int = 256, *, meshing: MeshingOptions | None = None,
                            timings: ExtractionTimings | None = None, recolor=None) -> list[TexturedMesh]:
        """Textured meshes of feature volumes [B, F, V, V], one per row (no gradients).

        The occupancy field (level 0.5) is sampled coarse to fine over `mesh_lattice(resolution)`
        (see ops.narrow_band), meshed by sparse marching cubes, and
        coloured by the texture decoder at the vertices (grey where texture_volume is None).
        meshing: the narrow band's options and the decoders' compute_dtype (MeshingOptions; a
        seed's mesh in torch.bfloat16 is not float32's bits, but the same in every run).
        Vertices are in world coordinates (through `calibration`), faces oriented outward;
        rows whose field has no surface give empty meshes. Each row is meshed alone, so that its
        mesh is the same bits whatever the other rows (padded into the decoders' batches, their
        points would change how the matrix products round).
        recolor: None (colours of the texture decoder at the vertices), or a callable
        (generator, shape_volume [1, F, V, V], texture_volume, grey mesh, resolution) -> mesh
        that colours each row's mesh instead, e.g. `get3dhuman.authors.AuthorsColouring` (the
        authors' two refined views); with `meshing.texture_size` the grey mesh comes UV-textured
        and the callable colours its texture too (`texture.rebake_texture`). Its time counts as
        `timings.colors`.
        """
        timings = timings if timings is not None else ExtractionTimings()
        meshing = meshing if meshing is not None else MeshingOptions()
        meshes = []
        for row in range(shape_volume.shape[0]):
            shape_row = shape_volume[row : row + 1]
            texture_row = None if texture_volume is None else texture_volume[row : row + 1]
            recoloring = recolor is not None and texture_row is not None
            mesh = self._mesh_of_row(shape_row, None if recoloring else texture_row, resolution, meshing, timings)
            if recoloring:
                start = time.perf_counter()
                mesh = recolor(self, shape_row, texture_row, mesh, resolution)
                timings.colors += time.perf_counter() - start
            meshes.append(mesh)
        return meshes

    @torch.no_grad()
    def _mesh_of_row(self, shape_volume: torch.Tensor, texture_volume: torch.Tensor | None, resolution: int,
                     meshing: MeshingOptions, timings: ExtractionTimings) -> TexturedMesh:
        """`meshes_from_volumes` of volumes [1, F, V, V]: decimated to `meshing.faces` and baked
        into a texture of `meshing.texture_size` where asked, both coloured by the texture decoder."""
        calib, compute_dtype = self.calibration[None], meshing.compute_dtype
        color = None if texture_volume is None else (
            lambda p: self.query_color(shape_volume, texture_volume, p, calib, compute_dtype=compute_dtype))
        lower, upper, cells = self.mesh_lattice(resolution)
        mesh = extract_textured_meshes(lambda p: self.query_occupancy(shape_volume, p, calib,
                                                                      compute_dtype=compute_dtype), color, 1,
                                       cells, level=0.5, inside_is_above=True, bounds=(lower, upper),
                                       meshing=meshing, device=shape_volume.device, timings=timings)[0]
        start = time.perf_counter()
        color_at = None if color is None else (lambda p: color(p[None])[0])  # points [N, 3]
        if meshing.faces is not None:  # the decoder's colours at the new vertices
            mesh = decimate(mesh, meshing.faces, color_at)
        if meshing.texture_size is not None:
            mesh = bake_texture(mesh, color_at or (lambda p: torch.full_like(p, 0.5)), meshing.texture_size,
                                chunk=meshing.chunk)
        timings.texture += time.perf_counter() - start
        return mesh

    def _query(self, decoder: ImplicitDecoder, volume: torch.Tensor, points: torch.Tensor, calib: torch.Tensor | None,
               options: dict) -> torch.Tensor:
        """query_field of `decoder` at points through calib (identity when None), reduced volumes
        in float32 (see `query_occupancy`). The decoders' compute_dtype defaults here, for every
        query of the model (MeshingOptions, the command line's --compute-dtype): the volume's dtype,
        which is the weights'."""
        options = {**options, "compute_dtype": options.get("compute_dtype") or volume.dtype}
        if volume.dtype in REDUCED_DTYPES:
            volume = volume.float()
        if calib is None:  # points are already in NDC, [-1, 1]^3
            calib = torch.eye(4, device=volume.device).expand(volume.shape[0], 4, 4)
        return query_field(decoder, volume, points.to(volume.dtype), calib.to(volume.dtype), self.config.depth_scale,
                           **options)

    def query_occupancy(self, shape_volume: torch.Tensor, points: torch.Tensor, calib: torch.Tensor | None = None,
                        **query_options) -> torch.Tensor:
        """Probability of being inside [B, N] at points [B, N, 3] (NDC unless calib [B, 4, 4] is
        given), in the volume's dtype; query_options go to ops.query_field. With the authors'
        conventions, points whose projection leaves the image ([-1, 1]^2) are OUTSIDE_IMAGE_OCCUPANCY
        (outside), as in their `query_mlp`. Points and calib are
        cast to the volume's dtype, except that a bfloat16 or float16 volume (of a model cast
        with .to()) is sampled in float32, points and calib too, since those dtypes cannot tell
        a 512^3 lattice's points apart: the decoder's products then run in the volume's dtype
        unless query_options give a compute_dtype, and the result is float32."""
        occupancy = self._query(self.mlp_shape, shape_volume, points, calib, query_options)[:, 0]
        if not self.config.authors_conventions:
            return occupancy
        if calib is not None:  # to NDC, as the query projects them
            points = points.to(calib.dtype) @ calib[:, :2, :3].transpose(1, 2) + calib[:, :2, 3].unsqueeze(1)
        outside = (points[..., :2].abs() > 1).any(-1)
        return occupancy.masked_fill(outside, OUTSIDE_IMAGE_OCCUPANCY)

    def shape_query(self, shape_volume: torch.Tensor):
        """`query_occupancy` of `shape_volume` [B, F, V, V] as a function of points [B, N, 3] in
        NDC, for many calls: the shape decoder's input layers are applied to the volume once
        (ops.project_inputs) and every call takes the 'projected' variant, whatever N, so that a
        sphere tracer's dwindling sets of rays cost per point what large queries do (float32
        and float64 volumes; others are queried as `query_occupancy` does)."""
        if shape_volume.dtype in REDUCED_DTYPES:
            return lambda points: self.query_occupancy(shape_volume, points)
        projected = project_inputs(self.mlp_shape, shape_volume)
        return lambda points: self.query_occupancy(shape_volume, points, projected=projected)

    def query_color(self, shape_volume: torch.Tensor, texture_volume: torch.Tensor, points: torch.Tensor,
                    calib: torch.Tensor | None = None, **query_options) -> torch.Tensor:
        """Colour in [0, 1], [B, N, 3], at points [B, N, 3] (as `query_occupancy`)."""
        volumes = torch.cat([shape_volume, texture_volume], 1)
        return self._query(self.mlp_texture, volumes, points, calib, query_options).transpose(1, 2)


class Generator(PixelAlignedModel):
    """The Get3DHuman generator (see the module docstring).

    Args:
        config: a GeneratorConfig or a preset name ('official', 'small', 'tiny').

    Submodule names are the authors' (``backbone_shape``, ``filter_texture``, ``mlp_shape``,
    ...), so their checkpoint maps one to one.
    """

    def __init__(self, config: GeneratorConfig | str = "official"):
        super().__init__(config)
        c = self.config
        backbone = dict(
            z_dim=c.z_dim, w_dim=c.w_dim, img_resolution=c.backbone_resolution, img_channels=c.backbone_channels,
            mapping_layers=c.mapping_layers, channel_base=c.channel_base, channel_max=c.channel_max,
            conv_clamp=c.conv_clamp,
        )
        self.backbone_shape = StyleGAN2Generator(**backbone)
        self.backbone_texture = StyleGAN2Generator(**backbone)
        self.filter_shape = HGFilter(c.backbone_channels, c.hourglass_depth, c.feature_channels)
        self.filter_texture = HGFilter(2 * c.backbone_channels, c.hourglass_depth, c.feature_channels)

    def shape_features(self, z_shape: torch.Tensor, truncation_psi: float = 1.0, noise_mode: str = "const",
                       truncation_cutoff: int | None = None) -> ShapeFeatures:
        """z_shape [B, z_dim] -> ShapeFeatures(map [B, C, R, R], volume [B, F, V, V]).
        Truncation pulls the first `truncation_cutoff` ws (all by default) towards the mean by 1 - psi."""
        return self._shape_of_map(self.backbone_shape(z_shape, truncation_psi, truncation_cutoff, noise_mode))

    def texture_features(self, shape: ShapeFeatures, z_texture: torch.Tensor, truncation_psi: float = 1.0,
                         noise_mode: str = "const", truncation_cutoff: int | None = None) -> torch.Tensor:
        """The texture feature volume [B, F, V, V] for z_texture [B, z_dim] on a given shape."""
        if not isinstance(shape, ShapeFeatures):
            raise TypeError(f"shape must be the ShapeFeatures of shape_features(), got {type(shape).__name__}")
        if z_texture.shape[:1] != shape.map.shape[:1]:
            raise ValueError(f"z_texture must be [B, {self.config.z_dim}] with B = {shape.map.shape[0]}, got {tuple(z_texture.shape)}")
        return self._texture_of_map(shape, self.backbone_texture(z_texture, truncation_psi, truncation_cutoff, noise_mode))

    def _shape_of_map(self, shape_map: torch.Tensor) -> ShapeFeatures:
        return ShapeFeatures(shape_map, self.filter_shape(shape_map))

    def _texture_of_map(self, shape: ShapeFeatures, texture_map: torch.Tensor) -> torch.Tensor:
        return self.filter_texture(torch.cat([texture_map, shape.map], 1))

    def forward(self, z_shape: torch.Tensor, z_texture: torch.Tensor, truncation_psi: float = 1.0,
                noise_mode: str = "const", truncation_cutoff: int | None = None) -> tuple[ShapeFeatures, torch.Tensor]:
        """Both branches: (ShapeFeatures, texture volume)."""
        shape = self.shape_features(z_shape, truncation_psi, noise_mode, truncation_cutoff)
        return shape, self.texture_features(shape, z_texture, truncation_psi, noise_mode, truncation_cutoff)

    def _check_latents(self, z_shape: torch.Tensor, z_texture: torch.Tensor) -> None:
        self.backbone_shape.check_latent(z_shape, "z_shape")
        self.backbone_texture.check_latent(z_texture, "z_texture")
        if z_texture.shape[0] != z_shape.shape[0]:
            raise ValueError(f"z_texture must be [B, {self.config.z_dim}] with B = {z_shape.shape[0]}, "
                             f"got {tuple(z_texture.shape)}")

    def mapping(self, z_shape: torch.Tensor, z_texture: torch.Tensor, truncation_psi: float = 1.0,
                truncation_cutoff: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The intermediate latents (ws_shape, ws_texture), each [B, num_ws, w_dim], of z_shape,
        z_texture [B, z_dim]: each branch's mapping network, truncated as in `forward`.
        `synthesize` of them is `forward` of the zs; walks and edits in this W space are
        StyleGAN's smoother ones."""
        self._check_latents(z_shape, z_texture)
        return tuple(backbone.mapping(z, truncation_psi, truncation_cutoff, update_w_avg=self.training)
                     for z, backbone in ((z_shape, self.backbone_shape), (z_texture, self.backbone_texture)))

    def synthesize(self, ws_shape: torch.Tensor, ws_texture: torch.Tensor,
                   noise_mode: str = "const") -> tuple[ShapeFeatures, torch.Tensor]:
        """Both branches from intermediate latents ws_shape, ws_texture [B, num_ws, w_dim] (of
        `mapping`, or mixed and interpolated from them): (ShapeFeatures, texture volume)."""
        expected = (self.backbone_shape.synthesis.num_ws, self.config.w_dim)
        for name, ws in (("ws_shape", ws_shape), ("ws_texture", ws_texture)):
            if not isinstance(ws, torch.Tensor) or ws.dim() != 3 or tuple(ws.shape[1:]) != expected:
                raise ValueError(f"{name} must be [B, {expected[0]}, {expected[1]}], got "
                                 f"{tuple(ws.shape) if isinstance(ws, torch.Tensor) else type(ws).__name__}")
            check_like_weights(ws, name, self)
        if ws_texture.shape[0] != ws_shape.shape[0]:
            raise ValueError(f"ws_texture must have the batch of ws_shape ({ws_shape.shape[0]}), got {ws_texture.shape[0]}")
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        shape = self._shape_of_map(self.backbone_shape.synthesis(ws_shape, noise_mode))
        return shape, self._texture_of_map(shape, self.backbone_texture.synthesis(ws_texture, noise_mode))

    @torch.no_grad()
    def extract_mesh(self, z_shape: torch.Tensor, z_texture: torch.Tensor, resolution: int = 256, *,
                     truncation_psi: float = 1.0, noise_mode: str = "const", noise_seeds: Sequence[int] | None = None,
                     meshing: MeshingOptions | None = None, timings: ExtractionTimings | None = None,
                     recolor=None) -> list[TexturedMesh]:
        """Textured meshes of latents z_shape, z_texture [B, z_dim], one per row
        (`meshes_from_volumes` of the generated volumes, with `meshing` and `recolor`:
        `recolor=get3dhuman.authors.AuthorsColouring(refiner)` colours them as the authors'
        inference does, through two refined views). Runs in eval mode
        (no w_avg update); `timings` (an ExtractionTimings) receives the time per stage. A row's
        mesh is the same bits whatever the other rows (the networks run one row at a time).
        noise_mode 'random' draws each layer's noise from torch's generator, shape branch first,
        as the authors' inference does; with `noise_seeds` (one per row) row i's noise is drawn
        after torch.manual_seed(noise_seeds[i]) (torch's state is restored after), so the same
        seed gives the same noise on the same kind of device (CPU and CUDA draw differently)."""
        self._check_latents(z_shape, z_texture)
        if noise_seeds is not None:
            noise_seeds = [check_seed(seed) for seed in noise_seeds]
            if noise_mode != "random" or len(noise_seeds) != z_shape.shape[0]:
                raise ValueError(f"noise_seeds must be given with noise_mode 'random', one per row ({z_shape.shape[0]}),"
                                 f" got {len(noise_seeds)} with noise_mode {noise_mode!r}")
        return self._extract(lambda zs, zt: self(zs, zt, truncation_psi, noise_mode), (z_shape, z_texture), resolution,
                             noise_seeds=noise_seeds, meshing=meshing, timings=timings, recolor=recolor)

    @torch.no_grad()
    def extract_mesh_from_ws(self, ws_shape: torch.Tensor, ws_texture: torch.Tensor, resolution: int = 256, *,
                             noise_mode: str = "const", meshing: MeshingOptions | None = None,
                             timings: ExtractionTimings | None = None, recolor=None) -> list[TexturedMesh]:
        """`extract_mesh` of intermediate latents ws_shape, ws_texture [B, num_ws, w_dim]
        (`synthesize`); truncation, if wanted, is `mapping`'s."""
        return self._extract(lambda ws, wt: self.synthesize(ws, wt, noise_mode), (ws_shape, ws_texture), resolution,
                             meshing=meshing, timings=timings, recolor=recolor)

    def _extract(self, features, latents: tuple[torch.Tensor, torch.Tensor], resolution: int,
                 timings: ExtractionTimings | None, noise_seeds: Sequence[int] | None = None,
                 **options) -> list[TexturedMesh]:
        """Meshes of the volumes `features(shape_latents, texture_latents)` returns, made in eval
        mode and timed. The networks see one row at a time: matrix products round differently
        with the number of rows, so batched volumes would depend on the batch partners. Row i
        runs after torch.manual_seed(noise_seeds[i]) when those are given."""
        timings = timings if timings is not None else ExtractionTimings()
        if latents[0].shape[0] == 0:
            return []

        def row(i):
            if noise_seeds is None:
                return features(*(latent[i : i + 1] for latent in latents))
            device = latents[0].device
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else [], device_type=device.type):
                torch.manual_seed(noise_seeds[i])
                return features(*(latent[i : i + 1] for latent in latents))

        with evaluation_mode(self):
            start = time.perf_counter()
            rows = [row(i) for i in range(latents[0].shape[0])]
            shape_volume, texture = (torch.cat(parts) for parts in zip(*((shape.volume, texture) for shape, texture in rows)))
            timings.networks += time.perf_counter() - start
            return self.meshes_from_volumes(shape_volume, texture, resolution, timings=timings, **options)

    def sample(self, num: int, seed: int = 0, resolution: int = 256, *, batch_size: int = 4,
               **options) -> list[TexturedMesh]:
        """`num` textured meshes. Sample i draws (z_shape, z_texture) from its own generator seeded
        with seed + i (`latents`), so a seed gives the same latents whatever `num` and `batch_size`
        (and the same mesh, bit for bit). With noise_mode='random', its noise is drawn after
        torch.manual_seed(seed + i) (`extract_mesh`'s noise_seeds).
        Other options go to `extract_mesh`."""
        num = check_int(num, "num", 0)
        batch_size = check_int(batch_size, "batch_size", 1)
        seed = check_seed(seed)
        meshes = []
        for begin in range(seed, seed + num, batch_size):
            seeds = range(begin, min(begin + batch_size, seed + num))
            if options.get("noise_mode") == "random":  # the sample's seed names its noise too
                options["noise_seeds"] = list(seeds)
            meshes += self.extract_mesh(*self.latents(seeds), resolution, **options)
        return meshes

    def latents(self, seeds) -> tuple[torch.Tensor, torch.Tensor]:
        """`latents_of_seeds(seeds, config.z_dim)`, the latents of `sample`, each [len(seeds),
        z_dim] in the dtype and on the device of the generator's weights (drawn on the CPU in
        float32 whatever those are, so a seed names the same sample everywhere)."""
        weights = next(self.parameters())
        return tuple(z.to(weights) for z in latents_of_seeds(seeds, self.config.z_dim))

    def discriminators(self) -> dict[str, ResNetDiscriminator]:
        """Fresh feature-volume discriminators matching this generator ('shape': F channels,
        'texture': 2F channels), named as the authors' Dis_shape / Dis_texture."""
        c = self.config
        kwargs = dict(img_resolution=c.volume_resolution, channel_base=c.channel_base, channel_max=c.channel_max,
                      conv_clamp=c.conv_clamp)
        return {
            "shape": ResNetDiscriminator(img_channels=c.feature_channels, **kwargs),
            "texture": ResNetDiscriminator(img_channels=2 * c.feature_channels, **kwargs),
        }

    def save_pretrained(self, path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> None:
        """Writes the weights, the sizes (`config`) and the camera (`calibration`) to one
        safetensors file that `Generator.from_pretrained(path)` loads without this code's
        presets (`nn.pretrained.write_pretrained`: `dtype`, one of STORAGE_DTYPES, rounds the
        floating-point weights; the camera stays float32)."""
        write_pretrained(self, path, PRETRAINED_FORMAT, dataclasses.asdict(self.config), dtype,
                         {"calibration": self.calibration})

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32) -> Generator:
        """A Generator in eval mode from a file of `save_pretrained` (`get3dhuman export`
        writes one from a training run). Without `path`: the package's default weights
        (DEFAULT_WEIGHTS), with no network access. `dtype` (one of MODEL_DTYPES) is that of the
        weights and the networks: torch.bfloat16 runs them and the decoders' products in
        bfloat16, the meshes' geometry in float32 (`query_occupancy`); BENCHMARKS.md has its
        speed and error. Raises FileNotFoundError when the file (or, for the default, the
        packaged weights) is missing, ValueError when it is not such a file."""
        if dtype not in MODEL_DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(map(str, MODEL_DTYPES))}, got {dtype!r}")
        tensors, sizes, path = read_pretrained(path, PRETRAINED_FORMAT, DEFAULT_WEIGHTS)
        generator = cls(GeneratorConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in sizes.items()}))
        calibration = tensors.pop("calibration")
        load_pretrained_state(generator, tensors, path)
        generator.calibration.copy_(calibration)
        return generator.to(device=device, dtype=dtype).eval()

    @classmethod
    def from_official_checkpoint(cls, path: str | os.PathLike, return_discriminators: bool = False):
        """Loads the authors' checkpoint (a state dict saved with torch.save, keys optionally
        prefixed ``module.``; or a .safetensors file) into an 'official' Generator in eval mode.

        Every tensor in the file must be consumed: generator tensors load into the generator,
        ``Dis_shape.*`` / ``Dis_texture.*`` into discriminators (returned when
        `return_discriminators`, else only checked). Unexpected or missing names and shape
        mismatches raise ValueError listing them; the authors' refinement file is named as such.
        The occupancy convention is converted, and the generator keeps the authors' inference
        conventions (`GeneratorConfig.authors_conventions`), also through `save_pretrained`.
        Returns the Generator, or (Generator, {'shape': D, 'texture': D}).
        """
        state = read_state_dict(path)
        check_official_kind(state, "generator", os.fspath(path))
        generator = cls(dataclasses.replace(PRESETS["official"], authors_conventions=True))
        discriminators = generator.discriminators()
        targets = {"": generator, "Dis_shape.": discriminators["shape"], "Dis_texture.": discriminators["texture"]}
        parts = {prefix: {} for prefix in targets}
        for name, tensor in state.items():
            prefix = next((p for p in ("Dis_shape.", "Dis_texture.") if name.startswith(p)), "")
            parts[prefix][name[len(prefix):]] = tensor
        missing, unexpected, mismatched = [], [], []
        for prefix, module in targets.items():
            expected, given = module.state_dict(), parts[prefix]
            missing += [prefix + k for k in expected if k not in given]
            unexpected += [prefix + k for k in given if k not in expected]
            mismatched += [
                f"{prefix}{k} (file {tuple(given[k].shape)}, model {tuple(v.shape)})"
                for k, v in expected.items() if k in given and given[k].shape != v.shape
            ]
        problems = [
            f"{len(names)} {kind} (e.g. {', '.join(names[:5])})"
            for kind, names in (("unexpected", unexpected), ("shape mismatches", mismatched), ("missing", missing))
            if names
        ]
        if problems:
            raise ValueError(f"{os.fspath(path)} is not an official Get3DHuman checkpoint: {'; '.join(problems)}")
        for prefix, module in targets.items():
            module.load_state_dict(parts[prefix])
        with torch.no_grad():  # theirs: sigmoid near 1 = outside; ours: probability inside
            last = generator.mlp_shape.filters[-1]
            last.weight.neg_()
            last.bias.neg_()
            generator.calibration.copy_(OFFICIAL_CALIBRATION)
        generator.eval()
        return (generator, discriminators) if return_discriminators else generator


PRETRAINED_FORMAT = "get3dhuman-generator/1"
DEFAULT_WEIGHTS = os.path.join(WEIGHTS_DIR, "generator-small.safetensors")

