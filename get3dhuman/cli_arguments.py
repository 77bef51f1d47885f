"""The flags of every `get3dhuman` command (get3dhuman.cli runs them): their types, ranges and
defaults, refused by name while parsing."""

from __future__ import annotations

import argparse
import math

from get3dhuman import __version__
from get3dhuman.claims import STALE_AFTER
from get3dhuman.dataset import parse_seeds
from get3dhuman.mesh import MIN_FACES, check_texture_size
from get3dhuman.train.runs import PACKAGED
from get3dhuman.train.settings import STAGES


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


def _seeds_item(text: str) -> list[int]:
    """An argparse `type` for --seeds (`dataset.parse_seeds`)."""
    try:
        return parse_seeds(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _texture_size(text: str) -> int:
    """An argparse `type` for --texture-size: 0 or a power of two in mesh.TEXTURE_SIZES."""
    value = _number(int, 0)(text)
    if value:
        try:
            check_texture_size(value)
        except ValueError as error:
            raise argparse.ArgumentTypeError(f"must be 0 or {str(error).removeprefix('texture_size must be ')}") \
                from None
    return value


_MATTE_TOLERANCE = _number(float, 0, 1, high_open=True)


CHECKPOINT_HELP = ("the authors' released checkpoint (e.g. get3dhuman.pth: a state dict, read with "
                   "torch.load(weights_only=True); or .safetensors)")


def _add_generator_arguments(parser: argparse.ArgumentParser, preset_help: str = "of --generator") -> None:
    parser.add_argument("--weights", help="file of `get3dhuman export` (default: the package's weights)")
    parser.add_argument("--generator", help="stage-3 run directory or checkpoint instead of --weights")
    parser.add_argument("--checkpoint", help=CHECKPOINT_HELP + " instead of --weights")
    parser.add_argument("--preset", choices=["tiny", "small", "official"], default="small", help=preset_help)


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


def _add_mesh_arguments(parser: argparse.ArgumentParser, grid_help: str | None, with_model_dtype: bool = True) -> None:
    """--resolution, --compute-dtype (and --dtype: `_add_compute_dtype_argument`), --format, and
    unless grid_help is None --preview, --grid, --views, --elevation, --maps and --truncation."""
    parser.add_argument("--resolution", type=_MESH_RESOLUTION, default=256,
                        help=f"marching-cubes cells per axis, at least {MIN_MESH_RESOLUTION} (default 256)")
    _add_compute_dtype_argument(parser, with_model_dtype)
    parser.add_argument("--format", choices=["glb", "ply", "obj"], default="glb", help="mesh files (default glb)")
    parser.add_argument("--faces", type=_number(int, MIN_FACES), metavar="N",
                        help="decimate each mesh to at most N faces (quadric error; closed meshes stay closed)")
    parser.add_argument("--ground", action="store_true",
                        help="mesh files with the feet at y = 0 (z = 0 with --up z), centred in the other two axes")
    parser.add_argument("--up", choices=["y", "z"], default="y",
                        help="the up axis of the mesh files: y (glTF, the default) or z (Blender, Unreal)")
    parser.add_argument("--texture-size", type=_texture_size, default=0, metavar="N",
                        help="bake an N x N texture on a UV atlas (a power of two from 64 to 8192; glb or obj); "
                        "0: vertex colours only (default)")
    if grid_help is not None:
        parser.add_argument("--preview", type=_TWO_OR_MORE, metavar="RES",
                            help="also write RES x RES front views (PNG)")
        parser.add_argument("--grid", help=grid_help)
        parser.add_argument("--views", type=_number(int, 1, 360), default=1, metavar="V",
                            help="with --preview: V previews per mesh, 360/V degrees apart about the vertical axis, "
                            "the front first (default 1)")
        parser.add_argument("--elevation", type=_number(float, -90, 90), default=0.0, metavar="DEG",
                            help="with --preview: the preview cameras raised by DEG degrees, looking down "
                            "(negative: from below; default 0, level)")
        parser.add_argument("--maps", nargs="+", choices=["mask", "depth", "normal"], default=[],
                            help="with --preview: also these maps of every view (mask; depth as 16-bit PNG, "
                            "(z + 1) / 2 of the NDC depth; camera-space normals as RGB)")
        parser.add_argument("--truncation", type=_number(float), default=1.0,
                            help="truncation psi (default 1: none; 0: the mean human)")


def _add(parser: argparse.ArgumentParser, *names: str, **options) -> None:
    """Adds the shared flags `names` (of SHARED) to `parser`; `options` replace their settings."""
    for name in names:
        flags, settings = SHARED[name]
        parser.add_argument(*flags, **{**settings, **options})


PRESET = {"choices": ["tiny", "small", "official"], "default": "small"}
SHARED = {
    "device": (["--device"], {"default": "cpu", "help": "torch device, e.g. cpu or cuda"}),
    "quiet": (["--quiet"], {"action": "store_true", "help": "no progress bar"}),
    "preset": (["--preset"], PRESET),
    "seed": (["--seed"], {"type": _SEED, "default": 0, "help": "seed (default 0)"}),
    "out_png": (["--out"], {"required": True, "help": "PNG file to write"}),
    "matte": (["--matte-tolerance"], {"type": _MATTE_TOLERANCE, "default": 0.06,
                                      "help": "of the generator's background colour (default 0.06)"}),
    "resolution": (["--resolution"], {"type": _MESH_RESOLUTION, "default": 256, "help": "marching-cubes cells per "
                                      f"axis, at least {MIN_MESH_RESOLUTION} (default 256)"}),
}


def build_parser(description: str) -> argparse.ArgumentParser:
    """The `get3dhuman` argument parser, `description` atop its help; each command's name is
    `command` of the parsed arguments (and the training stage `stage`)."""
    from get3dhuman.evaluate import EvaluationConfig

    # Raw: the description's table of commands reads as written.
    parser = argparse.ArgumentParser(prog="get3dhuman", description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"get3dhuman {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    info = commands.add_parser("info", help="show what was built and what this machine can run")
    info.add_argument("--json", action="store_true", help="print machine-readable JSON")
    synthetic = commands.add_parser("synthetic", help="render a PNG grid of humans from the synthetic world")
    _add(synthetic, "out_png")
    synthetic.add_argument("--num", type=_COUNT, default=16, help="number of humans (default 16)")
    _add(synthetic, "seed", help="seed of the latents (default 0)")
    synthetic.add_argument("--resolution", type=_TWO_OR_MORE, default=256,
                           help="pixels per side of each render (default 256)")
    images = commands.add_parser("images", help="a PNG grid of the images a prior cache would hold: a 2-D "
                                 "generator's, matted and framed, or the synthetic stand-in's")
    _add(images, "out_png")
    images.add_argument("--image-generator", metavar="FILE", help="network pickle (e.g. StyleGAN-Human's) or file of "
                        "`export --image-generator`, as `train prior --image-generator` (default: the synthetic "
                        "stand-in)")
    _add(images, "preset", help="fixes z_dim and the image side (StyleGAN-Human: official)")
    images.add_argument("--num", type=_COUNT, default=16, help="number of images: the cache's first (default 16)")
    _add(images, "seed", help="the prior cache's seed (default 0)")
    images.add_argument("--truncation-psi", type=_number(float, 0, 1, low_open=True), default=1.0,
                        help="of the generator's styles (default 1)")
    _add(images, "matte")
    images.add_argument("--figure-height", type=_number(float, 0, 1), default=0.9,
                        help="the figures framed this tall, a fraction of the side, as scans are (default 0.9; "
                        "0: the generator's framing, padded square)")
    images.add_argument("--columns", type=_COUNT, default=4, help="images per row of the grid (default 4)")
    _add(images, "device")
    train = commands.add_parser("train", help="train a stage (resumes from the newest checkpoint in --out)")
    train.add_argument("stage", choices=[*STAGES, "all"],
                       help="the training stage: 1 reconstructor, 2 prior (cache), 3 generator, 4 refiner; "
                       "all: each in turn, in OUT/STAGE")
    _add(train, "preset")
    train.add_argument("--out", required=True, help="run directory (checkpoints, metrics.jsonl, config.json) or prior cache")
    train.add_argument("--reconstructor", help="stage-1 run directory or checkpoint, or a file of `export "
                       "--reconstructor` (prior, generator)")
    train.add_argument("--prior", help="prior cache directory of stage 2 (generator, refiner)")
    train.add_argument("--generator", help="stage-3 run directory or checkpoint, or a file of `export` such as the "
                       "package's get3dhuman/weights/generator-small.safetensors: the generator the refiner learns "
                       "on (refiner), or the one a new run starts from (generator; its discriminators start afresh)")
    train.add_argument("--config", help="JSON file of settings per stage over the preset's, e.g. "
                       '{"reconstructor": {"steps": 8000}, "generator": {"adversarial_weight": 0.1}} '
                       "(get3dhuman.train.settings; the fields of each stage's config class)")
    train.add_argument("--steps", type=_COUNT, help="total steps (default: the preset's or --config's)")
    _add(train, "seed", default=None, help="seed (default: the preset's)")
    _add(train, "device", help="torch device, e.g. cpu or cuda (under torchrun: each process its GPU LOCAL_RANK)")
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
    _add(train, "quiet")
    evaluate = commands.add_parser("eval", help="shape and colour metrics of a generator against held-out humans")
    evaluate.add_argument("--generator", nargs="?", const=PACKAGED, metavar="RUN_OR_FILE",
                          help="stage-3 run directory or checkpoint, or a file of `export`; alone: the package's "
                          "default weights (--preset small); omit for the baseline only")
    evaluate.add_argument("--refiner", nargs="?", const=PACKAGED, metavar="RUN_OR_FILE",
                          help="adds the 'refined' row: the generator's meshes coloured by this refiner's views (a "
                          "stage-4 run or checkpoint, or a file of `export --refiner`; alone: the package's refiner, "
                          "where it ships one)")
    _add(evaluate, "preset")
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
    _add(evaluate, "device")
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
    _add(sample, "seed", help="seed of the first sample (default 0)")
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
    _add(sample, "device", help="torch device (under torchrun: each process its GPU LOCAL_RANK)")
    _add(sample, "quiet")
    verify = commands.add_parser("verify", help="check a dataset of `sample` against its manifest and settings "
                                 "(exit status 1 when something is wrong); --repair writes the bad samples again")
    verify.add_argument("directory", help="the --out directory of `get3dhuman sample`")
    verify.add_argument("--repair", action="store_true", help="write the bad samples again with the generator and "
                        "--refiner that made them (the same bytes), and remove unlisted sample files")
    _add_generator_arguments(verify, "of --generator and --refiner")
    verify.add_argument("--refiner", nargs="?", const=PACKAGED, metavar="RUN_OR_FILE",
                        help="with --repair: the refiner the dataset was made with, as `sample --refiner`")
    verify.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                        help="with --repair: the generator's dtype the dataset was made with (default float32)")
    _add(verify, "device", "quiet")
    bench = commands.add_parser("bench", help="how fast this machine samples humans: seconds a human, by stage")
    bench.add_argument("--num", type=_COUNT, default=4, help="humans a timed run (seeds SEED ..; default 4)")
    _add_generator_arguments(bench)
    _add(bench, "seed", help="seed of the first human (default 0)")
    bench.add_argument("--batch-size", type=_COUNT, default=4, help="latents meshed together, as in sample (default 4)")
    _add(bench, "resolution")
    _add_compute_dtype_argument(bench)
    bench.add_argument("--repeat", type=_COUNT, default=3, help="timed runs, after one untimed; the median is reported "
                       "(default 3)")
    _add(bench, "device")
    bench.add_argument("--json", action="store_true", help="print the figures as one JSON object")
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
        _add(command, "device", "quiet")
    invert = commands.add_parser("invert", help="find latents whose front view matches an image")
    invert.add_argument("--image", required=True, help="image file (PNG, JPEG, ...) of a human seen from the front")
    invert.add_argument("--mask", help="its foreground mask file (default: what differs from the corner pixel)")
    invert.add_argument("--frame", action="store_true", help="a picture of any shape on a uniform background: matte "
                        "the background (the border's colour where it reaches the border) and frame the figure as the "
                        "prior stage frames generated ones (centred, 0.9 of the side tall); the mask is the matte")
    _add(invert, "matte", help="with --frame: of the background colour (default 0.06)")
    invert.add_argument("--out", required=True, help="directory of latents.safetensors, losses.json, the mesh and view")
    _add_generator_arguments(invert)
    invert.add_argument("--steps", type=_COUNT, default=200, help="optimiser steps (default 200)")
    invert.add_argument("--learning-rate", type=_number(float, 0, low_open=True), default=0.05,
                        help="Adam step size on the latents (default 0.05)")
    _add(invert, "seed", help="seed of the starting latents (default 0)")
    invert.add_argument("--side", type=_TWO_OR_MORE,
                        help="pixels per side the image is resized to (default: the backbone's)")
    _add_mesh_arguments(invert, None, with_model_dtype=False)  # its latents are optimised in float32
    _add(invert, "device", "quiet")
    export = commands.add_parser("export", help="write a trained generator (or refiner, reconstructor, or 2-D image "
                                 "generator) as one file for Generator.from_pretrained (Refiner.from_pretrained, "
                                 "Reconstructor.from_pretrained, ImageGenerator.load)")
    exported = export.add_mutually_exclusive_group(required=True)
    exported.add_argument("--generator", help="stage-3 run directory or checkpoint (its moving average)")
    exported.add_argument("--refiner", help="stage-4 run directory or checkpoint")
    exported.add_argument("--reconstructor", help="stage-1 run directory or checkpoint (for `train prior` and "
                          "`train generator --reconstructor FILE` without the run)")
    exported.add_argument("--checkpoint", help=CHECKPOINT_HELP + " (the official model, converted once)")
    exported.add_argument("--image-generator", metavar="FILE", help="a 2-D generator's network pickle (e.g. "
                          "StyleGAN-Human's, read as data) for `train prior --image-generator` without the pickle")
    _add(export, "preset")
    export.add_argument("--out", required=True, help="the .safetensors file to write")
    export.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32",
                        help="storage type of the weights (float16 halves the file; they load as float32)")
    return parser
