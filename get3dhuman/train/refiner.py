"""Training stage 4: the Refiner, mapping rendered textured images of generated humans to the
stand-in images of the same latents (the prior cache's images; with `albedo`, unshaded renders
to the cache's unshaded stand-in images). With `overlap_only` a target is the render itself
wherever the render or the target shows background (refine.view_errors: their silhouettes
differ there), so the Refiner learns colours alone, which is what back-projection takes.

Each step renders the trained (frozen) Generator's humans for `batch_size` cached latents from
the front (`refine.front_renders`: their meshes of `mesh_resolution` rasterized, as `get3dhuman
sample --refiner` renders the meshes it colours; up to `render_memo` renders are kept, as an
entry's render never changes), refines them, and trains pix2pixHD style: least-squares
GAN (`gan_weight`) with a two-scale PatchGAN conditioned on the rendered image, plus
`feature_matching_weight` x feature matching and `perceptual_weight` x the weight-free pyramid L1 loss (see
get3dhuman.losses: no pretrained VGG can be downloaded). With both discriminator terms weighted
0 there is no discriminator: the pyramid L1 alone. Adam (2e-4, betas 0.5 / 0.999).
Metrics (`refine.view_errors`): L1 to the target images of the refined and of the unrefined
renders, over the whole images and over the pixels where both show the human.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch

from get3dhuman import distributed, losses
from get3dhuman.nn import MultiScalePatchDiscriminator, Refiner
from get3dhuman.refine import front_renders, view_errors
from get3dhuman.train.checkpoint import load_checkpoint, resolve_checkpoint
from get3dhuman.train.generator import load_generator
from get3dhuman.train.loop import recorded_config, run_training
from get3dhuman.train.prior import ALBEDO_KEY, PriorCache, check_stage_inputs, figure_masks


@dataclasses.dataclass(frozen=True)
class RefinerTrainingConfig:
    """Stage-4 settings. Defaults: the authors' losses (pix2pixHD's) and BatchNorm at the 'small'
    sizes; the 'small' preset itself keeps the pyramid L1 alone and instance norm."""

    RESULT_NEUTRAL: ClassVar[tuple[str, ...]] = ("render_memo",)  # may change when a run resumes
    # Settings added after runs were recorded without them, with the value those runs had.
    INTRODUCED: ClassVar[dict] = {"refiner_norm": "batch", "gan_weight": 1.0, "albedo": False, "overlap_only": False}

    preset: str = "small"  # of the Generator and the prior cache
    refiner_channels: int = 32  # U-Net base width (the authors: 64)
    refiner_depth: int = 4
    residual: bool = True  # the Refiner corrects the render (nn.Refiner); the authors': False
    refiner_norm: str = "batch"  # the U-Net blocks' normalisation (nn.refiner.NORMS)
    albedo: bool = False  # refine unshaded renders into unshaded images (nn.Refiner); the authors': shaded
    overlap_only: bool = False  # targets only where render and target both show the human (the module docstring)
    discriminator_channels: int = 32
    steps: int = 5000
    batch_size: int = 4
    learning_rate: float = 2e-4
    gan_weight: float = 1.0
    feature_matching_weight: float = 10.0
    perceptual_weight: float = 10.0
    mesh_resolution: int = 256  # marching-cubes cells per axis of the meshes rendered (front_renders)
    seed: int = 0
    checkpoint_every: int = 500
    eval_every: int = 500
    eval_latents: int = 8
    # Renders of cache entries kept in memory: the Generator is frozen, so an entry's render never
    # changes, and rendering is most of a step (0: render every time; 'small': 440 MB at most).
    render_memo: int = 2048


PRESETS = {
    "tiny": RefinerTrainingConfig(preset="tiny", refiner_channels=8, refiner_depth=2, discriminator_channels=8, steps=20,
                                  batch_size=2, mesh_resolution=32, checkpoint_every=10, eval_every=10, eval_latents=2),
    # On the synthetic world the adversarial terms and BatchNorm made the views worse (TRAINING.md, Status).
    "small": RefinerTrainingConfig(refiner_norm="instance", gan_weight=0.0, feature_matching_weight=0.0,
                                   perceptual_weight=100.0),
    "official": RefinerTrainingConfig(preset="official", refiner_channels=64, discriminator_channels=64, batch_size=8,
                                      mesh_resolution=512, residual=False, render_memo=256),  # 3.25 MiB per 512 px render and mask
}


def make_refiner(config: RefinerTrainingConfig) -> Refiner:
    """The Refiner of a stage-4 configuration."""
    return Refiner(base_channels=config.refiner_channels, depth=config.refiner_depth, residual=config.residual,
                   norm=config.refiner_norm, albedo=config.albedo)


class RefinerTrainer:
    """Models, optimisers and one step of stage 4 (see the module docstring)."""

    def __init__(self, config: RefinerTrainingConfig, prior: PriorCache, generator, device: str = "cpu"):
        self.target_key = ALBEDO_KEY if config.albedo else "image"
        check_stage_inputs(prior, generator, config.preset, "generator", ("z", self.target_key))
        for name in ("gan_weight", "feature_matching_weight", "perceptual_weight"):
            if getattr(config, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(config, name)}")
        self.config, self.prior, self.device = config, prior, device
        torch.manual_seed(config.seed)
        self.generator = generator.to(device).eval().requires_grad_(False)
        self.refiner = make_refiner(config).to(device)
        betas = (0.5, 0.999)
        self.refiner_optimizer = torch.optim.Adam(self.refiner.parameters(), lr=config.learning_rate, betas=betas)
        # Both discriminator terms weighted 0: no discriminator is built, trained or saved.
        self.adversarial = config.gan_weight > 0 or config.feature_matching_weight > 0
        if self.adversarial:
            self.discriminator = MultiScalePatchDiscriminator(6, config.discriminator_channels).to(device)
            self.discriminator_optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=config.learning_rate,
                                                            betas=betas)
        # cache index -> (render, mask) (at most config.render_memo)
        self._renders: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def modules(self) -> dict[str, torch.nn.Module]:
        """What a checkpoint holds, by name (the discriminator only when adversarial)."""
        return {"refiner": self.refiner, **({"discriminator": self.discriminator} if self.adversarial else {})}

    @property
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The optimisers a checkpoint holds, by name."""
        return {"refiner": self.refiner_optimizer,
                **({"discriminator": self.discriminator_optimizer} if self.adversarial else {})}

    @torch.no_grad()
    def render(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The Generator's front render [3, S, S] in [-1, 1] of cache entry `index` (unshaded with
        `albedo`) and where it shows the human [S, S] (bool). Each entry is rendered alone, so
        its render is the same bits whether it comes from the memo or not."""
        if index in self._renders:
            return self._renders[index]
        z = self.prior.batch([index], ("z",))["z"].to(self.device)
        image, mask = front_renders(self.generator, z, self.config.mesh_resolution, lit=not self.config.albedo)
        rendered = (image[0].permute(2, 0, 1) * 2 - 1, mask[0])
        if len(self._renders) < self.config.render_memo:
            self._renders[index] = rendered
        return rendered

    @torch.no_grad()
    def images(self, indices) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(rendered, target, overlap) of cache entries `indices`: images [B, 3, S, S] in
        [-1, 1] and where both show the human, [B, S, S] (bool)."""
        indices = [int(i) for i in indices]
        rendered, mask = (torch.stack(parts) for parts in zip(*(self.render(i) for i in indices)))
        target = self.prior.batch(indices, (self.target_key,))[self.target_key].to(self.device)
        overlap = mask & figure_masks(self.prior, indices, target)
        return rendered, target.permute(0, 3, 1, 2).float() / 255 * 2 - 1, overlap

    def training_target(self, rendered: torch.Tensor, target: torch.Tensor, overlap: torch.Tensor) -> torch.Tensor:
        """The image the losses pull the refined view towards: the target, or with
        `overlap_only` the target inside the overlap and the render outside it."""
        return torch.where(overlap.unsqueeze(1), target, rendered) if self.config.overlap_only else target

    def losses(self, rendered: torch.Tensor,
               target: torch.Tensor) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        """(discriminator loss, refiner losses {'loss', 'gan', 'feature_matching', 'perceptual'})
        of one batch; the discriminator loss sees the refined image detached. Without a
        discriminator (`adversarial` False): (None, {'loss', 'perceptual'})."""
        refined = self.refiner(rendered)
        c = self.config
        perceptual = losses.pyramid_l1_loss(refined, target)
        if not self.adversarial:
            return None, {"loss": c.perceptual_weight * perceptual, "perceptual": perceptual}
        real = self.discriminator(torch.cat([rendered, target], 1))
        d_loss = losses.lsgan_discriminator_loss(real, self.discriminator(torch.cat([rendered, refined.detach()], 1)))
        fake = self.discriminator(torch.cat([rendered, refined], 1))
        terms = {"gan": losses.lsgan_generator_loss(fake), "feature_matching": losses.feature_matching_loss(real, fake),
                 "perceptual": perceptual}
        total = c.gan_weight * terms["gan"] + c.feature_matching_weight * terms["feature_matching"] + c.perceptual_weight * terms["perceptual"]
        return d_loss, {"loss": total, **terms}

    def step(self, step: int) -> dict[str, float]:
        """One discriminator (when `adversarial`) and one refiner update on the batch of `step`."""
        indices, _ = self.prior.draw(self.config.seed, step, self.config.batch_size)
        rendered, target, overlap = self.images(indices)
        target = self.training_target(rendered, target, overlap)
        self.refiner.train()
        d_loss, terms = self.losses(rendered, target)
        # Both gradients from the same discriminator state, then both updates (the graphs share it).
        parameters = {name: list(module.parameters()) for name, module in self.modules.items()}
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward(inputs=parameters["refiner"])
        if self.adversarial:
            d_loss.backward(inputs=parameters["discriminator"])
        distributed.average_gradients([p for group in parameters.values() for p in group])
        for optimizer in self.optimizers.values():
            optimizer.step()
        record = {("r_loss" if k == "loss" else k): v.item() for k, v in terms.items()}
        return {"d_loss": d_loss.item(), **record} if self.adversarial else record

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """`refine.view_errors` of the first `eval_latents` cache entries, refined and not."""
        rendered, target, overlap = self.images(range(min(self.config.eval_latents, len(self.prior))))
        self.refiner.eval()
        refined = self.refiner(rendered)
        return view_errors(*((image.permute(0, 2, 3, 1) + 1) / 2 for image in (refined, rendered, target)), overlap)


