"""Datasets of generated humans: `get3dhuman sample --num N --out DIR` (DESIGN.md section 7).

Sample i of a call with `seed` is the latent pair of seed + i (`Generator.latents`), so a seed
names one human, and its mesh is the same bits, whatever the batch size, the number of
processes or how often the run was interrupted (Generator.extract_mesh works row by row), for a
given number of threads a process (some CPUs' BLAS and oneDNN kernels round by it).
For each seed s, DIR receives:

- `human-s.glb` (or .ply/.obj): the textured mesh with vertex colours (none for an empty field),
- `human-s.png` with previews: the front view of the mesh, rasterized and shaded (with a
  refiner: its refined colours); with `preview_views` V > 1 also `human-s-AAA.png`, the
  mesh seen from AAA degrees about the vertical axis (360 / V apart; `refine.view_calibration`),
- one line of `manifest.jsonl`: {"seed", "mesh", "preview", "vertices", "faces", "seconds"}
  ("mesh"/"preview" are file names or null; "seconds": the sample's share of its batch's time),
  with V > 1 also "views": {"angles": [...], "files": [...]}, the front first,
- with `preview_maps`, per view `human-s[-AAA]-MAP.png` for MAP in mask, depth (16-bit),
  normal (`encode_map`), listed in the manifest's "maps": {MAP: [files per view]}.

With previews, `cameras.json` holds the views' angles and cameras (world -> NDC [4, 4], the
same for every sample; CAMERA_CONVENTION says how NDC maps to pixels), so the depth maps
lift back to world points.

`settings.json` records how the samples were made (the weights' fingerprint, mesh and preview
resolution, views and maps, file type, truncation, refiner, meshing options) and the layout's
version, DATASET_FORMAT; a directory holding samples made otherwise is refused, so one dataset
never mixes models, settings or layouts (seeds and counts may change: a dataset can grow).

`GeneratedHumans(DIR)` reads a directory back (meshes, views, cameras, decoded maps and the
world points of the depth maps), a torch Dataset for training on the samples.

Resumable: every file is written under a temporary name and renamed, and the manifest line is
appended after its files, so a listed seed is complete; a later call skips the listed seeds and
drops a torn last line. Any number of processes may write one directory at once, on one
machine or several over a shared filesystem: each seed is claimed by one of them
(`get3dhuman.claims`, files in `.claims`, taken over from a killed process after
`stale_after` seconds), and its line appended under a file lock (`.manifest.lock`). Under
torchrun, process r takes the samples i with i % processes == r.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence

import numpy as np
import torch

from get3dhuman import distributed
from get3dhuman._checks import check_int, check_seed, check_truncation_psi
from get3dhuman.authors import VIEW_ANGLES, AuthorsColouring, check_authors_conventions, check_render_size
from get3dhuman.claims import STALE_AFTER, Claims, write_atomically
from get3dhuman.mesh import MeshingOptions, TexturedMesh
from get3dhuman.nn.pretrained import tensors_digest
from get3dhuman.nn.refiner import OfficialRefiner
from get3dhuman.nn.stylegan2 import NOISE_MODES
from get3dhuman.previews import (
    CAMERAS,
    check_preview_options,
    decode_map,
    lift_depth,
    save_png,
    write_cameras,
    write_previews,
)
from get3dhuman.refine import refine_meshes
from get3dhuman.run_settings import read_settings, record_settings

FILE_TYPES = ("glb", "ply", "obj")
MANIFEST = "manifest.jsonl"
CLAIMS = ".claims"  # the folder of the seeds' claims (get3dhuman.claims)
MANIFEST_LOCK = ".manifest.lock"  # held while a process appends to or repairs the manifest
SETTINGS = "settings.json"
# The version of the directory's layout, "format" in settings.json: raised whenever a file changes
# meaning, so that neither write_samples nor GeneratedHumans takes a layout it does not know.
DATASET_FORMAT = 1
# Settings added after the first datasets were written, with the value those datasets had.
INTRODUCED = {"preview_views": 1, "preview_maps": [], "format": 1}
MAX_SEED_RANGE = 10_000_000  # seeds a --seeds range may name (each is held in memory)












class GeneratedHumans(torch.utils.data.Dataset):
    """The samples of a `write_samples` directory read back, one item per listed seed in seed
    order, for training on them (a torch Dataset; meshes differ in size, so batch items that
    hold them with `batch_size=None` or a collate function of your own; without meshes torch's
    default collation stacks the views).

    Item i is a dict: "seed"; with `meshes`, "mesh", the TexturedMesh of the file
    (`TexturedMesh.load`), or an empty one for an empty field; and where the directory has
    previews, per view V (the front first): "angles" [V] degrees, "cameras" [V, 4, 4] (world ->
    NDC, cameras.json), "images" [V, R, R, 3] in [0, 1], and for each map it holds (`decode_map`)
    "mask" [V, R, R] bool, "depth" [V, R, R] NDC z and "normal" [V, R, R, 3], NaN off the mesh,
    with the depth also lifted to world "points" [V, R, R, 3] (`lift_depth`).

    Args:
        out_dir: the directory of `write_samples` (`get3dhuman sample --out`).
        meshes: load the mesh files (False: the previews and maps alone, much faster).
    """

    def __init__(self, out_dir: str | os.PathLike, meshes: bool = True):
        self.out_dir = os.fspath(out_dir)
        if not os.path.isfile(os.path.join(self.out_dir, MANIFEST)):
            raise FileNotFoundError(f"out_dir must be a directory of `get3dhuman sample` (with {MANIFEST}), "
                                    f"got {self.out_dir!r}")
        settings = os.path.join(self.out_dir, SETTINGS)
        if os.path.isfile(settings):
            layout = read_settings(settings, INTRODUCED)["format"]
            if not isinstance(layout, int) or not 1 <= layout <= DATASET_FORMAT:
                raise ValueError(f"{self.out_dir} holds a dataset of format {layout!r}; this version of get3dhuman "
                                 f"reads formats 1 to {DATASET_FORMAT} (a newer version wrote it?)")
        self.records = sorted(read_manifest(self.out_dir), key=lambda record: record["seed"])
        self.meshes = meshes
        cameras = os.path.join(self.out_dir, CAMERAS)
        self.cameras = None
        if os.path.isfile(cameras):
            with open(cameras) as handle:
                self.cameras = json.load(handle)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        from PIL import Image

        record = self.records[index]
        item = {"seed": record["seed"]}
        if self.meshes:
            if record["mesh"] is None:
                empty = torch.zeros(0, 3)
                item["mesh"] = TexturedMesh(empty, torch.zeros(0, 3, dtype=torch.int64), empty, empty)
            else:
                item["mesh"] = TexturedMesh.load(os.path.join(self.out_dir, record["mesh"]))
        if record.get("preview") is None:
            return item
        if self.cameras is None:
            raise FileNotFoundError(f"{self.out_dir} lists previews but has no {CAMERAS}")
        files = record["views"]["files"] if "views" in record else [record["preview"]]
        item["angles"] = torch.tensor(self.cameras["angles"][: len(files)])
        item["cameras"] = torch.tensor(self.cameras["calibrations"][: len(files)])
        item["images"] = torch.stack([torch.from_numpy(np.array(Image.open(os.path.join(self.out_dir, file))
                                                                  .convert("RGB"))) for file in files]).float() / 255
        for kind, map_files in record.get("maps", {}).items():
            item[kind] = torch.stack([decode_map(np.array(Image.open(os.path.join(self.out_dir, file))), kind)
                                      for file in map_files])
        if "depth" in item:
            item["points"] = lift_depth(item["depth"], item["cameras"])
        return item


def parse_seeds(text: str) -> list[int]:
    """The seeds `text` names (`sample --seeds`): a seed, a range A-B (both included, A <= B, at
    most MAX_SEED_RANGE seeds) or a file of such items, one a line (blank lines and # comments
    skipped). ValueError saying what is expected otherwise."""
    if os.path.isfile(text):
        with open(text) as handle:
            lines = [line.split("#")[0].strip() for line in handle]
        return [value for line in lines if line for value in parse_seeds(line)]
    first, dash, last = text.partition("-")
    try:
        low, high = int(first), int(last if dash else first)
    except ValueError:
        raise ValueError(f"must be seeds (3), ranges (40-59) or files of them, got {text!r}") from None
    if not 0 <= low <= high < 2**64 or high - low >= MAX_SEED_RANGE:
        raise ValueError(f"must be seeds or ranges A-B with 0 <= A <= B < 2^64, at most {MAX_SEED_RANGE:,} seeds a "
                         f"range, got {text!r}")
    return list(range(low, high + 1))


def read_manifest(out_dir: str) -> list[dict]:
    """The records of `out_dir`/manifest.jsonl in file order ([] without one); a torn last line
    (an interrupted write) is left out."""
    path = os.path.join(out_dir, MANIFEST)
    if not os.path.exists(path):
        return []
    records = []
    with open(path) as handle:
        for line in handle:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                if line.endswith("\n"):  # a complete line that is not json: not our file
                    raise ValueError(f"{path} holds a line that is not a manifest record: {line[:80]!r}") from None
    return records


def fingerprint(module: torch.nn.Module) -> str:
    """16 hex digits of the SHA-256 of a module's state (names, shapes, dtypes and values)."""
    return tensors_digest(module.state_dict())[:16]


