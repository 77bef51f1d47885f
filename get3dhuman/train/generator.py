"""Training stage 3: the Generator, from the prior cache of stage 2 and the Reconstructor of
stage 1 (TRAINING.md, "Stages").

A step feeds `batch_size` cached latents z to both branches (the prior of z came from one
image) and updates, from one Generator forward: the feature-volume discriminators
(non-saturating logistic loss, lazy R1), then the Generator with the weighted sum of an L1
volume prior, an L1 + L2 prior on decoded occupancy and colour (near the prior's surface and
uniform in the box, the Reconstructor's decoders as the teacher), the adversarial loss, and
every `geometry_every` steps depth and normal losses on ray-marched renders. The decoders start
as the Reconstructor's and stay frozen; the moving average of the weights (`ema_beta`) is the
model to sample. Adam with betas (0, 0.99), as StyleGAN2.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import ClassVar

import torch

from get3dhuman import distributed, losses
from get3dhuman.nn import Generator, ShapeFeatures
from get3dhuman.nn.generator import PRETRAINED_FORMAT, resolve_config
from get3dhuman.nn.pretrained import is_pretrained_file
from get3dhuman.render import orbit_calibration, ray_march
from get3dhuman.train.checkpoint import load_checkpoint, resolve_checkpoint
from get3dhuman.train.loop import run_training
from get3dhuman.train.prior import SHARD_KEYS, PriorCache, check_stage_inputs, load_reconstructor


@dataclasses.dataclass(frozen=True)
class GeneratorTrainingConfig:
    """Stage-3 settings. Defaults: the 'small' preset."""

    preset: str = "small"  # must match the prior cache and the Reconstructor
    steps: int = 20000
    batch_size: int = 4
    learning_rate: float = 2e-3
    discriminator_learning_rate: float = 2e-3
    volume_prior_weight: float = 1.0
    decoded_prior_weight: float = 1.0
    adversarial_weight: float = 0.05
    depth_weight: float = 1.0
    normal_weight: float = 0.5
    r1_gamma: float = 10.0
    r1_every: int = 16
    geometry_every: int = 4
    geometry_samples: int = 64  # depth samples per ray of the geometry renders
    normal_step: float = 0.01  # world step of the central-difference normals of the renders
    prior_points: int = 2048
    surface_sigma: float = 0.03
    ema_beta: float = 0.999
    train_decoders: bool = False
    seed: int = 0
    checkpoint_every: int = 500
    eval_every: int = 500
    eval_latents: int = 8  # the first cache entries; the IoU of the EMA generator's occupancy vs the prior's
    eval_points: int = 20000
    # A generator to start from (a file of `export`, e.g. the package's weights, or a stage-3 run:
    # its moving average starts both copies); its discriminators and optimisers start afresh.
    init_weights: str | None = None

    INTRODUCED: ClassVar[dict] = {"init_weights": None}
    RESULT_NEUTRAL: ClassVar[tuple[str, ...]] = ("init_weights",)  # a resumed run starts from its checkpoint


PRESETS = {
    "tiny": GeneratorTrainingConfig(preset="tiny", steps=20, batch_size=2, prior_points=256, geometry_every=2,
                                    geometry_samples=24, checkpoint_every=10, eval_every=10, eval_latents=2,
                                    eval_points=2000, ema_beta=0.9),
    "small": GeneratorTrainingConfig(),
    "official": GeneratorTrainingConfig(preset="official", batch_size=8, prior_points=8192, geometry_samples=128),
}

FRONT = orbit_calibration(torch.zeros(1))  # the camera of the prior's image, volumes and maps


def prior_points(batch: dict[str, torch.Tensor], count: int, sigma: float, generator: torch.Generator) -> torch.Tensor:
    """[B, count, 3] world points: half near the prior's surface (hit pixels of its depth map,
    unprojected through the front camera, plus N(0, sigma^2) noise), half uniform in [-1, 1]^3."""
    depth, mask = batch["depth"], batch["mask"]
    size, side = depth.shape[0], depth.shape[-1]
    near = count // 2
    weights = mask.reshape(size, -1) + 1e-6  # a latent whose map is empty falls back to any pixel
    pixels = torch.multinomial(weights, near, replacement=True, generator=generator)
    rows, columns = pixels // side, pixels % side
    ndc = torch.stack([columns, rows], -1).float() / (side - 1) * 2 - 1
    ndc = torch.cat([ndc, depth.reshape(size, -1).gather(1, pixels).unsqueeze(-1)], -1)
    linear, offset = FRONT[0, :3, :3], FRONT[0, :3, 3]
    surface = (ndc - offset) @ torch.linalg.inv(linear).T
    surface = surface + sigma * torch.randn(surface.shape, generator=generator)
    uniform = torch.rand(size, count - near, 3, generator=generator) * 2 - 1
    return torch.cat([surface, uniform], 1)


class GeneratorTrainer:
    """The models, optimisers and one step of stage 3 (see the module docstring).

    Args:
        config: the settings.
        prior: a PriorCache (stage 2) of the same preset.
        reconstructor: the trained Reconstructor (stage 1): the teacher and the decoders' start.
        device: torch device of the models.
    """

    def __init__(self, config: GeneratorTrainingConfig, prior: PriorCache, reconstructor, device: str = "cpu"):
        check_stage_inputs(prior, reconstructor, config.preset, "reconstructor", SHARD_KEYS)
        self.config, self.prior, self.device = config, prior, device
        torch.manual_seed(config.seed)
        self.teacher = reconstructor.to(device).eval().requires_grad_(False)
        self.generator = Generator(config.preset).to(device)
        if config.init_weights is not None:
            self.generator.load_state_dict(load_generator(config.init_weights, config.preset, device).state_dict())
        self.generator.mlp_shape.load_state_dict(self.teacher.mlp_shape.state_dict())
        self.generator.mlp_texture.load_state_dict(self.teacher.mlp_texture.state_dict())
        if not config.train_decoders:
            self.generator.mlp_shape.requires_grad_(False)
            self.generator.mlp_texture.requires_grad_(False)
        self.ema = copy.deepcopy(self.generator).eval().requires_grad_(False)
        discriminators = self.generator.discriminators()
        self.shape_discriminator = discriminators["shape"].to(device)
        self.texture_discriminator = discriminators["texture"].to(device)
        betas = (0.0, 0.99)
        trainable = [p for p in self.generator.parameters() if p.requires_grad]
        self.generator_optimizer = torch.optim.Adam(trainable, lr=config.learning_rate, betas=betas)
        self.discriminator_optimizer = torch.optim.Adam(
            [*self.shape_discriminator.parameters(), *self.texture_discriminator.parameters()],
            lr=config.discriminator_learning_rate, betas=betas)

    @property
    def modules(self) -> dict[str, torch.nn.Module]:
        """What a checkpoint holds, by name."""
        return {"generator": self.generator, "ema": self.ema, "shape_discriminator": self.shape_discriminator,
                "texture_discriminator": self.texture_discriminator}

    @property
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The optimisers a checkpoint holds, by name."""
        return {"generator": self.generator_optimizer, "discriminator": self.discriminator_optimizer}

    def batch(self, step: int) -> tuple[dict[str, torch.Tensor], torch.Generator]:
        """This process's cache entries of `step` and its random stream of the step (for points)."""
        indices, generator = self.prior.draw(self.config.seed, step, self.config.batch_size)
        return self.prior.batch(indices), generator

    def _discriminate(self, shape: torch.Tensor, texture: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.shape_discriminator(shape), self.texture_discriminator(torch.cat([shape, texture], 1))])

    def generate(self, batch: dict[str, torch.Tensor]) -> tuple[ShapeFeatures, torch.Tensor]:
        """The Generator's (ShapeFeatures, texture volume) of the batch's latents (z_shape =
        z_texture = z), with the autograd graph."""
        z = batch["z"].to(self.device)
        return self.generator(z, z)

    def discriminator_step(self, step: int, batch: dict[str, torch.Tensor],
                           fake: tuple[torch.Tensor, torch.Tensor]) -> dict[str, float]:
        """One update of both discriminators against the real volumes of `batch` and the fake
        (shape volume, texture volume) of the Generator (detached here); returns its losses."""
        c, device = self.config, self.device
        fake_shape, fake_texture = (volume.detach() for volume in fake)
        real_shape, real_texture = batch["shape"].to(device), batch["texture"].to(device)
        regularise = c.r1_gamma > 0 and step % c.r1_every == 0
        real_shape = real_shape.detach().requires_grad_(regularise)
        real_texture = real_texture.detach().requires_grad_(regularise)
        real_logits = self._discriminate(real_shape, real_texture)
        loss = losses.discriminator_adversarial_loss(real_logits, self._discriminate(fake_shape, fake_texture))
        record = {"d_loss": loss.item()}
        if regularise:
            penalty = losses.r1_penalty(real_logits, (real_shape, real_texture))
            loss = loss + c.r1_gamma / 2 * c.r1_every * penalty
            record["r1"] = penalty.item()
        self.discriminator_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        distributed.average_gradients([*self.shape_discriminator.parameters(), *self.texture_discriminator.parameters()])
        self.discriminator_optimizer.step()
        return record

    def generator_losses(self, step: int, batch: dict[str, torch.Tensor], generated: tuple[ShapeFeatures, torch.Tensor],
                         generator: torch.Generator) -> dict[str, torch.Tensor]:
        """The Generator's weighted losses of a batch, from its output `generated` (of
        `generate(batch)`): {'loss', and each term}."""
        c, device = self.config, self.device
        shape, texture = generated
        prior_shape, prior_texture = batch["shape"].to(device), batch["texture"].to(device)
        calib = FRONT.to(device).expand(len(texture), 4, 4)
        points = prior_points(batch, c.prior_points, c.surface_sigma, generator).to(device)
        with torch.no_grad():
            teacher_occupancy = self.teacher.query_occupancy(prior_shape, points, calib)
            teacher_color = self.teacher.query_color(prior_shape, prior_texture, points, calib)
        terms = {
            "volume_prior": losses.volume_prior_loss(shape.volume, prior_shape)
            + losses.volume_prior_loss(texture, prior_texture),
            "decoded_prior": losses.decoded_prior_loss(self.generator.query_occupancy(shape.volume, points, calib), teacher_occupancy)
            + losses.decoded_prior_loss(self.generator.query_color(shape.volume, texture, points, calib), teacher_color),
            "adversarial": losses.generator_adversarial_loss(self._discriminate(shape.volume, texture)),
        }
        total = (c.volume_prior_weight * terms["volume_prior"] + c.decoded_prior_weight * terms["decoded_prior"]
                 + c.adversarial_weight * terms["adversarial"])
        if c.geometry_every > 0 and step % c.geometry_every == 0 and (c.depth_weight > 0 or c.normal_weight > 0):
            rendering = ray_march(lambda p: 0.5 - self.generator.query_occupancy(shape.volume, p, calib), calib,
                                  batch["depth"].shape[-1], samples=c.geometry_samples, normal_step=c.normal_step)
            both = rendering.mask * batch["mask"].to(device)
            terms["depth"] = losses.depth_loss(rendering.depth, batch["depth"].to(device), both)
            terms["normal"] = losses.normal_loss(rendering.normal, batch["normal"].to(device), both)
            total = total + c.geometry_every * (c.depth_weight * terms["depth"] + c.normal_weight * terms["normal"])
        return {"loss": total, **terms}

    def generator_step(self, step: int, batch: dict[str, torch.Tensor], generated: tuple[ShapeFeatures, torch.Tensor],
                       generator: torch.Generator) -> dict[str, float]:
        """One update of the Generator (from its output `generated` of this batch) and of its
        moving average; returns its losses."""
        self.shape_discriminator.requires_grad_(False)
        self.texture_discriminator.requires_grad_(False)
        try:
            terms = self.generator_losses(step, batch, generated, generator)
            self.generator_optimizer.zero_grad(set_to_none=True)
            terms["loss"].backward()
            distributed.average_gradients(self.generator.parameters())
            self.generator_optimizer.step()
        finally:
            self.shape_discriminator.requires_grad_(True)
            self.texture_discriminator.requires_grad_(True)
        with torch.no_grad():
            for average, current in zip(self.ema.parameters(), self.generator.parameters()):
                average.lerp_(current, 1 - self.config.ema_beta)
            for average, current in zip(self.ema.buffers(), self.generator.buffers()):
                average.copy_(current)
        return {("g_loss" if k == "loss" else k): v.item() for k, v in terms.items()}

    def step(self, step: int) -> dict[str, float]:
        """Discriminator step, then Generator step, on the batch of `step`. One Generator
        forward serves both (its output detached for the discriminators), as in PyTorch's
        DCGAN example: a second forward would cost a sixth of the step."""
        self.generator.train()
        batch, generator = self.batch(step)
        generated = self.generate(batch)
        record = self.discriminator_step(step, batch, (generated[0].volume, generated[1]))
        return {**record, **self.generator_step(step, batch, generated, generator)}

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """{'prior_iou'}: occupancy IoU (level 0.5) of the EMA generator against the teacher on
        the prior's volumes, for the first `eval_latents` cache entries, uniform box points."""
        c, device = self.config, self.device
        batch = self.prior.batch(range(min(c.eval_latents, len(self.prior))), ("z", "shape"))
        z = batch["z"].to(device)
        generator = torch.Generator().manual_seed(c.seed + 1)
        points = (torch.rand(len(z), c.eval_points, 3, generator=generator) * 2 - 1).to(device)
        calib = FRONT.to(device).expand(len(z), 4, 4)
        predicted = self.ema.query_occupancy(self.ema.shape_features(z).volume, points, calib) > 0.5
        target = self.teacher.query_occupancy(batch["shape"].to(device), points, calib) > 0.5
        union = (predicted | target).sum(1).clamp_min(1)
        return {"prior_iou": float(((predicted & target).sum(1) / union).mean())}


