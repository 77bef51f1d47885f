"""The `get3dhuman` command line.

- `get3dhuman info`: what was built and what this machine can run.
- `get3dhuman synthetic --out FILE.png`: a grid of humans from the synthetic world.
- `get3dhuman images --image-generator FILE --out FILE.png`: the images stage 2 would lift
  (a 2-D generator's, matted and framed; without FILE, the stand-in's), to check them first.
- `get3dhuman train reconstructor --preset tiny|small|official --out DIR`: training stage 1.
- `get3dhuman train prior --reconstructor RUN --out DIR`: stage 2, the prior cache (with the
  setting images_only, no --reconstructor: the stand-in images alone, all the refiner needs;
  `--image-generator FILE`: a real 2-D generator's images, e.g. StyleGAN-Human's, instead).
- `get3dhuman train generator --prior DIR --reconstructor RUN --out DIR`: stage 3.
- `get3dhuman train refiner --prior DIR --generator RUN_OR_FILE --out DIR`: stage 4 (the
  generator: a stage-3 run or checkpoint, or a file of `export`).
- `get3dhuman train all --preset small --out DIR`: the four stages in turn, in DIR/STAGE.
- `--config FILE.json` on any `train` command: settings per stage over the preset's
  (get3dhuman.train.settings).
- Every `train` stage resumes where it stopped when run again with the same DIR, and runs
  data-parallel under `torchrun --nproc-per-node N -m get3dhuman.cli train ...`.
- `get3dhuman export --generator RUN --out FILE.safetensors`: the trained generator as one file
  for `Generator.from_pretrained(FILE)`; `--refiner RUN` instead: the refiner, for
  `Refiner.from_pretrained(FILE)`; `--checkpoint get3dhuman.pth`: the authors' released model;
  `--image-generator PKL`: a 2-D generator's network pickle, for `train prior --image-generator`.
- `get3dhuman sample --num N --out DIR` (or `--seeds 3 17 40-59`): a dataset of generated humans
  (textured meshes, previews, manifest.jsonl), resumable, sharded under torchrun (get3dhuman.dataset). The
  generator: the package's weights, `--weights FILE` (of `export`), `--generator RUN` or
  `--checkpoint get3dhuman.pth` (the authors' released weights); so for the other commands
  that take a generator. With `--checkpoint` and `--refiner Get3DHuman_refinement_v1.pth`,
  coloured as the authors' inference.py colours (docs/authors-release.md).
- `get3dhuman bench`: how fast this machine samples humans (seconds a human, by stage;
  get3dhuman.benchmark), with the generator options of `sample`.
- `get3dhuman interpolate --from SEED --to SEED --out DIR` and `get3dhuman retexture --shape SEED
  --textures SEED ... --out DIR`: meshes between two humans, one shape with other textures
  (get3dhuman.applications).
- `get3dhuman invert --image FILE --out DIR`: latents whose front view matches an image.
- `get3dhuman eval --generator RUN --preset small`: COV, MMD, 1-NNA and colour error against
  held-out synthetic humans, with an untrained generator of the same preset as the baseline row,
  the synthetic humans of the same latents as the ideal row, with `--reconstructor RUN` the
  prior row and with `--refiner RUN` the refined row (get3dhuman.evaluate).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

from get3dhuman import __version__
from get3dhuman.claims import STALE_AFTER
from get3dhuman.train.settings import STAGES

PACKAGED = ""  # `--refiner` given alone: the package's refiner
FILE_OUTPUTS = ("synthetic", "images", "export")  # commands whose --out is a file, not a directory


def _number(kind: type, low: float | None = None, high: float | None = None, *, low_open: bool = False,
            high_open: bool = False):
    """An argparse `type`: a finite `kind` (int or float) within [low, high] (`low_open` /
    `high_open`: the bound excluded; None: unbounded), refused while parsing so that the error
    names the flag (`argument --views: must be an int in [1, 360], got 0`), not the Python
    argument it becomes."""
    if low is not None and high is not None:
        bounds = f" in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    elif low is not None:
        bounds = f" {'>' if low_open else '>='} {low}"
    else:
        bounds = "" if high is None else f" {'<' if high_open else '<='} {high}"
    expected = ("an int" if kind is int else "a number" if bounds else "a finite number") + bounds

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {expected}, got {text!r}") from None
        within = ((low is None or (value > low if low_open else value >= low))
                  and (high is None or (value < high if high_open else value <= high)))
        if not (within and math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"must be {expected}, got {text}")
        return value

    return parse


_COUNT = _number(int, 1)  # humans, steps, pixels, cells, ...
_TWO_OR_MORE = _number(int, 2)  # image sides, path steps (both ends)
MIN_MESH_RESOLUTION = 16  # coarser lattices cannot hold a human: meshes empty or a few blobs
_MESH_RESOLUTION = _number(int, MIN_MESH_RESOLUTION)
_SEED = _number(int, 0)  # the library refuses seeds from 2^64 (`_checks.check_seed`)


MAX_SEED_RANGE = 10_000_000  # seeds a --seeds range may name (each is held in memory)


def _seeds_item(text: str) -> list[int]:
    """An argparse `type` for --seeds: a seed, a range A-B (both included, A <= B) or a file of
    such items, one a line (blank lines and # comments skipped)."""
    if os.path.isfile(text):
        with open(text) as handle:
            lines = [line.split("#")[0].strip() for line in handle]
        return [value for line in lines if line for value in _seeds_item(line)]
    first, dash, last = text.partition("-")
    try:
        low, high = int(first), int(last if dash else first)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be seeds (3), ranges (40-59) or files of them, got {text!r}") from None
    if not 0 <= low <= high < 2**64 or high - low >= MAX_SEED_RANGE:
        raise argparse.ArgumentTypeError(f"must be seeds or ranges A-B with 0 <= A <= B < 2^64, at most "
                                         f"{MAX_SEED_RANGE:,} seeds a range, got {text!r}")
    return list(range(low, high + 1))
_MATTE_TOLERANCE = _number(float, 0, 1, high_open=True)


def _info(args: argparse.Namespace) -> int:
    from get3dhuman import build_info

    info = build_info()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        backends = info.pop("query_backends")
        width = max(len(key) for key in info)
        for key, value in info.items():
            if isinstance(value, list):
                value = ", ".join(value) if value else "-"
            elif value is None:
                value = "-"
            print(f"{key:<{width}}  {value}")
        print(f"query backends: {' > '.join(backends['order'])} (GET3DHUMAN_QUERY_BACKEND: {backends['override']})")
        for device, chosen in backends["chosen"].items():
            print(f"  {device}: inference -> {chosen['inference']}, training -> {chosen['training']}")
            for name, reason in chosen["skipped_for_inference"].items():
                print(f"    {name} skipped: {reason}")
    return 0


def _synthetic(args: argparse.Namespace) -> int:
    from get3dhuman.synthetic.preview import sample_grid

    try:
        sample_grid(args.out, args.num, args.seed, args.resolution)
    except (OSError, ValueError) as error:
        raise SystemExit(f"get3dhuman synthetic: {error}") from error
    print(f"wrote {args.num} synthetic humans to {args.out}")
    return 0


def _images(args: argparse.Namespace) -> int:
    import dataclasses

    from get3dhuman import train
    from get3dhuman.synthetic.preview import save_grid
    from get3dhuman.train.prior import check_prior_config, load_image_generator, range_targets

    config = dataclasses.replace(train.PRIOR_PRESETS[args.preset], seed=args.seed, images_only=True,
                                 albedo_images=False, image_generator=args.image_generator,
                                 truncation_psi=args.truncation_psi, matte_tolerance=args.matte_tolerance,
                                 figure_height=None if args.figure_height == 0 else args.figure_height)
    try:
        check_prior_config(config)
        generator = load_image_generator(config, args.device)
    except (OSError, ValueError) as error:
        raise SystemExit(f"get3dhuman images: {error}") from error
    images = range_targets(None, config, generator, 0, args.num)["image"]
    save_grid(images.float() / 255, args.out, args.columns)
    print(f"wrote the first {args.num} images of a prior cache of seed {args.seed} to {args.out}")
    return 0


def _report_silhouettes(cache_dir: str, entries: int = 512) -> None:
    """Prints how well the Reconstructor's front masks cover the cache's images (prior.silhouette_iou);
    under torchrun, rank 0 alone."""
    from get3dhuman.train.distributed import is_main_process
    from get3dhuman.train.prior import PriorCache, figure_masks, silhouette_iou

    cache = PriorCache(cache_dir)
    if "mask" not in cache.keys or not is_main_process():
        return
    checked = range(min(entries, len(cache)))
    entries = cache.batch(checked, ("image", "mask"))
    iou = silhouette_iou(figure_masks(cache, checked, entries["image"]), entries["mask"])
    print(f"silhouette IoU of the Reconstructor's front masks and the images (first {len(checked)} latents): "
          f"mean {iou.mean():.3f}, lowest tenth below {iou.quantile(0.1):.3f}")


def _train(args: argparse.Namespace) -> int:
    import dataclasses

    from get3dhuman import train

    if args.stage == "all":
        if any(getattr(args, k) is not None for k in ("reconstructor", "prior", "generator", "steps")):
            raise SystemExit("get3dhuman train all: --reconstructor, --prior, --generator and --steps do not apply "
                             "(every stage trains on the stages before it in --out; set each stage's steps in --config)")
        if args.image_generator is not None:  # refused now, not after the reconstructor has trained
            try:
                train.load_image_generator(dataclasses.replace(train.PRIOR_PRESETS[args.preset], albedo_images=False,
                                                               image_generator=args.image_generator))
            except (OSError, ValueError) as error:
                raise SystemExit(f"get3dhuman train all: {error}") from error
        runs = {stage: os.path.join(args.out, stage) for stage in STAGES}
        for stage, out in runs.items():
            _train(argparse.Namespace(**{**vars(args), "stage": stage, "out": out, "reconstructor": runs["reconstructor"],
                                         "prior": runs["prior"], "generator": runs["generator"],
                                         "workers": args.workers if stage == "reconstructor" else None,
                                         "scans": args.scans if stage == "reconstructor" else None,
                                         "image_generator": args.image_generator if stage == "prior" else None}))
        return 0
    for name, stage in (("workers", "reconstructor"), ("scans", "reconstructor"), ("image_generator", "prior")):
        if getattr(args, name) is not None and args.stage != stage:
            raise SystemExit(f"get3dhuman train {args.stage}: --{name.replace('_', '-')} applies to the {stage} stage "
                             "only")
    if args.stage == "prior" and args.steps is not None:
        raise SystemExit("get3dhuman train prior: --steps does not apply (the cache size is the setting 'count')")
    options = {k: v for k, v in (("steps", args.steps), ("seed", args.seed), ("scans", args.scans),
                                 ("image_generator", args.image_generator)) if v is not None}
    if args.image_generator is not None:
        options["albedo_images"] = False  # only the stand-in paints albedo images
    presets = {"reconstructor": train.RECONSTRUCTOR_PRESETS, "prior": train.PRIOR_PRESETS,
               "generator": train.GENERATOR_PRESETS, "refiner": train.REFINER_PRESETS}
    try:
        config = presets[args.stage][args.preset]
        if args.config is not None:
            config = train.apply_overrides(config, train.read_overrides(args.config)[args.stage],
                                           f"--config {args.config} [{args.stage}]")
        config = train.apply_overrides(config, options, "command line")
    except (OSError, ValueError) as error:
        raise SystemExit(f"get3dhuman train {args.stage}: {error}") from error
    if args.stage == "prior":
        if args.reconstructor is None and not config.images_only:
            raise SystemExit("get3dhuman train prior: --reconstructor RUN is required (unless the setting images_only "
                             "is true: a cache of the stand-in images alone, for the refiner stage)")
        if args.reconstructor is not None and config.images_only:
            raise SystemExit("get3dhuman train prior: the setting images_only makes a cache without a Reconstructor; "
                             "drop --reconstructor (train all: the generator stage needs a full cache)")
        try:
            train.induce_priors(config, args.reconstructor, args.out, args.device, progress=not args.quiet)
        except (OSError, ValueError) as error:  # e.g. an --image-generator file of another kind
            raise SystemExit(f"get3dhuman train prior: {error}") from error
        _report_silhouettes(args.out)
    elif args.stage == "reconstructor":
        try:
            train.train_reconstructor(config, args.out, args.device, progress=not args.quiet, workers=args.workers)
        except ValueError as error:  # e.g. a --scans folder without scans
            raise SystemExit(f"get3dhuman train reconstructor: {error}") from error
    elif args.stage == "refiner":
        if args.prior is None or args.generator is None:
            raise SystemExit("get3dhuman train refiner: --prior DIR and --generator RUN_OR_FILE are required")
        try:
            train.train_refiner(config, args.prior, args.generator, args.out, args.device, progress=not args.quiet)
        except (FileNotFoundError, ValueError) as error:
            raise SystemExit(f"get3dhuman train refiner: {error}") from error
    else:
        if args.prior is None or args.reconstructor is None:
            raise SystemExit("get3dhuman train generator: --prior DIR and --reconstructor RUN are required")
        train.train_generator(config, args.prior, args.reconstructor, args.out, args.device, progress=not args.quiet)
    return 0


def _eval(args: argparse.Namespace) -> int:
    import dataclasses

    import torch

    from get3dhuman.evaluate import EvaluationConfig, evaluate_generator, evaluate_prior, evaluate_world
    from get3dhuman.nn import Generator
    from get3dhuman.nn.generator import resolve_config
    from get3dhuman.train import load_generator, load_reconstructor

    config = dataclasses.replace(EvaluationConfig(), **{k: getattr(args, k) for k in ("samples", "references", "points",
                                                                                        "resolution", "seed")})
    if args.generator is None and args.reconstructor is None and args.no_baseline:
        raise SystemExit("get3dhuman eval: give --generator RUN or --reconstructor RUN, or drop --no-baseline")
    if args.refiner is not None and args.generator is None:
        raise SystemExit("get3dhuman eval: --refiner needs --generator (the generator whose renders it refines)")
    rows = {}
    try:
        if args.generator is not None:
            generator = (Generator.from_pretrained(device=args.device) if args.generator == PACKAGED
                         else load_generator(args.generator, args.preset, args.device))
            rows["trained"] = evaluate_generator(generator, config)
            if args.refiner is not None:
                rows["refined"] = evaluate_generator(generator, config, refiner=_load_refiner(args, args.device))
        if args.reconstructor is not None:
            rows["prior"] = evaluate_prior(load_reconstructor(args.reconstructor, args.preset, args.device), config)
    except (FileNotFoundError, ValueError) as error:  # e.g. a --generator path without a checkpoint
        raise SystemExit(f"get3dhuman eval: {error}") from error
    if not args.no_baseline:
        torch.manual_seed(config.seed)
        rows["untrained"] = evaluate_generator(Generator(args.preset).to(args.device).eval(), config)
    if not args.no_world:
        rows["world"] = evaluate_world(resolve_config(args.preset).z_dim, config)
    print(json.dumps(rows, indent=2))
    return 0


CHECKPOINT_HELP = ("the authors' released checkpoint (e.g. get3dhuman.pth: a state dict, read with "
                   "torch.load(weights_only=True); or .safetensors)")


def _load_generator(args: argparse.Namespace, device):
    """The generator of --weights (default: the package's), of the run --generator (--preset) or
    of the authors' --checkpoint; refuses more than one, and --grid, --views or --maps without
    --preview where the command has them."""
    from get3dhuman.nn import Generator
    from get3dhuman.train import load_generator

    given = [f"--{name}" for name in ("weights", "generator", "checkpoint") if getattr(args, name) is not None]
    if len(given) > 1:
        raise SystemExit(f"get3dhuman {args.command}: give one of --weights, --generator and --checkpoint, "
                         f"not {' and '.join(given)}")
    if getattr(args, "preview", None) is None:
        if getattr(args, "grid", None) is not None:
            raise SystemExit(f"get3dhuman {args.command}: --grid needs --preview RES "
                             "(the grid is made of the previews)")
        if getattr(args, "views", 1) > 1 or getattr(args, "maps", None):
            raise SystemExit(f"get3dhuman {args.command}: --views and --maps need --preview RES (they are previews)")
    try:
        if args.generator is not None:
            generator = load_generator(args.generator, args.preset, device)
        elif args.checkpoint is not None:
            generator = Generator.from_official_checkpoint(args.checkpoint).to(device)
        else:
            generator = Generator.from_pretrained(args.weights, device)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"get3dhuman {args.command}: {error}") from error
    return generator.to(_dtype(getattr(args, "dtype", "float32")))


