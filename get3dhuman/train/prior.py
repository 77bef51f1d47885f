"""Training stage 2: prior induction (TRAINING.md, "Stages").

For many latents z, the 2-D generator paints an image (the synthetic stand-in, or with the
setting `image_generator` a real one such as StyleGAN-Human, matted and framed); the trained
Reconstructor turns it into shape and texture feature volumes, and its occupancy field is
rendered to depth, normal and mask maps: the targets of the Generator's losses for that z.
The cache is a directory of safetensors shards (`shard_size` latents each, written atomically;
latent j has its own seed, so an interrupted run resumes to the same cache) and `prior.json`.
Shard tensors (`cache_keys`): z [S, z_dim]; image [S, H, W, 3] uint8; albedo (the stand-in
unshaded) and matte [S, H, W] (a real generator's) where made; shape, texture [S, F, V, V];
depth, mask [S, M, M] and normal [S, M, M, 3] (camera space). With `images_only`: z and the
images alone, all the refiner stage reads.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from get3dhuman import distributed
from get3dhuman.nn import ImageGenerator, Reconstructor
from get3dhuman.nn.generator import resolve_config
from get3dhuman.nn.image_generator import frame_figures
from get3dhuman.nn.pretrained import is_pretrained_file
from get3dhuman.nn.reconstructor import PRETRAINED_FORMAT as RECONSTRUCTOR_FORMAT
from get3dhuman.render import orbit_calibration, ray_march, shade, silhouettes
from get3dhuman.run_settings import record_settings
from get3dhuman.synthetic.preview import stand_in_rendering
from get3dhuman.train.checkpoint import load_checkpoint, resolve_checkpoint

SHARD_KEYS = ("z", "image", "shape", "texture", "depth", "normal", "mask")
IMAGE_KEYS = ("z", "image")  # the shards of an `images_only` cache
ALBEDO_KEY = "albedo"  # with `albedo_images`, in both kinds of cache
MATTE_KEY = "matte"  # with `image_generator`, in both kinds of cache
# settings older caches were made without ("mattes": whether the shards hold MATTE_KEY, which
# caches of an image generator made before it lack)
INTRODUCED = {"images_only": False, "albedo_images": False, "image_generator": None, "truncation_psi": 1.0,
              "matte_tolerance": 0.06, "figure_height": 0.9, "mattes": False}


@dataclasses.dataclass(frozen=True)
class PriorConfig:
    """Stage-2 settings. Defaults: the 'small' preset."""

    preset: str = "small"  # Generator/Reconstructor preset: fixes z_dim, the image side and the volumes
    count: int = 2048  # latents in the cache
    shard_size: int = 128
    batch_size: int = 16  # latents per reconstructor pass
    map_resolution: int = 64  # side of the depth/normal/mask maps
    march_samples: int = 96  # depth samples per ray of the maps
    volume_dtype: str = "float16"  # storage type of the feature volumes (float16, bfloat16, float32)
    seed: int = 0
    images_only: bool = False  # z and the stand-in image only (IMAGE_KEYS), no Reconstructor: for the refiner
    albedo_images: bool = True  # also the stand-in images unshaded (ALBEDO_KEY): for a refiner of albedo
    image_generator: str | None = None  # a 2-D generator file (nn.ImageGenerator.load) instead of the stand-in
    truncation_psi: float = 1.0  # of the image generator's styles (1: none)
    matte_tolerance: float = 0.06  # of the image generator's background colour (nn.image_generator.matte_background)
    figure_height: float | None = 0.9  # its figures framed this tall, as scans are (None: its framing, padded square)


PRESETS = {
    "tiny": PriorConfig(preset="tiny", count=16, shard_size=8, batch_size=4, map_resolution=16, march_samples=32),
    "small": PriorConfig(),
    "official": PriorConfig(preset="official", count=16384, shard_size=64, batch_size=8, map_resolution=128,
                            march_samples=128),
}


def latents(config: PriorConfig, begin: int, end: int) -> torch.Tensor:
    """Latents begin..end-1 of the cache, [end - begin, z_dim]; latent j from seed * 1_000_003 + j."""
    z_dim = resolve_config(config.preset).z_dim
    return torch.stack([torch.randn(z_dim, generator=torch.Generator().manual_seed(config.seed * 1_000_003 + j))
                        for j in range(begin, end)])


def load_reconstructor(path: str, preset: str, device: str = "cpu") -> Reconstructor:
    """A trained Reconstructor in eval mode from a stage-1 run directory (its newest checkpoint),
    a checkpoint file, or a file of `Reconstructor.save_pretrained` (`get3dhuman export
    --reconstructor`, the package's). ValueError when the weights are not of `preset`."""
    if is_pretrained_file(path, RECONSTRUCTOR_FORMAT):
        model = Reconstructor.from_pretrained(path)
        if model.config != resolve_config(preset):
            raise ValueError(f"reconstructor: {path} holds a Reconstructor of other sizes than the preset {preset!r}")
        return model.to(device)
    checkpoint = resolve_checkpoint(path, "reconstructor")
    model = Reconstructor(preset)
    load_checkpoint(checkpoint, model)
    return model.to(device).eval()


def cache_keys(config: PriorConfig, mattes: bool | None = None) -> tuple[str, ...]:
    """The entries of a cache made with `config` (see the module docstring); `mattes`: whether
    it holds MATTE_KEY (default: whether it has an image generator)."""
    mattes = config.image_generator is not None if mattes is None else mattes
    return ((IMAGE_KEYS if config.images_only else SHARD_KEYS) + ((ALBEDO_KEY,) if config.albedo_images else ())
            + ((MATTE_KEY,) if mattes else ()))


def _bytes(image: torch.Tensor) -> torch.Tensor:
    return (image * 255).round().to(torch.uint8)


def load_image_generator(config: PriorConfig, device: str = "cpu") -> ImageGenerator | None:
    """The setting `image_generator` as an ImageGenerator on `device` (None without one).
    Raises ValueError when its latents do not have the preset's z_dim or the settings ask for
    albedo images, which only the stand-in makes."""
    if config.image_generator is None:
        return None
    if config.albedo_images:
        raise ValueError("albedo_images: an image generator paints shaded images only; set albedo_images to false "
                         f"with image_generator {config.image_generator!r}")
    model = ImageGenerator.load(config.image_generator)
    z_dim = resolve_config(config.preset).z_dim
    if model.z_dim != z_dim:
        raise ValueError(f"image_generator: {config.image_generator} draws latents of {model.z_dim} dimensions, the "
                         f"preset {config.preset!r} has z_dim {z_dim}")
    return model.to(device).requires_grad_(False)


@torch.no_grad()
def prior_targets(model: Reconstructor | None, z: torch.Tensor, config: PriorConfig,
                  image_generator: ImageGenerator | None = None) -> dict[str, torch.Tensor]:
    """The cache entries `cache_keys(config)` of latents z [B, z_dim], on the CPU: the images of
    `image_generator` (`load_image_generator(config)`) or, without one, of the stand-in; the
    Reconstructor `model` makes the volumes and maps (None for an `images_only` cache)."""
    side = resolve_config(config.preset).backbone_resolution
    if image_generator is None:
        # The stand-in images (synthetic.preview.stand_in_images), shaded and unshaded from one trace.
        rendering = stand_in_rendering(z, side)
        image = shade(rendering, background=0.0)  # [B, S, S, 3] in [0, 1]
    else:
        generated = image_generator(z.to(next(image_generator.parameters()).device), config.truncation_psi)
        framed = frame_figures(generated, side, config.matte_tolerance, config.figure_height)
        image = framed.images.cpu()
    entries = {"z": z.float(), "image": _bytes(image)}
    if image_generator is not None:
        entries[MATTE_KEY] = _bytes(framed.masks.cpu())
    if config.albedo_images:
        entries[ALBEDO_KEY] = _bytes(shade(rendering, background=0.0, lit=False))
    if model is None:
        return entries
    device = next(model.parameters()).device
    shape, texture = model(image.permute(0, 3, 1, 2).to(device) * 2 - 1)
    calib = orbit_calibration(torch.zeros(len(z))).to(device)
    maps = ray_march(lambda p: 0.5 - model.query_occupancy(shape, p, calib), calib, config.map_resolution,
                     samples=config.march_samples)
    dtype = getattr(torch, config.volume_dtype)
    return {**entries, "shape": shape.to(dtype).cpu(), "texture": texture.to(dtype).cpu(), "depth": maps.depth.cpu(),
            "normal": maps.normal.cpu(), "mask": maps.mask.cpu()}


def range_targets(model: Reconstructor | None, config: PriorConfig, image_generator: ImageGenerator | None,
                  begin: int, end: int) -> dict[str, torch.Tensor]:
    """`prior_targets` of latents begin..end-1 of the cache, made `config.batch_size` at a time
    and concatenated per entry (`cache_keys(config)`)."""
    parts = [prior_targets(model, latents(config, b, min(b + config.batch_size, end)), config, image_generator)
             for b in range(begin, end, config.batch_size)]
    return {key: torch.cat([part[key] for part in parts]).contiguous() for key in cache_keys(config)}


def check_prior_config(config: PriorConfig) -> None:
    """Raises ValueError naming the setting unless the sizes are positive, volume_dtype a
    storage type, truncation_psi in (0, 1], matte_tolerance in [0, 1) and figure_height None
    or in (0, 1]."""
    if config.count < 1 or config.shard_size < 1 or config.batch_size < 1:
        raise ValueError(f"count, shard_size and batch_size must be positive, got {config.count}, "
                         f"{config.shard_size}, {config.batch_size}")
    if config.volume_dtype not in ("float16", "bfloat16", "float32"):
        raise ValueError(f"volume_dtype must be float16, bfloat16 or float32, got {config.volume_dtype!r}")
    if not 0 < config.truncation_psi <= 1 or not 0 <= config.matte_tolerance < 1:
        raise ValueError(f"truncation_psi must be in (0, 1] and matte_tolerance in [0, 1), got "
                         f"{config.truncation_psi} and {config.matte_tolerance}")
    if config.figure_height is not None and not 0 < config.figure_height <= 1:
        raise ValueError(f"figure_height must be None or in (0, 1], got {config.figure_height}")


def induce_priors(config: PriorConfig, reconstructor: str | None, out_dir: str, device: str = "cpu",
                  progress: bool = True) -> list[str]:
    """Fills (or completes) the prior cache in `out_dir` from the stage-1 run or checkpoint
    `reconstructor` (None, and not used, with `config.images_only`) and the 2-D generator of
    `config.image_generator` (default: the stand-in); returns the shard paths in order. Under
    torchrun process r makes the missing shards whose index is r modulo the number of processes."""
    check_prior_config(config)
    if reconstructor is None and not config.images_only:
        raise ValueError("reconstructor: a stage-1 run or checkpoint is required (or set images_only for a cache of "
                         "the stand-in images alone)")
    if reconstructor is not None and config.images_only:
        raise ValueError(f"reconstructor: an images_only cache uses no Reconstructor, got {reconstructor!r}")
    device = distributed.initialize(device)
    rank, size = distributed.world()
    os.makedirs(out_dir, exist_ok=True)
    image_generator = load_image_generator(config, device)  # checked before anything is written
    source = None if reconstructor is None else os.path.abspath(reconstructor)
    record_settings(os.path.join(out_dir, "prior.json"), {**dataclasses.asdict(config), "reconstructor": source,
                                                          "mattes": MATTE_KEY in cache_keys(config)},
                    may_change=("count",), write=rank == 0, introduced=INTRODUCED)
    model = None if config.images_only else load_reconstructor(reconstructor, config.preset, device)
    shards = range(-(-config.count // config.shard_size))
    paths = [os.path.join(out_dir, f"prior-{index:05d}.safetensors") for index in shards]
    missing = [index for index in shards if not os.path.exists(paths[index]) and index % size == rank]
    if progress and rank == 0:
        from tqdm import tqdm

        done = sum(os.path.exists(path) for path in paths)  # under torchrun `missing` is this rank's share only
        missing = tqdm(missing, desc="prior shards", initial=done, total=len(paths))
    for index in missing:
        begin = index * config.shard_size
        end = min(begin + config.shard_size, config.count)
        tensors = range_targets(model, config, image_generator, begin, end)
        save_file(tensors, paths[index] + ".tmp", metadata={"first": str(begin), "preset": config.preset})
        os.replace(paths[index] + ".tmp", paths[index])
    distributed.barrier()  # every shard exists before any process goes on
    return paths


def check_stage_inputs(prior: PriorCache, model, preset: str, name: str, keys: tuple[str, ...]) -> None:
    """Raises ValueError unless the prior cache and `model` (called `name`) are of `preset` and
    the cache holds the entries `keys` that the stage reads."""
    if prior.settings.get("preset") != preset or model.config != resolve_config(preset):
        raise ValueError(f"the prior cache ({prior.settings.get('preset')!r}) and the {name} must be of the "
                         f"training preset {preset!r}")
    missing = [key for key in keys if key not in prior.keys]
    if missing:
        how = ("a cache made from a Reconstructor (`get3dhuman train prior --reconstructor RUN`)" if
               any(key not in IMAGE_KEYS + (ALBEDO_KEY,) for key in missing) else
               "a cache made with albedo_images (the default since these images were added)")
        raise ValueError(f"the prior cache {prior.directory} holds no {', '.join(missing)}: this stage needs {how}")


class PriorCache:
    """Read access to a prior cache directory: `len(cache)` latents, `cache.batch(indices)`.

    Shards are opened lazily and sliced without loading whole files; volumes come back as
    float32. `cache.keys`: the entries it holds (`cache_keys` of its settings). Raises ValueError when the directory holds no complete cache.
    """

    def __init__(self, directory: str):
        settings_path = os.path.join(directory, "prior.json")
        if not os.path.exists(settings_path):
            raise ValueError(f"{directory} is not a prior cache (no prior.json); run `get3dhuman train prior` first")
        with open(settings_path) as handle:
            self.settings = json.load(handle)
        self.paths = sorted(glob.glob(os.path.join(directory, "prior-*.safetensors")))
        size, count = self.settings["shard_size"], self.settings["count"]
        expected = -(-count // size)
        if len(self.paths) != expected:
            raise ValueError(f"{directory} holds {len(self.paths)} of {expected} prior shards: finish it with "
                             "`get3dhuman train prior` (it resumes)")
        self.shard_size, self.count, self.directory = size, count, directory
        recorded = {**INTRODUCED, **self.settings}
        self.keys = cache_keys(PriorConfig(images_only=recorded["images_only"], albedo_images=recorded["albedo_images"]),
                               mattes=recorded["mattes"])
        self._handles: dict[int, object] = {}

    def __len__(self) -> int:
        return self.count

    def _shard(self, index: int):
        if index not in self._handles:
            self._handles[index] = safe_open(self.paths[index], framework="pt")
        return self._handles[index]

    def batch(self, indices: list[int] | torch.Tensor, keys: tuple[str, ...] | None = None) -> dict[str, torch.Tensor]:
        """Entries `indices` (ints in [0, len)) stacked per key of `keys` (default: all that the
        cache holds); volumes as float32."""
        keys = self.keys if keys is None else keys
        missing = [key for key in keys if key not in self.keys]
        if missing:
            raise KeyError(f"keys: the prior cache {self.directory} holds no {', '.join(missing)} (it holds "
                           f"{', '.join(self.keys)})")
        rows = {key: [] for key in keys}
        for i in (int(i) for i in indices):
            if not 0 <= i < self.count:
                raise IndexError(f"prior index {i} is outside [0, {self.count})")
            shard, offset = divmod(i, self.shard_size)
            handle = self._shard(shard)
            for key in keys:
                rows[key].append(handle.get_slice(key)[offset : offset + 1])
        return {key: torch.cat(value).float() if key in ("shape", "texture") else torch.cat(value)
                for key, value in rows.items()}

    def draw(self, seed: int, step: int, batch_size: int) -> tuple[torch.Tensor, torch.Generator]:
        """This process's share of a training batch of `batch_size` entry indices for `step`,
        drawn with replacement from the stream of (seed, step, rank), and that stream (for the
        step's other draws)."""
        generator = distributed.rank_generator(seed, step)
        indices = torch.randint(self.count, (distributed.local_batch_size(batch_size),), generator=generator)
        return indices, generator


def figure_masks(cache: PriorCache, indices, images: torch.Tensor) -> torch.Tensor:
    """[B, S, S] bool: where the images [B, S, S, 3] uint8 of cache entries `indices` (their
    image or albedo, as the caller read them) show the figure: the image generator's matte
    (MATTE_KEY, > 0.5) where the cache holds it, else the images' non-black pixels
    (`render.silhouettes`: exact for the stand-in)."""
    if MATTE_KEY in cache.keys:
        return (cache.batch(indices, (MATTE_KEY,))[MATTE_KEY] > 127).to(images.device)
    return silhouettes(images)


def silhouette_iou(figures: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """[K]: per cache entry, the intersection over union of the Reconstructor's front-view mask
    (masks [K, M, M], the cache's `mask`) and the figure of the image it was made from (figures
    [K, S, S] bool, `figure_masks`, resized to M x M: a pixel counts when more than half of it
    is figure); 1 where both are empty. How well the Reconstructor lifts the 2-D generator's
    images: on real images (`image_generator`), the one check of stage 2 there is, as they have
    no 3-D ground truth."""
    if figures.dim() != 3 or masks.dim() != 3 or figures.shape[0] != masks.shape[0]:
        raise ValueError(f"figures must be [K, S, S] and masks [K, M, M] with the same K, got "
                         f"{tuple(figures.shape)} and {tuple(masks.shape)}")
    foreground = F.interpolate(figures.float().unsqueeze(1), size=masks.shape[1:], mode="area")[:, 0] > 0.5
    inside = masks > 0.5
    union = (foreground | inside).sum((1, 2))
    return torch.where(union > 0, (foreground & inside).sum((1, 2)) / union.clamp_min(1), 1.0)


def silhouette_report(cache_dir: str, entries: int = 512) -> str | None:
    """One line on how well the Reconstructor's front masks cover the first `entries` images of
    the cache in `cache_dir` (`silhouette_iou`); None for a cache without masks, and under
    torchrun on every rank but 0."""
    cache = PriorCache(cache_dir)
    if "mask" not in cache.keys or not distributed.is_main_process():
        return None
    checked = range(min(entries, len(cache)))
    batch = cache.batch(checked, ("image", "mask"))
    iou = silhouette_iou(figure_masks(cache, checked, batch["image"]), batch["mask"])
    return (f"silhouette IoU of the Reconstructor's front masks and the images (first {len(checked)} latents): "
            f"mean {iou.mean():.3f}, lowest tenth below {iou.quantile(0.1):.3f}")


def cache_images(preset: str, num: int, seed: int = 0, device: str = "cpu", image_generator: str | None = None,
                 truncation_psi: float = 1.0, matte_tolerance: float = 0.06,
                 figure_height: float | None = 0.9) -> torch.Tensor:
    """The first `num` images [num, S, S, 3] uint8 of a prior cache of `seed` (`get3dhuman images`):
    the stand-in's, or with `image_generator` (a network pickle or a file of `export
    --image-generator`) that generator's at `truncation_psi`, matted and framed
    (`matte_tolerance`, `figure_height`; None: its framing, padded square)."""
    config = dataclasses.replace(PRESETS[preset], seed=seed, images_only=True, albedo_images=False,
                                 image_generator=image_generator, truncation_psi=truncation_psi,
                                 matte_tolerance=matte_tolerance, figure_height=figure_height)
    check_prior_config(config)
    return range_targets(None, config, load_image_generator(config, device), 0, num)["image"]
