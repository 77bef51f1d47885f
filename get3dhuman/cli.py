"""The `get3dhuman` command line (`get3dhuman COMMAND --help`: a command's flags; docs/: details).

  info          what was built and what this machine can run
  synthetic     a PNG grid of humans of the synthetic world
  images        the images a prior cache would hold (a 2-D generator's, or the stand-in's)
  train STAGE   reconstructor, prior, generator, refiner or all; resumable, data-parallel
                under `torchrun --nproc-per-node N -m get3dhuman.cli train ...`
  export        a trained generator, refiner or 2-D generator (or the authors' checkpoint) as one file
  sample        a dataset of textured meshes, previews and a manifest; resumable, any number of
                processes on one --out
  verify        a dataset checked against its manifest and settings; --repair redoes what is bad
  bench         seconds a human, by stage
  interpolate   meshes between two seeds
  retexture     one seed's shape with other seeds' textures
  invert        latents whose front view matches an image
  eval          COV, MMD, 1-NNA and colour error against held-out synthetic humans

Generators: the package's weights, --weights FILE (of export), --generator RUN or --checkpoint
get3dhuman.pth (the authors'); with their --refiner, coloured as their inference.py colours.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from get3dhuman._checks import check_device
from get3dhuman.cli_arguments import build_parser

FILE_OUTPUTS = ("synthetic", "images", "export")  # commands whose --out is a file, not a directory


def _fail(args: argparse.Namespace, error: Exception | str) -> SystemExit:
    """SystemExit with the one-line message of `error`, prefixed by the command."""
    name = " ".join(filter(None, ("get3dhuman", args.command, getattr(args, "stage", None))))
    return SystemExit(f"{name}: {error}")


def _info(args: argparse.Namespace) -> int:
    from get3dhuman.info import build_info, describe

    info = build_info()
    print(json.dumps(info, indent=2) if args.json else describe(info))
    return 0


def _synthetic(args: argparse.Namespace) -> int:
    from get3dhuman.synthetic.preview import sample_grid

    try:
        sample_grid(args.out, args.num, args.seed, args.resolution)
    except (OSError, ValueError) as error:
        raise _fail(args, error) from error
    print(f"wrote {args.num} synthetic humans to {args.out}")
    return 0


def _images(args: argparse.Namespace) -> int:
    from get3dhuman.render import save_grid
    from get3dhuman.train.prior import cache_images

    try:
        images = cache_images(args.preset, args.num, args.seed, args.device, args.image_generator, args.truncation_psi,
                              args.matte_tolerance, None if args.figure_height == 0 else args.figure_height)
    except (OSError, ValueError) as error:
        raise _fail(args, error) from error
    save_grid(images.float() / 255, args.out, args.columns)
    print(f"wrote the first {args.num} images of a prior cache of seed {args.seed} to {args.out}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from get3dhuman.train import runs

    options = {name: getattr(args, name) for name in ("reconstructor", "prior", "generator", "steps", "seed", "workers",
                                                       "scans", "image_generator")}
    common = {"config_file": args.config, "device": args.device, "progress": not args.quiet}
    try:
        if args.stage == "all":
            runs.train_all(args.preset, args.out, **common, **options)
        else:
            runs.train_stage(args.stage, args.preset, args.out, **common, **options)
    except (OSError, ValueError) as error:
        raise _fail(args, error) from error
    return 0


def _eval(args: argparse.Namespace) -> int:
    from get3dhuman.evaluate import EvaluationConfig
    from get3dhuman.train.runs import evaluate_models

    config = EvaluationConfig(**{k: getattr(args, k) for k in ("samples", "references", "points", "resolution", "seed")})
    try:
        rows = evaluate_models(config, args.preset, args.device, generator=args.generator, refiner=args.refiner,
                               reconstructor=args.reconstructor, baseline=not args.no_baseline, world=not args.no_world)
    except (FileNotFoundError, ValueError) as error:  # e.g. a --generator path without a checkpoint
        raise _fail(args, error) from error
    print(json.dumps(rows, indent=2))
    return 0


def _load_models(args: argparse.Namespace, device) -> tuple:
    """The generator of --weights, --generator or --checkpoint (in --dtype), and the refiner of
    --refiner where the command has it; refuses --grid, --views, --elevation or --maps without --preview."""
    from get3dhuman.train.runs import resolve_generator, resolve_refiner

    if getattr(args, "preview", None) is None:
        if getattr(args, "grid", None) is not None:
            raise _fail(args, "--grid needs --preview RES (the grid is made of the previews)")
        if getattr(args, "views", 1) > 1 or getattr(args, "maps", None) or getattr(args, "elevation", 0):
            raise _fail(args, "--views, --elevation and --maps need --preview RES (they are previews)")
    try:
        generator = resolve_generator(args.weights, args.generator, args.checkpoint, args.preset, device)
        refiner = resolve_refiner(getattr(args, "refiner", None), args.preset, device)
    except (FileNotFoundError, ValueError) as error:
        raise _fail(args, error) from error
    return generator.to(_dtype(getattr(args, "dtype", "float32"))), refiner


def _sample(args: argparse.Namespace) -> int:
    from get3dhuman import distributed
    from get3dhuman.dataset import write_samples
    from get3dhuman.previews import save_preview_grid

    generator, refiner = _load_models(args, distributed.initialize(args.device))
    seeds = None if args.seeds is None else [value for item in args.seeds for value in item]
    written = []
    try:
        records = write_samples(generator, args.out, args.num if seeds is None else len(seeds), args.seed, seeds=seeds,
                                batch_size=args.batch_size, stale_after=args.stale_after, written=written,
                                resolution=args.resolution, file_type=args.format, preview_resolution=args.preview,
                                preview_views=args.views, preview_maps=args.maps, truncation_psi=args.truncation,
                                refiner=refiner, progress=not args.quiet, render_size=args.render_size,
                                refined_views=args.refined_views, meshing=_meshing(args), noise_mode=args.noise,
                                ground=args.ground, up=args.up, preview_elevation=args.elevation)
    except (FileNotFoundError, ValueError) as error:
        raise _fail(args, error) from error
    except KeyboardInterrupt:
        print(f"get3dhuman sample: interrupted after {len(written)} samples; run the same command to resume",
              file=sys.stderr)
        return 130
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


def _verify(args: argparse.Namespace) -> int:
    from get3dhuman import verify

    try:
        problems = verify.verify(args.directory)
        for problem in problems:
            print(f"{os.path.join(args.directory, problem.file)}: {problem.problem}")
        if problems and args.repair:
            generator, refiner = _load_models(args, args.device)
            verify.repair(generator, args.directory, refiner, progress=not args.quiet)
            problems = verify.verify(args.directory)
            print(f"repaired; {len(problems)} problems left" if problems else "repaired")
    except (FileNotFoundError, ValueError) as error:
        raise _fail(args, error) from error
    if not problems:
        print(f"{args.directory}: every listed file is there with its recorded bytes; nothing unlisted")
    return 1 if problems else 0


def _bench(args: argparse.Namespace) -> int:
    import torch

    from get3dhuman.benchmark import measure_sampling
    from get3dhuman.info import build_info

    generator, _ = _load_models(args, args.device)
    try:
        result = measure_sampling(generator, args.num, args.resolution, batch_size=args.batch_size, seed=args.seed,
                                  repeat=args.repeat, meshing=_meshing(args))
    except ValueError as error:
        raise _fail(args, error) from error
    backend = build_info()["query_backends"]["chosen"][torch.device(result.device).type]["inference"]
    print(json.dumps({**result.to_dict(), "query_backend": backend}) if args.json
          else f"{result.summary()}\n  query backend: {backend}")
    return 0


def _edit(args: argparse.Namespace) -> int:
    """`interpolate` and `retexture`: meshes (and previews) of latents named by seeds."""
    from get3dhuman import applications

    generator, _ = _load_models(args, args.device)
    options = {"resolution": args.resolution, "truncation_psi": args.truncation, "progress": not args.quiet,
               "meshing": _meshing(args)}
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
                                             args.views, args.maps, ground=args.ground, up=args.up,
                                             preview_elevation=args.elevation)
    except ValueError as error:
        raise _fail(args, error) from error
    print(f"{len(written)} files in {args.out}" + (f" and {args.grid}" if args.grid else ""))
    return 0


def _invert(args: argparse.Namespace) -> int:
    """Latents of an image (applications.invert), then their mesh, front view and loss curve."""
    from get3dhuman import applications

    generator, _ = _load_models(args, args.device)
    side = args.side or generator.config.backbone_resolution
    try:
        image, mask = applications.inversion_target(args.image, side, args.mask, args.frame, args.matte_tolerance)
        result = applications.invert(generator, image, mask, steps=args.steps, learning_rate=args.learning_rate,
                                     seed=args.seed, progress=not args.quiet)
    except ValueError as error:
        raise _fail(args, error) from error
    applications.write_inversion(generator, result, args.out, args.resolution, args.format, side,
                                 ground=args.ground, up=args.up, meshing=_meshing(args))
    print(f"loss {result.losses[0]:.4f} -> {min(result.losses):.4f}; latents, mesh and front view in {args.out}")
    return 0


def _export(args: argparse.Namespace) -> int:
    import torch

    from get3dhuman.nn import Generator, ImageGenerator
    from get3dhuman.train import REFINER_PRESETS, load_generator, load_reconstructor, load_refiner

    try:
        if args.generator is not None:
            model = load_generator(args.generator, args.preset)
        elif args.reconstructor is not None:
            model = load_reconstructor(args.reconstructor, args.preset)
        elif args.image_generator is not None:
            model = ImageGenerator.load(args.image_generator)
        elif args.checkpoint is not None:
            model = Generator.from_official_checkpoint(args.checkpoint)
        else:
            model = load_refiner(args.refiner, REFINER_PRESETS[args.preset])
    except (FileNotFoundError, ValueError) as error:
        raise _fail(args, error) from error
    model.save_pretrained(args.out, getattr(torch, args.dtype))
    print(args.out)
    return 0


def _dtype(name: str):
    import torch

    return getattr(torch, name)


def _meshing(args: argparse.Namespace):
    """The MeshingOptions of --compute-dtype, --faces and --texture-size (0: none)."""
    from get3dhuman.mesh import MeshingOptions

    texture_size = getattr(args, "texture_size", 0) or None
    if texture_size is not None and args.format not in ("glb", "obj"):
        raise _fail(args, f"--texture-size needs --format glb or obj (a {args.format} file holds vertex colours only)")
    return MeshingOptions(compute_dtype=None if args.compute_dtype is None else _dtype(args.compute_dtype),
                          faces=getattr(args, "faces", None), texture_size=texture_size)


HANDLERS = {"info": _info, "synthetic": _synthetic, "images": _images, "train": _train, "eval": _eval,
            "sample": _sample, "verify": _verify, "bench": _bench, "interpolate": _edit, "retexture": _edit,
            "invert": _invert, "export": _export}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `get3dhuman` console script; returns the exit status."""
    args = build_parser(__doc__).parse_args(argv)
    if getattr(args, "device", None) is not None:
        try:
            check_device(args.device)
        except ValueError as error:
            raise _fail(args, error) from error
    # Output directories are made as needed; so are the folders of output files.
    output_files = [args.out] if args.command in FILE_OUTPUTS else []
    for path in [*output_files, getattr(args, "grid", None)]:
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
        return HANDLERS[args.command](args)
    except OSError as error:  # one line: the path and the cause
        paths = " -> ".join(str(path) for path in (error.filename, error.filename2) if path is not None)
        raise _fail(args, f"{paths}: {error.strerror}" if paths and error.strerror else error) from error
    except KeyboardInterrupt:
        print(f"get3dhuman {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # `python -m get3dhuman.cli`, as torchrun starts each rank
    from get3dhuman import distributed

    distributed.exit_process(main())