def _load_refiner(args: argparse.Namespace, device):
    """The refiner of --refiner: None when not given, the package's when given alone, else the
    authors' refinement file, the file of `export --refiner` or the stage-4 run or checkpoint
    (--preset) it names."""
    from get3dhuman.nn import Refiner
    from get3dhuman.nn.pretrained import is_pretrained_file, official_kind
    from get3dhuman.nn.refiner import PRETRAINED_FORMAT
    from get3dhuman.train import REFINER_PRESETS, load_refiner

    if args.refiner is None:
        return None
    if official_kind(args.refiner) is not None or (os.path.isfile(args.refiner) and
                                                   not args.refiner.endswith(".safetensors")):
        # The authors' refiner (their generator named as such; a torch file the package never
        # writes, cut or carrying code, named by the authors' loader).
        return Refiner.from_official_checkpoint(args.refiner, device)
    if args.refiner == PACKAGED or is_pretrained_file(args.refiner, PRETRAINED_FORMAT):
        return Refiner.from_pretrained(None if args.refiner == PACKAGED else args.refiner, device)
    return load_refiner(args.refiner, REFINER_PRESETS[args.preset], device)


def _sample(args: argparse.Namespace) -> int:
    from get3dhuman.dataset import save_preview_grid, write_samples
    from get3dhuman.train import distributed

    device = distributed.initialize(args.device)
    generator = _load_generator(args, device)
    try:
        refiner = _load_refiner(args, device)
        seeds = None if args.seeds is None else [value for item in args.seeds for value in item]
        num = args.num if seeds is None else len(seeds)
        written = []
        records = write_samples(generator, args.out, num, args.seed, seeds=seeds, batch_size=args.batch_size,
                                stale_after=args.stale_after, written=written,
                                resolution=args.resolution, file_type=args.format, preview_resolution=args.preview,
                                preview_views=args.views, preview_maps=args.maps, truncation_psi=args.truncation,
                                refiner=refiner, progress=not args.quiet, render_size=args.render_size,
                                refined_views=args.refined_views, **_compute_options(args),
                                **({"noise_mode": "random"} if args.noise == "random" else {}))
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"get3dhuman sample: {error}") from error
    if distributed.is_main_process():
        if args.grid is not None:
            save_preview_grid(args.out, records, args.grid)
        empty = sum(record["mesh"] is None for record in records)
        seconds = sum(record["seconds"] for record in records) / max(len(records), 1)
        print(f"{len(records)} samples in {args.out} ({empty} empty, {seconds:.2f} s a human; {len(written)} "
              f"written by this process), listed in {args.out}/manifest.jsonl")
        if empty:
            print(f"get3dhuman sample: warning: {empty} of {len(records)} meshes are empty (the field never "
                  "crosses its level in the box): no mesh file was written for them", file=sys.stderr)
    return 0