def load_refiner(path: str, config: RefinerTrainingConfig, device: str = "cpu") -> Refiner:
    """The Refiner of a stage-4 run directory (newest checkpoint) or checkpoint file, in eval
    mode, built with the sizes the run recorded (`loop.recorded_config`; `config` for a
    checkpoint without its run's record)."""
    checkpoint = resolve_checkpoint(path, "refiner")
    refiner = make_refiner(recorded_config(config, checkpoint))
    load_checkpoint(checkpoint, {"refiner": refiner})
    return refiner.to(device).eval()


def train_refiner(config: RefinerTrainingConfig, prior_dir: str, generator: str, out_dir: str, device: str = "cpu",
                  progress: bool = True) -> Refiner:
    """Trains (or resumes training in `out_dir`) up to `config.steps` steps from the prior cache
    (a full one or an `images_only` one) and `generator`: a stage-3 run or checkpoint, or a file
    of `Generator.save_pretrained` (`get3dhuman export`, the package's default weights);
    returns the Refiner (eval mode). Under torchrun the processes split each batch
    (get3dhuman.distributed)."""
    device = distributed.initialize(device)
    trainer = RefinerTrainer(config, PriorCache(prior_dir), load_generator(generator, config.preset, device), device)
    run_training(config, out_dir, trainer.modules, trainer.optimizers, trainer.step, trainer.evaluate, "refiner", progress)
    return trainer.refiner.eval()
