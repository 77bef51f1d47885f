"""Training stage 1: the pixel-aligned Reconstructor on rendered synthetic humans or scans.

Every step draws a fresh batch from the synthetic world (deterministically from the seed, the
step number and, under torchrun, the rank, so a resumed run sees exactly the batches an
uninterrupted one would): humans from z ~ N(0, I), each rendered from a random orbit angle,
with PIFu-style occupancy samples and surface colour samples in world coordinates, queried
through the same camera. With the setting `scans` (a folder of textured scans,
get3dhuman.scans) the humans are scans drawn from the folder instead, the last tenth of them
(by file name; at least one, at most `eval_humans`) held out for the metrics.

Losses: binary cross-entropy of the predicted inside-probability against the occupancy labels,
plus `color_weight` times the L1 error of the predicted colours.
Metrics: occupancy IoU and the Chamfer distance of reconstructed meshes on held-out humans
(front views).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
import torch.nn.functional as F

from get3dhuman import distributed
from get3dhuman.evaluate import chamfer_distance, mesh_points
from get3dhuman.nn import Reconstructor
from get3dhuman.nn.modes import evaluation_mode
from get3dhuman.render import orbit_calibration
from get3dhuman.scans import ScanSet
from get3dhuman.synthetic import (
    human_parameters,
    human_sdf,
    sample_occupancy,
    sample_surface,
    sample_surface_colors,
)
from get3dhuman.synthetic.preview import render_humans
from get3dhuman.train.loop import run_training

EVAL_SEED_OFFSET = 1_000_000_007  # held-out humans come from a seed stream training never uses


@dataclasses.dataclass(frozen=True)
class ReconstructorTrainingConfig:
    """Stage-1 settings. Defaults: the 'small' preset."""

    preset: str = "small"  # Reconstructor preset (image side = its backbone_resolution)
    steps: int = 20000
    batch_size: int = 4
    occupancy_points: int = 4096  # per human and step
    color_points: int = 2048  # per human and step
    learning_rate: float = 1e-3  # PIFu's; 1e-4 reached after 1150 steps the occupancy loss 1e-3 reaches after 150
    color_weight: float = 1.0
    z_dim: int = 64  # latent size of the synthetic world's stand-in generator
    seed: int = 0
    checkpoint_every: int = 500
    eval_every: int = 500
    eval_humans: int = 8
    eval_points: int = 20000
    eval_mesh_resolution: int = 64
    eval_surface_points: int = 2048
    scans: str | None = None  # folder of textured scans to train on instead of the synthetic world

    INTRODUCED: ClassVar[dict] = {"scans": None}  # runs recorded before the setting trained on the world


PRESETS = {
    "tiny": ReconstructorTrainingConfig(preset="tiny", steps=20, batch_size=2, occupancy_points=512, color_points=256,
                                        checkpoint_every=10, eval_every=10, eval_humans=2,
                                        eval_points=4000, eval_mesh_resolution=16, eval_surface_points=256),
    "small": ReconstructorTrainingConfig(),
    "official": ReconstructorTrainingConfig(preset="official", batch_size=8, occupancy_points=8192, color_points=4096),
}


def split_scans(scans: ScanSet, held_out_limit: int) -> tuple[list[int], list[int]]:
    """(training, held-out) indices of `scans`: the last tenth held out (at least one, at most
    `held_out_limit`); raises ValueError for fewer than two scans."""
    if len(scans) < 2:
        raise ValueError(f"scans must hold at least 2 scans (one is held out for the metrics), got {len(scans)}")
    held = min(max(1, len(scans) // 10), held_out_limit)
    return list(range(len(scans) - held)), list(range(len(scans) - held, len(scans)))


def _given_scans(config: ReconstructorTrainingConfig, scans: ScanSet | None) -> ScanSet:
    if scans is None:
        raise ValueError(f"scans must be the ScanSet of config.scans ({config.scans!r}), got None")
    return scans


def make_batch(config: ReconstructorTrainingConfig, step: int, image_side: int,
               share: tuple[int, int] | None = None, device: torch.device | str = "cpu",
               scans: ScanSet | None = None) -> dict[str, torch.Tensor]:
    """One process's share of the training batch of `step`: image [B, 3, S, S] in [-1, 1]
    (background -1), calib [B, 4, 4], occupancy points/labels [B, N, 3]/[B, N], colour
    points/colours [B, M, 3], with B = batch_size / processes.

    share: (rank, processes) whose share to make; default this process's (the whole batch
    outside torchrun). device: where the humans are traced and sampled (the same humans,
    cameras and random draws on any device; the results up to the device's rounding).
    scans: the ScanSet of config.scans (required with it; read once by the caller): its
    training scans replace the synthetic humans (made on the CPU, then moved to `device`)."""
    rank, size = distributed.world() if share is None else share
    generator = distributed.rank_generator(config.seed, step, rank)
    batch_size = distributed.local_batch_size(config.batch_size, size)
    if config.scans is not None:
        training, _ = split_scans(_given_scans(config, scans), config.eval_humans)
        indices = [training[i] for i in torch.randint(len(training), (batch_size,), generator=generator).tolist()]
        angles = torch.rand(batch_size, generator=generator) * 360
        image = scans.views(indices, angles, image_side, background=0.0).permute(0, 3, 1, 2) * 2 - 1
        occupancy = scans.occupancy_samples(indices, config.occupancy_points, generator=generator)
        colors = scans.color_samples(indices, config.color_points, generator=generator)
    else:
        params = human_parameters(torch.randn(batch_size, config.z_dim, generator=generator)).to(device)
        angles = torch.rand(batch_size, generator=generator) * 360
        image = render_humans(params, image_side, angles, background=0.0).permute(0, 3, 1, 2) * 2 - 1
        occupancy = sample_occupancy(params, config.occupancy_points, generator=generator)
        colors = sample_surface_colors(params, config.color_points, generator=generator)
    batch = {"image": image, "calib": orbit_calibration(angles), "occupancy_points": occupancy.points,
             "inside": occupancy.inside, "color_points": colors.points, "colors": colors.colors}
    return {key: value.to(device) for key, value in batch.items()}


class StepBatches(torch.utils.data.Dataset):
    """Item `step` is make_batch(config, step, image_side, share, device, scans): a map-style
    dataset, so a DataLoader's worker processes make the next batches while the model trains on
    this one. Reads config.scans once, when set."""

    def __init__(self, config: ReconstructorTrainingConfig, image_side: int, share: tuple[int, int],
                 device: torch.device | str = "cpu"):
        self.config, self.image_side, self.share, self.device = config, image_side, share, device
        self.scans = None if config.scans is None else ScanSet.from_folder(config.scans)

    def __len__(self) -> int:
        return self.config.steps

    def __getitem__(self, step: int) -> dict[str, torch.Tensor]:
        return make_batch(self.config, step, self.image_side, self.share, self.device, self.scans)


def training_loss(model: Reconstructor, batch: dict[str, torch.Tensor], color_weight: float) -> dict[str, torch.Tensor]:
    """{'loss', 'occupancy', 'color'} of one batch (on the model's device)."""
    shape_volume, texture_volume = model(batch["image"])
    inside = model.query_occupancy(shape_volume, batch["occupancy_points"], batch["calib"])
    occupancy = F.binary_cross_entropy(inside.clamp(1e-6, 1 - 1e-6), batch["inside"])
    predicted = model.query_color(shape_volume, texture_volume, batch["color_points"], batch["calib"])
    color = (predicted - batch["colors"]).abs().mean()
    return {"loss": occupancy + color_weight * color, "occupancy": occupancy, "color": color}


@torch.no_grad()
def evaluate_reconstruction(model: Reconstructor, config: ReconstructorTrainingConfig, device: str = "cpu",
                            scans: ScanSet | None = None) -> dict[str, float]:
    """{'iou', 'chamfer'} over `eval_humans` held-out humans seen from the front (with
    config.scans: the held-out scans of `scans`, split_scans): the occupancy IoU at
    `eval_points` uniform box points, and the Chamfer distance (get3dhuman.evaluate) of the
    reconstructed mesh (`eval_mesh_resolution`) to the true surface, `eval_surface_points`
    points each (a human without a reconstructed surface counts as the box centre)."""
    generator = torch.Generator().manual_seed(config.seed + EVAL_SEED_OFFSET)
    side = model.config.backbone_resolution
    if config.scans is not None:
        held = split_scans(_given_scans(config, scans), config.eval_humans)[1]
        image = scans.views(held, torch.zeros(len(held)), side, background=0.0).permute(0, 3, 1, 2) * 2 - 1
        points = torch.rand(len(held), config.eval_points, 3, generator=generator) * 2 - 1
        truth = scans.inside(held, points)
        surface = scans.surface(held, config.eval_surface_points, generator)[0]
    else:
        params = human_parameters(torch.randn(config.eval_humans, config.z_dim, generator=generator))
        image = render_humans(params, side, 0.0, background=0.0).permute(0, 3, 1, 2) * 2 - 1
        points = torch.rand(config.eval_humans, config.eval_points, 3, generator=generator) * 2 - 1
        truth = human_sdf(params, points) < 0
        surface = sample_surface(params, config.eval_surface_points, generator)
    count = len(image)
    with evaluation_mode(model):
        shape_volume, _ = model(image.to(device))
        calib = orbit_calibration(torch.zeros(count)).to(device)
        predicted = (model.query_occupancy(shape_volume, points.to(device), calib) > 0.5).cpu()
        meshes = model.meshes_from_volumes(shape_volume, None, config.eval_mesh_resolution)
    union = (predicted | truth).sum(1).clamp_min(1)
    chamfer = [chamfer_distance(mesh_points(mesh, config.eval_surface_points, i)[0], surface[i])
               for i, mesh in enumerate(meshes)]
    return {"iou": float(((predicted & truth).sum(1) / union).mean()), "chamfer": sum(chamfer) / len(chamfer)}


def default_workers(threads: int) -> int:
    """Batch workers for a CPU run on `threads` torch threads: none below 4 (each worker takes a
    core from the model: on 2 threads a `small` step took 0.85 s with the batches made in turn
    and 1.05 s with two workers, a batch being 0.32 s of one core), else one per 4 threads, at
    most 2."""
    return 0 if threads < 4 else min(2, threads // 4)


def train_reconstructor(config: ReconstructorTrainingConfig, out_dir: str, device: str = "cpu",
                        progress: bool = True, workers: int | None = None) -> Reconstructor:
    """Trains (or resumes training in `out_dir`) up to `config.steps` steps; returns the model.

    out_dir receives checkpoint-*.safetensors/json, metrics.jsonl and config.json. `workers`
    processes make the coming batches while the model trains (0: make each in turn; None:
    default_workers of torch's threads; the batches are the same either way); meanwhile the
    model uses torch's threads less one per worker (at least one; restored afterwards). On a CUDA device the batches are traced and
    sampled on the GPU instead, in this process (`workers` is then unused: CUDA does not fork
    into workers), where the synthetic world runs far faster than on CPU workers. Under
    torchrun the processes split each batch (get3dhuman.distributed).
    """
    if workers is None:
        workers = default_workers(torch.get_num_threads())
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    device = distributed.initialize(device)
    torch.manual_seed(config.seed)
    model = Reconstructor(config.preset).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    batch_device, workers = (device, 0) if torch.device(device).type == "cuda" else ("cpu", workers)
    dataset = StepBatches(config, model.config.backbone_resolution, distributed.world(), batch_device)
    batches, next_step = iter(()), None

    def train_step(step: int) -> dict[str, float]:
        nonlocal batches, next_step
        if step != next_step:  # the first step of this run: start making batches from here
            batches = iter(torch.utils.data.DataLoader(dataset, batch_size=None, sampler=range(step, config.steps),
                                                       num_workers=workers))
        next_step = step + 1
        model.train()
        batch = {k: v.to(device) for k, v in next(batches).items()}
        losses = training_loss(model, batch, config.color_weight)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        distributed.average_gradients(model.parameters())
        optimizer.step()
        return {k: v.item() for k, v in losses.items()}

    # Each batch worker keeps a core busy; the model's threads take the rest. Oversubscribed
    # cores made a 2-core CPU's small step 1.5x slower (2.0 s instead of 1.35 s).
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads - workers))
    try:
        run_training(config, out_dir, {"model": model}, {"optimizer": optimizer}, train_step,
                     lambda: evaluate_reconstruction(model, config, device, dataset.scans), "reconstructor", progress)
    finally:
        torch.set_num_threads(threads)
    return model