def load_generator(path: str, preset: str, device: str = "cpu") -> Generator:
    """The Generator, in eval mode, of `path`: a stage-3 run directory (its newest checkpoint's
    moving average), a checkpoint file, or a file of `Generator.save_pretrained` (`get3dhuman
    export`, the package's default weights). ValueError when the weights are not of `preset`."""
    if is_pretrained_file(path, PRETRAINED_FORMAT):
        generator = Generator.from_pretrained(path)
        if generator.config != resolve_config(preset):
            raise ValueError(f"generator: {path} holds a Generator of other sizes than the preset {preset!r}")
        return generator.to(device)
    checkpoint = resolve_checkpoint(path, "generator")
    generator = Generator(preset)
    load_checkpoint(checkpoint, {"ema": generator})
    return generator.to(device).eval()


def train_generator(config: GeneratorTrainingConfig, prior_dir: str, reconstructor: str, out_dir: str,
                    device: str = "cpu", progress: bool = True) -> Generator:
    """Trains (or resumes training in `out_dir`) up to `config.steps` steps from the prior cache
    `prior_dir` and the stage-1 run or checkpoint `reconstructor`; returns the EMA Generator.

    out_dir receives checkpoint-*.safetensors/json, metrics.jsonl and config.json. Under
    torchrun the processes split each batch (get3dhuman.distributed).
    """
    device = distributed.initialize(device)
    trainer = GeneratorTrainer(config, PriorCache(prior_dir), load_reconstructor(reconstructor, config.preset, device),
                               device)
    run_training(config, out_dir, trainer.modules, trainer.optimizers, trainer.step, trainer.evaluate, "generator",
                 progress)
    return trainer.ema.eval()