def _bench(args: argparse.Namespace) -> int:
    import torch

    from get3dhuman import build_info
    from get3dhuman.benchmark import measure_sampling

    generator = _load_generator(args, args.device)
    try:
        result = measure_sampling(generator, args.num, args.resolution, batch_size=args.batch_size, seed=args.seed,
                                  repeat=args.repeat, **_compute_options(args))
    except ValueError as error:
        raise SystemExit(f"get3dhuman bench: {error}") from error
    backend = build_info()["query_backends"]["chosen"][torch.device(result.device).type]["inference"]
    if args.json:
        print(json.dumps({**result.to_dict(), "query_backend": backend}))
    else:
        print(f"{result.summary()}\n  query backend: {backend}")
    return 0


def _edit(args: argparse.Namespace) -> int:
    """`interpolate` and `retexture`: meshes (and previews) of latents named by seeds."""
    from get3dhuman import applications

    generator = _load_generator(args, args.device)
    options = {"resolution": args.resolution, "truncation_psi": args.truncation, "progress": not args.quiet,
               **_compute_options(args)}
    try:
        if args.command == "interpolate":
            start, end = generator.latents([args.start]), generator.latents([args.end])
            meshes = applications.interpolate(generator, (start[0][0], start[1][0]), (end[0][0], end[1][0]),
                                              args.steps, moving=args.moving, space=args.space, **options)
            names = [f"step-{i:02d}" for i in range(args.steps)]
        else:
            z_shape, z_texture = generator.latents([args.shape])[0][0], generator.latents(args.textures)[1]
            meshes = applications.retexture(generator, z_shape.to(args.device), z_texture.to(args.device), **options)
            names = [f"texture-{seed}" for seed in args.textures]
        written = applications.write_results(generator, args.out, names, meshes, args.format, args.preview, args.grid,
                                             args.views, args.maps)
    except ValueError as error:
        raise SystemExit(f"get3dhuman {args.command}: {error}") from error
    print(f"{len(written)} files in {args.out}" + (f" and {args.grid}" if args.grid else ""))
    return 0