def _rewrite_manifest(out_dir: str, records: list[dict]) -> None:
    write_atomically(os.path.join(out_dir, MANIFEST), "".join(json.dumps(record) + "\n" for record in records))


def _remove_stale_partials(out_dir: str, stale_after: float) -> None:
    """Removes the temporary files (`.partial-*`, `*.tmp`) that killed writers left in
    `out_dir`: those untouched for `stale_after` seconds (a live writer's are newer)."""
    now = time.time()
    for name in os.listdir(out_dir):
        path = os.path.join(out_dir, name)
        if not (name.startswith(".partial-") or name.endswith(".tmp")):
            continue
        try:
            if now - os.stat(path).st_mtime >= stale_after:
                os.unlink(path)
        except FileNotFoundError:  # renamed into place or removed by another process meanwhile
            pass


def _claim_batch(claims: Claims, candidates, batch_size: int, out_dir: str, lock) -> list[int]:
    """Up to `batch_size` seeds of the iterator `candidates` that this process claims. A claim
    taken over from a killed process whose seed is already listed (it died between listing
    and marking it done) is marked done instead of redone."""
    batch = []
    for seed in candidates:
        taken = claims.take(seed)
        if taken == "stale":
            with lock:
                if any(record["seed"] == seed for record in read_manifest(out_dir)):
                    claims.finish(seed)
                    continue
        if taken:
            batch.append(seed)
            if len(batch) == batch_size:
                break
    return batch


