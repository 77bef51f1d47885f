"""Training: one resumable loop per stage (DESIGN.md section 6).

- reconstructor: stage 1, the pixel-aligned Reconstructor on the synthetic world.
- prior: stage 2, the prior cache (the Reconstructor's volumes and maps of many latents' images:
  the synthetic stand-in's or a real 2-D generator's, load_image_generator).
- generator: stage 3, the Generator from the prior (latent prior, adversarial, geometry losses).
- refiner: stage 4, the texture Refiner (rendered views -> stand-in images).
- checkpoint, loop: safetensors + json checkpoints that resume bit for bit; the shared loop.
- settings: per-stage settings over a preset, from a JSON file (`train --config`).
- distributed: data-parallel training under torchrun (batch shares, gradient averaging).
"""

from get3dhuman.train.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from get3dhuman.train.generator import PRESETS as GENERATOR_PRESETS
from get3dhuman.train.generator import (
    GeneratorTrainer,
    GeneratorTrainingConfig,
    load_generator,
    train_generator,
)
from get3dhuman.train.prior import PRESETS as PRIOR_PRESETS
from get3dhuman.train.prior import (
    PriorCache,
    PriorConfig,
    induce_priors,
    load_image_generator,
    load_reconstructor,
)
from get3dhuman.train.reconstructor import (
    PRESETS as RECONSTRUCTOR_PRESETS,
)
from get3dhuman.train.reconstructor import (
    ReconstructorTrainingConfig,
    evaluate_reconstruction,
    make_batch,
    train_reconstructor,
    training_loss,
)
from get3dhuman.train.refiner import PRESETS as REFINER_PRESETS
from get3dhuman.train.refiner import (
    RefinerTrainer,
    RefinerTrainingConfig,
    load_refiner,
    train_refiner,
)
from get3dhuman.train.settings import STAGES, apply_overrides, read_overrides

__all__ = [
    "GENERATOR_PRESETS",
    "PRIOR_PRESETS",
    "RECONSTRUCTOR_PRESETS",
    "REFINER_PRESETS",
    "STAGES",
    "GeneratorTrainer",
    "GeneratorTrainingConfig",
    "PriorCache",
    "PriorConfig",
    "ReconstructorTrainingConfig",
    "RefinerTrainer",
    "RefinerTrainingConfig",
    "apply_overrides",
    "evaluate_reconstruction",
    "induce_priors",
    "latest_checkpoint",
    "load_checkpoint",
    "load_generator",
    "load_image_generator",
    "load_reconstructor",
    "load_refiner",
    "make_batch",
    "read_overrides",
    "save_checkpoint",
    "train_generator",
    "train_reconstructor",
    "train_refiner",
    "training_loss",
]