def _invert(args: argparse.Namespace) -> int:
    """Latents of an image (applications.invert), then their mesh, front view and loss curve."""
    import numpy as np
    import torch
    from PIL import Image
    from safetensors.torch import save_file

    from get3dhuman import applications
    from get3dhuman.nn.image_generator import frame_figures
    from get3dhuman.train.prior import PriorConfig

    generator = _load_generator(args, args.device)
    side = args.side or generator.config.backbone_resolution

    def read(path: str, mode: str, resize: bool) -> torch.Tensor:
        try:
            picture = Image.open(path).convert(mode)
            if resize and picture.width != picture.height:
                raise SystemExit(f"get3dhuman invert: {path} is {picture.width} x {picture.height}, not square: pass "
                                 "--frame to matte and frame a picture of any shape")
            picture = picture.resize((side, side), Image.Resampling.BILINEAR) if resize else picture
        except OSError as error:
            raise SystemExit(f"get3dhuman invert: cannot read {path}: {error}") from error
        return torch.from_numpy(np.asarray(picture, dtype=np.float32) / 255)

    if args.frame:
        if args.mask is not None:
            raise SystemExit("get3dhuman invert: --frame takes the mask from the matte; drop --mask")
        try:  # framed as the prior stage frames generated figures
            framed = frame_figures(read(args.image, "RGB", resize=False)[None], side, args.matte_tolerance,
                                   PriorConfig.figure_height)
        except ValueError as error:
            raise SystemExit(f"get3dhuman invert: {error}") from error
        image, mask = framed.images[0], (framed.masks[0] > 0.5).float()
    else:
        image = read(args.image, "RGB", resize=True)
        mask = None if args.mask is None else (read(args.mask, "L", resize=True) > 0.5).float()
    try:
        result = applications.invert(generator, image, mask, steps=args.steps, learning_rate=args.learning_rate,
                                     seed=args.seed, progress=not args.quiet)
    except ValueError as error:
        raise SystemExit(f"get3dhuman invert: {error}") from error
    os.makedirs(args.out, exist_ok=True)
    save_file({"z_shape": result.z_shape.cpu(), "z_texture": result.z_texture.cpu()},
              os.path.join(args.out, "latents.safetensors"))
    with open(os.path.join(args.out, "losses.json"), "w") as handle:
        json.dump(result.losses, handle)
    mesh = generator.extract_mesh(result.z_shape, result.z_texture, args.resolution, **_compute_options(args))
    applications.write_results(generator, args.out, ["inverted"], mesh, args.format, side)
    print(f"loss {result.losses[0]:.4f} -> {min(result.losses):.4f}; latents, mesh and front view in {args.out}")
    return 0