def _append_record(out_dir: str, record: dict) -> None:
    line = (json.dumps(record) + "\n").encode()
    descriptor = os.open(os.path.join(out_dir, MANIFEST), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(descriptor, line)
    finally:
        os.close(descriptor)




def write_samples(generator, out_dir: str, num: int, seed: int = 0, *, batch_size: int = 4, resolution: int = 256,
                  file_type: str = "glb", preview_resolution: int | None = None, preview_views: int = 1,
                  preview_maps: Sequence[str] = (), truncation_psi: float = 1.0, refiner=None, progress: bool = True,
                  render_size: int | None = None, refined_views: bool = False, seeds: Sequence[int] | None = None,
                  stale_after: float = STALE_AFTER, written: list | None = None, meshing: MeshingOptions | None = None,
                  noise_mode: str = "const") -> list[dict]:
    """Writes samples seed .. seed + num - 1 of `generator` to `out_dir` (see the module
    docstring), or those of the distinct `seeds` when given (then `num` must be len(seeds)),
    and returns the manifest records of those seeds made by this process or found done, in
    their order (under torchrun: the ones this process saw; rank 0 sees all after the final
    barrier).

    resolution: marching-cubes cells per axis (Generator.extract_mesh, with `meshing` and
    `noise_mode`: 'random' draws each seed's noise after torch.manual_seed(seed));
    file_type: one of FILE_TYPES; preview_resolution: side of the preview PNGs (None: none);
    preview_views: previews per sample, evenly spaced about the vertical axis from the front
    (1 to 360); preview_maps: maps of MAPS written with every view (`encode_map`); refiner: a
    trained Refiner whose refined front and back views of the meshes replace their vertex
    colours (refine.refine_meshes; the previews show the meshes with those colours), or the
    authors' (an nn.OfficialRefiner, with a generator of their conventions): their colouring
    (authors.AuthorsColouring) with views `render_size` pixels square (None: `resolution`), and
    with `refined_views` each sample's refined views written as `human-s-refined-AAA.png`
    (listed in the manifest's "refined_views").

    Any number of processes may write one `out_dir` at once (on one machine, or several over a
    shared filesystem): each seed is claimed (claims.Claims, in `out_dir`/.claims) and written
    by one of them, and listed once. A claim of a killed process is taken over once not
    refreshed for `stale_after` seconds. `written`, when given, receives the seeds this process
    listed.
    """
    num = check_int(num, "num", 0)
    batch_size = check_int(batch_size, "batch_size", 1)
    resolution = check_int(resolution, "resolution", 1)
    seed = check_seed(seed)
    if seeds is None:
        seeds = list(range(seed, seed + num))
    else:
        seeds = [check_seed(value) for value in seeds]
        if len(set(seeds)) != len(seeds) or len(seeds) != num:
            raise ValueError(f"seeds must be {num} distinct seeds (num), got {len(seeds)} with "
                             f"{len(seeds) - len(set(seeds))} repeated")
    truncation_psi = check_truncation_psi(truncation_psi)  # before it is recorded in the settings
    meshing = meshing if meshing is not None else MeshingOptions()
    if noise_mode not in NOISE_MODES:
        raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
    if file_type not in FILE_TYPES:
        raise ValueError(f"file_type must be one of {', '.join(FILE_TYPES)}, got {file_type!r}")
    preview_resolution, preview_views, preview_maps = check_preview_options(preview_resolution, preview_views,
                                                                            preview_maps)
    authors = isinstance(refiner, OfficialRefiner)
    if (refined_views or render_size is not None) and not authors:
        raise ValueError("refined_views and render_size need the authors' refiner (an nn.OfficialRefiner)")
    if authors:  # checked before the settings are recorded
        check_render_size(render_size or resolution)
        check_authors_conventions(generator)
    colouring = AuthorsColouring(refiner, render_size, keep_views=refined_views) if authors else None
    rank, size = distributed.world()
    os.makedirs(out_dir, exist_ok=True)
    settings = {"format": DATASET_FORMAT, "generator": fingerprint(generator),
                "refiner": None if refiner is None else fingerprint(refiner), "resolution": resolution,
                "file_type": file_type, "preview_resolution": preview_resolution,
                "truncation_psi": truncation_psi,
                "extract_options": {**meshing.settings(next(generator.parameters()).dtype),
                                    **({"noise_mode": noise_mode} if noise_mode != "const" else {})},
                # How the colours and previews were made: datasets made another way (views of the
                # field, shading baked in) are refused rather than mixed.
                "refined_colors": None if refiner is None else (
                    f"the authors' two views, {render_size or resolution} px" if authors else "mesh views, shading removed"),
                "previews": None if preview_resolution is None else "rasterized mesh",
                "preview_views": preview_views, "preview_maps": preview_maps}
    record_settings(os.path.join(out_dir, SETTINGS), settings, may_change=(), write=rank == 0,
                    introduced=INTRODUCED)
    from filelock import FileLock

    lock = FileLock(os.path.join(out_dir, MANIFEST_LOCK))
    claims = Claims(os.path.join(out_dir, CLAIMS), stale_after)
    if rank == 0:
        with lock:  # drops a torn last line (a process killed while appending)
            _rewrite_manifest(out_dir, read_manifest(out_dir))
        _remove_stale_partials(out_dir, stale_after)
        if preview_resolution is not None:
            write_cameras(out_dir, generator, preview_views, preview_resolution)
    distributed.barrier()
    done = {record["seed"]: record for record in read_manifest(out_dir)}
    mine = [value for i, value in enumerate(seeds) if i % size == rank and value not in done]
    bar = None
    if progress and rank == 0:
        from tqdm import tqdm

        bar = tqdm(total=len(mine), desc="samples", unit="human")
    candidates = iter(mine)
    while batch := _claim_batch(claims, candidates, batch_size, out_dir, lock):
        start = time.perf_counter()
        z_shape, z_texture = generator.latents(batch)
        noise_seeds = {"noise_seeds": batch} if noise_mode == "random" else {}
        meshes = generator.extract_mesh(z_shape, z_texture, resolution, truncation_psi=truncation_psi, **noise_seeds,
                                        recolor=colouring, meshing=meshing, noise_mode=noise_mode)
        for sample_seed in batch:  # still being worked on: not stale
            claims.refresh(sample_seed)
        if refiner is not None and not authors:
            meshes = refine_meshes(generator, refiner, meshes)
        names = [f"human-{sample_seed}" for sample_seed in batch]
        if refined_views:
            previews_of_views = _write_refined_views(out_dir, names, colouring.views)
            colouring.views.clear()
        previews = [{}] * len(batch) if preview_resolution is None else write_previews(
            generator, out_dir, names, meshes, preview_resolution, preview_views, preview_maps)
        seconds = (time.perf_counter() - start) / len(batch)
        for sample_seed, name, mesh, preview in zip(batch, names, meshes, previews):
            record = {"seed": sample_seed, "mesh": None if mesh.is_empty else f"{name}.{file_type}", "preview": None,
                      "vertices": int(mesh.vertices.shape[0]), "faces": int(mesh.faces.shape[0]),
                      "seconds": round(seconds, 4)}
            record.update(preview)
            if refined_views:
                record["refined_views"] = previews_of_views[name]
            if record["mesh"] is not None:  # the same bytes whoever writes it: a seed names its mesh
                mesh.export(os.path.join(out_dir, record["mesh"]), file_type)
            with lock:  # listed once: by the process that still holds the seed's claim
                if claims.holds(sample_seed):
                    _append_record(out_dir, record)
                    claims.finish(sample_seed)
                    if written is not None:
                        written.append(sample_seed)
            done[sample_seed] = record
        if bar is not None:
            bar.update(len(batch))
    if bar is not None:
        bar.close()
    distributed.barrier()
    if rank == 0:
        done.update({record["seed"]: record for record in read_manifest(out_dir)})
    return [done[value] for value in seeds if value in done]


def _write_refined_views(out_dir: str, names: Sequence[str], views: Sequence) -> dict[str, list[str]]:
    """Writes the refined views of `authors.AuthorsColouring` (one (decoded, refined) pair of
    [2, 3, R, R] per name) as `NAME-refined-AAA.png`; returns per name its files, VIEW_ANGLES order."""
    files = {}
    for name, (_, refined) in zip(names, views):
        files[name] = [f"{name}-refined-{int(angle):03d}.png" for angle in VIEW_ANGLES]
        for file, image in zip(files[name], refined):
            save_png(image.permute(1, 2, 0), os.path.join(out_dir, file))
    return files










