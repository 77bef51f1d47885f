"""Training: one resumable loop per stage (DESIGN.md section 6).

- reconstructor: stage 1, the pixel-aligned Reconstructor on the synthetic world.
- checkpoint: safetensors + json checkpoints that resume bit for bit.
"""

from get3dhuman.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from get3dhuman.train.reconstructor import (
    PRESETS as RECONSTRUCTOR_PRESETS,
    ReconstructorTrainingConfig,
    evaluate_iou,
    make_batch,
    train_reconstructor,
    training_loss,
)

__all__ = [
    "RECONSTRUCTOR_PRESETS",
    "ReconstructorTrainingConfig",
    "evaluate_iou",
    "latest_checkpoint",
    "load_checkpoint",
    "make_batch",
    "save_checkpoint",
    "train_reconstructor",
    "training_loss",
]
