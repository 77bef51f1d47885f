"""The stages run by name, and trained models loaded by what the user holds (the command line's
library): `train_stage`, `train_all`, `resolve_generator`, `resolve_refiner`, `evaluate_models`.

Errors are ValueError (or OSError) naming the argument as the command line spells it.
"""

from __future__ import annotations

import dataclasses
import os

import torch

from get3dhuman.evaluate import EvaluationConfig, evaluate_generator, evaluate_prior, evaluate_world
from get3dhuman.nn import Generator, Refiner
from get3dhuman.nn.generator import resolve_config
from get3dhuman.nn.pretrained import is_pretrained_file, official_kind
from get3dhuman.nn.refiner import PRETRAINED_FORMAT as REFINER_FORMAT
from get3dhuman.train.generator import PRESETS as GENERATOR_PRESETS
from get3dhuman.train.generator import load_generator, train_generator
from get3dhuman.train.prior import PRESETS as PRIOR_PRESETS
from get3dhuman.train.prior import induce_priors, load_image_generator, load_reconstructor, silhouette_report
from get3dhuman.train.reconstructor import PRESETS as RECONSTRUCTOR_PRESETS
from get3dhuman.train.reconstructor import train_reconstructor
from get3dhuman.train.refiner import PRESETS as REFINER_PRESETS
from get3dhuman.train.refiner import load_refiner, train_refiner
from get3dhuman.train.settings import STAGES, apply_overrides, read_overrides

PACKAGED = ""  # a refiner or generator named by the empty string: the package's own weights
PRESETS = {"reconstructor": RECONSTRUCTOR_PRESETS, "prior": PRIOR_PRESETS, "generator": GENERATOR_PRESETS,
           "refiner": REFINER_PRESETS}
_STAGE_OF_OPTION = {"workers": "reconstructor", "scans": "reconstructor", "image_generator": "prior"}


def stage_config(stage: str, preset: str, config_file: str | None = None, **options):
    """The settings of `stage`: the preset's, then the file's [stage] section (`train --config`),
    then the options that are not None."""
    config = PRESETS[stage][preset]
    if config_file is not None:
        config = apply_overrides(config, read_overrides(config_file)[stage], f"--config {config_file} [{stage}]")
    return apply_overrides(config, {k: v for k, v in options.items() if v is not None}, "command line")


def train_stage(stage: str, preset: str, out: str, *, config_file: str | None = None, device: str = "cpu",
                progress: bool = True, reconstructor: str | None = None, prior: str | None = None,
                generator: str | None = None, steps: int | None = None, seed: int | None = None,
                workers: int | None = None, scans: str | None = None, image_generator: str | None = None) -> None:
    """Trains (or resumes) one stage of STAGES in `out`, with its inputs: reconstructor (prior,
    generator), prior (generator, refiner), generator (refiner). A prior cache reports how
    well the Reconstructor's masks cover its images."""
    for name, value in (("workers", workers), ("scans", scans), ("image_generator", image_generator)):
        if value is not None and stage != _STAGE_OF_OPTION[name]:
            raise ValueError(f"--{name.replace('_', '-')} applies to the {_STAGE_OF_OPTION[name]} stage only")
    if stage == "prior" and steps is not None:
        raise ValueError("--steps does not apply (the cache size is the setting 'count')")
    config = stage_config(stage, preset, config_file, steps=steps, seed=seed, scans=scans,
                          image_generator=image_generator,
                          albedo_images=False if image_generator is not None else None)  # only the stand-in paints albedo
    if stage == "prior":
        if reconstructor is None and not config.images_only:
            raise ValueError("--reconstructor RUN is required (unless the setting images_only is true: a cache of the "
                             "stand-in images alone, for the refiner stage)")
        if reconstructor is not None and config.images_only:
            raise ValueError("the setting images_only makes a cache without a Reconstructor; drop --reconstructor "
                             "(train all: the generator stage needs a full cache)")
        induce_priors(config, reconstructor, out, device, progress=progress)
        report = silhouette_report(out)
        if report is not None:
            print(report)
    elif stage == "reconstructor":
        train_reconstructor(config, out, device, progress=progress, workers=workers)
    elif stage == "refiner":
        if prior is None or generator is None:
            raise ValueError("--prior DIR and --generator RUN_OR_FILE are required")
        train_refiner(config, prior, generator, out, device, progress=progress)
    else:
        if prior is None or reconstructor is None:
            raise ValueError("--prior DIR and --reconstructor RUN are required")
        if generator is not None:  # the weights to start from
            config = dataclasses.replace(config, init_weights=generator)
        train_generator(config, prior, reconstructor, out, device, progress=progress)