def _export(args: argparse.Namespace) -> int:
    import torch

    from get3dhuman.nn import Generator, ImageGenerator
    from get3dhuman.train import REFINER_PRESETS, load_generator, load_refiner

    try:
        if args.generator is not None:
            model = load_generator(args.generator, args.preset)
        elif args.image_generator is not None:
            model = ImageGenerator.load(args.image_generator)
        elif args.checkpoint is not None:
            model = Generator.from_official_checkpoint(args.checkpoint)
        else:
            model = load_refiner(args.refiner, REFINER_PRESETS[args.preset])
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"get3dhuman export: {error}") from error
    model.save_pretrained(args.out, getattr(torch, args.dtype))
    print(args.out)
    return 0


def _add_generator_arguments(parser: argparse.ArgumentParser, preset_help: str = "of --generator") -> None:
    parser.add_argument("--weights", help="file of `get3dhuman export` (default: the package's weights)")
    parser.add_argument("--generator", help="stage-3 run directory or checkpoint instead of --weights")
    parser.add_argument("--checkpoint", help=CHECKPOINT_HELP + " instead of --weights")
    parser.add_argument("--preset", choices=["tiny", "small", "official"], default="small", help=preset_help)


def _dtype(name: str):
    import torch

    return getattr(torch, name)


def _add_compute_dtype_argument(parser: argparse.ArgumentParser, with_model_dtype: bool = True) -> None:
    """--compute-dtype, and where the command only samples (with_model_dtype) --dtype."""
    parser.add_argument("--compute-dtype", choices=["float32", "bfloat16"],
                        help="of the decoders' matrix products: bfloat16 is faster on CPUs with AVX512-BF16 or AMX "
                        "and on GPUs, and its meshes differ from float32's in a few faces in 10^4 (default: "
                        "--dtype's)")
    if with_model_dtype:
        parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                            help="of the generator's weights and networks: bfloat16 runs them and the decoders' "
                            "products in bfloat16 (the meshes' geometry in float32), faster where --compute-dtype "
                            "bfloat16 is and most for official-size networks; surfaces within about a voxel of "
                            "float32's (default float32)")


def _compute_options(args: argparse.Namespace) -> dict:
    """extract_mesh's compute_dtype from --compute-dtype; none where it is the model's (--dtype,
    float32 without it), so that a dataset directory of an earlier version keeps its settings."""
    if args.compute_dtype in (None, getattr(args, "dtype", "float32")):
        return {}
    return {"compute_dtype": _dtype(args.compute_dtype)}


def _add_mesh_arguments(parser: argparse.ArgumentParser, grid_help: str | None, with_model_dtype: bool = True) -> None:
    """--resolution, --compute-dtype (and --dtype: `_add_compute_dtype_argument`), --format, and
    unless grid_help is None --preview, --grid, --views, --maps and --truncation."""
    parser.add_argument("--resolution", type=_MESH_RESOLUTION, default=256,
                        help=f"marching-cubes cells per axis, at least {MIN_MESH_RESOLUTION} (default 256)")
    _add_compute_dtype_argument(parser, with_model_dtype)
    parser.add_argument("--format", choices=["glb", "ply", "obj"], default="glb", help="mesh files (default glb)")
    if grid_help is not None:
        parser.add_argument("--preview", type=_TWO_OR_MORE, metavar="RES",
                            help="also write RES x RES front views (PNG)")
        parser.add_argument("--grid", help=grid_help)
        parser.add_argument("--views", type=_number(int, 1, 360), default=1, metavar="V",
                            help="with --preview: V previews per mesh, 360/V degrees apart about the vertical axis, "
                            "the front first (default 1)")
        parser.add_argument("--maps", nargs="+", choices=["mask", "depth", "normal"], default=[],
                            help="with --preview: also these maps of every view (mask; depth as 16-bit PNG, "
                            "(z + 1) / 2 of the NDC depth; camera-space normals as RGB)")
        parser.add_argument("--truncation", type=_number(float), default=1.0,
                            help="truncation psi (default 1: none; 0: the mean human)")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `get3dhuman` console script; returns the exit status."""
    # Raw: the module docstring's list of commands reads as written, one command a bullet.
    parser = argparse.ArgumentParser(prog="get3dhuman", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"get3dhuman {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    info = commands.add_parser("info", help="show what was built and what this machine can run")
    info.add_argument("--json", action="store_true", help="print machine-readable JSON")
    info.set_defaults(handler=_info)
    synthetic = commands.add_parser("synthetic", help="render a PNG grid of humans from the synthetic world")
    synthetic.add_argument("--out", required=True, help="PNG file to write")
    synthetic.add_argument("--num", type=_COUNT, default=16, help="number of humans (default 16)")
    synthetic.add_argument("--seed", type=_SEED, default=0, help="seed of the latents (default 0)")
    synthetic.add_argument("--resolution", type=_TWO_OR_MORE, default=256,
                           help="pixels per side of each render (default 256)")
    synthetic.set_defaults(handler=_synthetic)
    images = commands.add_parser("images", help="a PNG grid of the images a prior cache would hold: a 2-D "
                                 "generator's, matted and framed, or the synthetic stand-in's")
    images.add_argument("--out", required=True, help="PNG file to write")
    images.add_argument("--image-generator", metavar="FILE", help="network pickle (e.g. StyleGAN-Human's) or file of "
                        "`export --image-generator`, as `train prior --image-generator` (default: the synthetic "
                        "stand-in)")
    images.add_argument("--preset", choices=["tiny", "small", "official"], default="small",
                        help="fixes z_dim and the image side (StyleGAN-Human: official)")
    images.add_argument("--num", type=_COUNT, default=16, help="number of images: the cache's first (default 16)")
    images.add_argument("--seed", type=_SEED, default=0, help="the prior cache's seed (default 0)")
    images.add_argument("--truncation-psi", type=_number(float, 0, 1, low_open=True), default=1.0,
                        help="of the generator's styles (default 1)")
    images.add_argument("--matte-tolerance", type=_MATTE_TOLERANCE, default=0.06,
                        help="of the generator's background colour (default 0.06)")
    images.add_argument("--figure-height", type=_number(float, 0, 1), default=0.9,
                        help="the figures framed this tall, a fraction of the side, as scans are (default 0.9; "
                        "0: the generator's framing, padded square)")
    images.add_argument("--columns", type=_COUNT, default=4, help="images per row of the grid (default 4)")
    images.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    images.set_defaults(handler=_images)
    train = commands.add_parser("train", help="train a stage (resumes from the newest checkpoint in --out)")
    train.add_argument("stage", choices=[*STAGES, "all"],
                       help="the training stage: 1 reconstructor, 2 prior (cache), 3 generator, 4 refiner; "
                       "all: each in turn, in OUT/STAGE")
    train.add_argument("--preset", choices=["tiny", "small", "official"], default="small")
    train.add_argument("--out", required=True, help="run directory (checkpoints, metrics.jsonl, config.json) or prior cache")
    train.add_argument("--reconstructor", help="stage-1 run directory or checkpoint (prior, generator)")
    train.add_argument("--prior", help="prior cache directory of stage 2 (generator, refiner)")
    train.add_argument("--generator", help="stage-3 run directory or checkpoint, or a file of `export` such as the "
                       "package's get3dhuman/weights/generator-small.safetensors (refiner)")
    train.add_argument("--config", help="JSON file of settings per stage over the preset's, e.g. "
                       '{"reconstructor": {"steps": 8000}, "generator": {"adversarial_weight": 0.1}} '
                       "(get3dhuman.train.settings; the fields of each stage's config class)")
    train.add_argument("--steps", type=_COUNT, help="total steps (default: the preset's or --config's)")
    train.add_argument("--seed", type=_SEED, help="seed (default: the preset's)")
    train.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (under torchrun: each process its GPU LOCAL_RANK)")
    train.add_argument("--workers", type=_number(int, 0), help="reconstructor: processes making the coming "
                       "synthetic batches while the model trains (default: none below 4 threads, else one per 4 "
                       "threads, at most 2; the batches are the same; on a GPU the batches are made there instead)")
    train.add_argument("--scans", metavar="DIR", help="reconstructor: train on the textured scans in DIR (OBJ, PLY, GLB, "
                       "...; y up, facing +z; each scaled to 1.8 m tall) instead of the synthetic world, the last "
                       "tenth by file name held out for the metrics (get3dhuman.scans; the setting 'scans')")
    train.add_argument("--image-generator", metavar="FILE", help="prior: the 2-D generator whose images the "
                       "Reconstructor lifts, instead of the synthetic stand-in: a StyleGAN2-ADA network pickle such as "
                       "StyleGAN-Human's stylegan_human_v2_1024.pkl (read as data, nothing in it is run) or a file of "
                       "`export --image-generator`; its z_dim must be the preset's (the setting 'image_generator'; "
                       "albedo_images off)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(handler=_train)
    evaluate = commands.add_parser("eval", help="shape and colour metrics of a generator against held-out humans")
    evaluate.add_argument("--generator", nargs="?", const=PACKAGED, metavar="RUN_OR_FILE",
                          help="stage-3 run directory or checkpoint, or a file of `export`; alone: the package's "
                          "default weights (--preset small); omit for the baseline only")
    evaluate.add_argument("--refiner", nargs="?", const=PACKAGED, metavar="RUN_OR_FILE",
                          help="adds the 'refined' row: the generator's meshes coloured by this refiner's views (a "
                          "stage-4 run or checkpoint, or a file of `export --refiner`; alone: the package's refiner, "
                          "where it ships one)")
    evaluate.add_argument("--preset", choices=["tiny", "small", "official"], default="small")
    from get3dhuman.evaluate import EvaluationConfig

    defaults = EvaluationConfig()
    for name, meaning in (("samples", "generated shapes"), ("references", "held-out humans"),
                          ("points", "surface points per shape"), ("resolution", "mesh resolution"), ("seed", "seed")):
        evaluate.add_argument(f"--{name}", type=_SEED if name == "seed" else _COUNT, default=getattr(defaults, name),
                              help=f"{meaning} (default {getattr(defaults, name)})")
    evaluate.add_argument("--reconstructor", help="stage-1 run directory or checkpoint: adds the 'prior' row (its "
                          "meshes of the stand-in images of the same latents)")
    evaluate.add_argument("--no-baseline", action="store_true", help="skip the untrained-generator row")
    evaluate.add_argument("--no-world", action="store_true",
                          help="skip the 'world' row (the synthetic humans of the same latents: the ideal)")
    evaluate.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    evaluate.set_defaults(handler=_eval)
    sample = commands.add_parser("sample", help="write textured meshes of generated humans (a dataset; resumable)")
    how_many = sample.add_mutually_exclusive_group(required=True)
    how_many.add_argument("--num", "--count", type=_number(int, 0), dest="num",
                          help="number of samples (seeds SEED .. SEED + NUM - 1); under torchrun write --count, "
                          "since torchrun reads --num as an abbreviation of its own --numa-binding")
    how_many.add_argument("--seeds", nargs="+", type=_seeds_item, metavar="SEEDS",
                          help="the seeds to sample instead: numbers and ranges such as 3 17 40-59, or files of "
                          "them, one item a line")
    sample.add_argument("--out", required=True, help="directory of the meshes, previews and manifest.jsonl")
    _add_generator_arguments(sample, "of --generator and --refiner")
    sample.add_argument("--refiner", nargs="?", const=PACKAGED, metavar="RUN_OR_FILE",
                        help="refined vertex colours and previews by a stage-4 run directory or checkpoint, or a file "
                        "of `export --refiner`; alone: the package's refiner, where it ships one (`get3dhuman info`: "
                        "default_refiner_weights); the authors' Get3DHuman_refinement_v1.pth with their --checkpoint: "
                        "their colouring, two refined views lifted onto the mesh (docs/authors-release.md)")
    sample.add_argument("--render-size", type=_COUNT, metavar="R",
                        help="with the authors' --refiner: the side of their two views, a multiple of 16 (default: "
                        "--resolution, as their --render_size sets both)")
    sample.add_argument("--refined-views", action="store_true",
                        help="with the authors' --refiner: also write each sample's refined views, "
                        "human-SEED-refined-180.png and -000.png")
    sample.add_argument("--seed", type=_SEED, default=0, help="seed of the first sample (default 0)")
    sample.add_argument("--batch-size", type=_COUNT, default=4,
                        help="latents meshed and written together (default 4; the meshes do not depend on it)")
    _add_mesh_arguments(sample, "with --preview: one PNG of all the previews, 4 per row")
    sample.add_argument("--stale-after", type=_number(float, 0), default=STALE_AFTER, metavar="SECONDS",
                        help="other processes may write the same --out at once, each seed claimed by one; a claim "
                        f"neither refreshed nor done for SECONDS (a killed process's) is taken over (default "
                        f"{STALE_AFTER:g})")
    sample.add_argument("--noise", choices=["const", "random"], default="const",
                        help="the backbones' per-layer noise: const (default), the stored noise, the same on every "
                        "device; random: drawn as the authors' inference draws it, after torch.manual_seed(the "
                        "sample's seed), so reproducible on one kind of device only (CPU and CUDA draw differently)")
    sample.add_argument("--device", default="cpu", help="torch device (under torchrun: each process its GPU LOCAL_RANK)")
    sample.add_argument("--quiet", action="store_true", help="no progress bar")
    sample.set_defaults(handler=_sample)
    bench = commands.add_parser("bench", help="how fast this machine samples humans: seconds a human, by stage")
    bench.add_argument("--num", type=_COUNT, default=4, help="humans a timed run (seeds SEED ..; default 4)")
    _add_generator_arguments(bench)
    bench.add_argument("--seed", type=_SEED, default=0, help="seed of the first human (default 0)")
    bench.add_argument("--batch-size", type=_COUNT, default=4, help="latents meshed together, as in sample (default 4)")
    bench.add_argument("--resolution", type=_MESH_RESOLUTION, default=256,
                       help=f"marching-cubes cells per axis, at least {MIN_MESH_RESOLUTION} (default 256)")
    _add_compute_dtype_argument(bench)
    bench.add_argument("--repeat", type=_COUNT, default=3, help="timed runs, after one untimed; the median is reported "
                       "(default 3)")
    bench.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    bench.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    bench.set_defaults(handler=_bench)
    interpolate = commands.add_parser("interpolate", help="meshes along the path between two seeds' latents")
    interpolate.add_argument("--from", type=_SEED, required=True, dest="start", help="seed of the first human")
    interpolate.add_argument("--to", type=_SEED, required=True, dest="end", help="seed of the last human")
    interpolate.add_argument("--steps", type=_TWO_OR_MORE, default=8,
                             help="humans on the path, both ends included (default 8)")
    interpolate.add_argument("--moving", choices=["both", "shape", "texture"], default="both",
                             help="which latent walks; the other stays at --from's (default both)")
    interpolate.add_argument("--space", choices=["z", "w"], default="z",
                             help="walk the latents z on their great circle, or the mapping networks' outputs w "
                                  "on a straight line (default z)")
    retexture = commands.add_parser("retexture", help="one seed's shape with the textures of other seeds")
    retexture.add_argument("--shape", type=_SEED, required=True, help="seed whose shape is kept")
    retexture.add_argument("--textures", type=_SEED, nargs="+", required=True, help="seeds whose textures are applied")
    for command in (interpolate, retexture):
        command.add_argument("--out", required=True, help="directory of the meshes and previews")
        _add_generator_arguments(command)
        _add_mesh_arguments(command, "with --preview: one PNG of all the previews in a row")
        command.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
        command.add_argument("--quiet", action="store_true", help="no progress bar")
        command.set_defaults(handler=_edit)
    invert = commands.add_parser("invert", help="find latents whose front view matches an image")
    invert.add_argument("--image", required=True, help="image file (PNG, JPEG, ...) of a human seen from the front")
    invert.add_argument("--mask", help="its foreground mask file (default: what differs from the corner pixel)")
    invert.add_argument("--frame", action="store_true", help="a picture of any shape on a uniform background: matte "
                        "the background (the border's colour where it reaches the border) and frame the figure as the "
                        "prior stage frames generated ones (centred, 0.9 of the side tall); the mask is the matte")
    invert.add_argument("--matte-tolerance", type=_MATTE_TOLERANCE, default=0.06,
                        help="with --frame: of the background colour (default 0.06)")
    invert.add_argument("--out", required=True, help="directory of latents.safetensors, losses.json, the mesh and view")
    _add_generator_arguments(invert)
    invert.add_argument("--steps", type=_COUNT, default=200, help="optimiser steps (default 200)")
    invert.add_argument("--learning-rate", type=_number(float, 0, low_open=True), default=0.05,
                        help="Adam step size on the latents (default 0.05)")
    invert.add_argument("--seed", type=_SEED, default=0, help="seed of the starting latents (default 0)")
    invert.add_argument("--side", type=_TWO_OR_MORE,
                        help="pixels per side the image is resized to (default: the backbone's)")
    _add_mesh_arguments(invert, None, with_model_dtype=False)  # its latents are optimised in float32
    invert.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    invert.add_argument("--quiet", action="store_true", help="no progress bar")
    invert.set_defaults(handler=_invert)
    export = commands.add_parser("export", help="write a trained generator (or refiner, or 2-D image generator) "
                                 "as one file for Generator.from_pretrained (Refiner.from_pretrained, "
                                 "ImageGenerator.load)")
    exported = export.add_mutually_exclusive_group(required=True)
    exported.add_argument("--generator", help="stage-3 run directory or checkpoint (its moving average)")
    exported.add_argument("--refiner", help="stage-4 run directory or checkpoint")
    exported.add_argument("--checkpoint", help=CHECKPOINT_HELP + " (the official model, converted once)")
    exported.add_argument("--image-generator", metavar="FILE", help="a 2-D generator's network pickle (e.g. "
                          "StyleGAN-Human's, read as data) for `train prior --image-generator` without the pickle")
    export.add_argument("--preset", choices=["tiny", "small", "official"], default="small")
    export.add_argument("--out", required=True, help="the .safetensors file to write")
    export.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32",
                        help="storage type of the weights (float16 halves the file; they load as float32)")
    export.set_defaults(handler=_export)
    args = parser.parse_args(argv)
    if getattr(args, "device", None) is not None:
        _check_device(args)
    # Output directories are made as needed; so are the folders of output files.
    output_files = [args.out] if args.command in FILE_OUTPUTS else []
    for path in [*output_files, getattr(args, "grid", None)]:
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return args.handler(args)


def _check_device(args: argparse.Namespace) -> None:
    """Refuses a --device this machine cannot run before anything loads (torch's own error
    comes mid-run, as a traceback)."""
    import torch

    name = " ".join(filter(None, (args.command, getattr(args, "stage", None))))
    try:
        device = torch.device(args.device)
    except RuntimeError as error:
        raise SystemExit(f"get3dhuman {name}: --device must be a torch device such as cpu, cuda or cuda:1, "
                         f"got {args.device!r}") from error
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise SystemExit(f"get3dhuman {name}: --device {args.device}: no CUDA device is usable here "
                             "(torch.cuda.is_available() is False); use --device cpu")
        if device.index is not None and device.index >= count:
            raise SystemExit(f"get3dhuman {name}: --device {args.device}: this machine has {count} CUDA device(s), "
                             f"cuda:0 to cuda:{count - 1}")
    elif device.type != "cpu":
        raise SystemExit(f"get3dhuman {name}: --device must be cpu or cuda[:N], got {args.device!r}")


if __name__ == "__main__":  # `python -m get3dhuman.cli`, as torchrun starts each rank
    from get3dhuman.train import distributed

    distributed.exit_process(main())