def train_all(preset: str, out: str, *, config_file: str | None = None, device: str = "cpu", progress: bool = True,
              seed: int | None = None, workers: int | None = None, scans: str | None = None,
              image_generator: str | None = None, **stage_inputs) -> None:
    """The four stages in turn, each in `out`/STAGE on the stages before it (resumable like each)."""
    if any(value is not None for value in stage_inputs.values()):
        raise ValueError("--reconstructor, --prior, --generator and --steps do not apply (every stage trains on the "
                         "stages before it in --out; set each stage's steps in --config)")
    if image_generator is not None:  # refused now, not after the reconstructor has trained
        load_image_generator(dataclasses.replace(PRIOR_PRESETS[preset], albedo_images=False,
                                                 image_generator=image_generator))
    runs = {stage: os.path.join(out, stage) for stage in STAGES}
    for stage, run in runs.items():
        train_stage(stage, preset, run, config_file=config_file, device=device, progress=progress, seed=seed,
                    reconstructor=runs["reconstructor"] if stage in ("prior", "generator") else None,
                    prior=runs["prior"] if stage in ("generator", "refiner") else None,
                    generator=runs["generator"] if stage == "refiner" else None,
                    workers=workers if stage == "reconstructor" else None,
                    scans=scans if stage == "reconstructor" else None,
                    image_generator=image_generator if stage == "prior" else None)


def resolve_generator(weights: str | None = None, run: str | None = None, checkpoint: str | None = None,
                      preset: str = "small", device: str | torch.device = "cpu") -> Generator:
    """The generator of a file of `export` (`weights`; None: the package's), of a stage-3 run
    directory or checkpoint (`run`, of `preset`), or of the authors' `checkpoint`: one of them."""
    given = [f"--{name}" for name, value in (("weights", weights), ("generator", run), ("checkpoint", checkpoint))
             if value is not None]
    if len(given) > 1:
        raise ValueError(f"give one of --weights, --generator and --checkpoint, not {' and '.join(given)}")
    if run is not None:
        return load_generator(run, preset, device)
    if checkpoint is not None:
        return Generator.from_official_checkpoint(checkpoint).to(device)
    return Generator.from_pretrained(weights, device)


def resolve_refiner(refiner: str | None, preset: str = "small", device: str | torch.device = "cpu"):
    """The refiner `refiner` names: None for None, the package's for PACKAGED, the authors'
    refinement file, a file of `export --refiner`, or a stage-4 run or checkpoint (of `preset`)."""
    if refiner is None:
        return None
    if official_kind(refiner) is not None or (os.path.isfile(refiner) and not refiner.endswith(".safetensors")):
        # The authors' refiner (their generator named as such; a torch file the package never
        # writes, cut or carrying code, named by the authors' loader).
        return Refiner.from_official_checkpoint(refiner, device)
    if refiner == PACKAGED or is_pretrained_file(refiner, REFINER_FORMAT):
        return Refiner.from_pretrained(None if refiner == PACKAGED else refiner, device)
    return load_refiner(refiner, REFINER_PRESETS[preset], device)


def evaluate_models(config: EvaluationConfig, preset: str = "small", device: str = "cpu", *,
                    generator: str | None = None, refiner: str | None = None, reconstructor: str | None = None,
                    baseline: bool = True, world: bool = True) -> dict:
    """The rows of `get3dhuman eval` (evaluate.py's metrics), each present where asked for:
    'trained' (the generator: a run, a file of `export` or PACKAGED), 'refined' (its meshes
    coloured by `refiner`), 'prior' (the Reconstructor run's meshes of the stand-in images),
    'untrained' (a fresh generator of `preset`, seeded), 'world' (the synthetic humans: the ideal)."""
    if generator is None and reconstructor is None and not baseline:
        raise ValueError("give --generator RUN or --reconstructor RUN, or drop --no-baseline")
    if refiner is not None and generator is None:
        raise ValueError("--refiner needs --generator (the generator whose renders it refines)")
    rows = {}
    if generator is not None:
        model = (Generator.from_pretrained(device=device) if generator == PACKAGED
                 else load_generator(generator, preset, device))
        rows["trained"] = evaluate_generator(model, config)
        if refiner is not None:
            rows["refined"] = evaluate_generator(model, config, refiner=resolve_refiner(refiner, preset, device))
    if reconstructor is not None:
        rows["prior"] = evaluate_prior(load_reconstructor(reconstructor, preset, device), config)
    if baseline:
        torch.manual_seed(config.seed)
        rows["untrained"] = evaluate_generator(Generator(preset).to(device).eval(), config)
    if world:
        rows["world"] = evaluate_world(resolve_config(preset).z_dim, config)
    return rows
