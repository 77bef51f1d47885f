"""Datasets of generated humans: `get3dhuman sample --num N --out DIR` (docs/datasets.md).

`write_samples` writes, for each seed s, `human-s.glb` (or .ply/.obj), its previews and maps
(get3dhuman.previews) and one line of `manifest.jsonl`; `settings.json` records how (the
weights' fingerprint, resolutions, views, meshing options, DATASET_FORMAT), and a directory
made otherwise is refused. A seed names one mesh, bit for bit, whatever the batch size or the
number of processes. Resumable: files are renamed into place and listed after they are
complete. Any number of processes may write one directory: each seed is claimed by one
(get3dhuman.claims, in `.claims`) and listed once, under a file lock. `GeneratedHumans(DIR)`
reads a directory back as a torch Dataset.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence

import numpy as np
import torch
from filelock import FileLock

from get3dhuman import distributed
from get3dhuman._checks import check_int, check_seed, check_truncation_psi
from get3dhuman.authors import VIEW_ANGLES, AuthorsColouring, check_authors_conventions, check_render_size
from get3dhuman.claims import STALE_AFTER, Claims, write_atomically
from get3dhuman.mesh import UP_AXES, MeshingOptions, TexturedMesh
from get3dhuman.nn.pretrained import tensors_digest
from get3dhuman.nn.refiner import OfficialRefiner
from get3dhuman.nn.stylegan2 import NOISE_MODES
from get3dhuman.ops.narrow_band import coarse_resolution_for
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
INTRODUCED = {"preview_views": 1, "preview_maps": [], "format": 1, "ground": False, "up": "y",
              "preview_elevation": 0.0}
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


def record_files(record: dict) -> list[str]:
    """The files a manifest record lists, each once: the mesh, the previews, the maps, the refined views."""
    files = [record[key] for key in ("mesh", "preview") if record.get(key)]
    files += record.get("views", {}).get("files", [])
    files += [file for kind_files in record.get("maps", {}).values() for file in kind_files]
    files += record.get("refined_views", [])
    files += record.get("material", [])
    return list(dict.fromkeys(files))


def file_sha256(path: str) -> str:
    """The hex SHA-256 of the bytes of the file at `path`."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def rewrite_manifest(out_dir: str, records: list[dict]) -> None:
    """Replaces `out_dir`'s manifest by `records` (atomically; hold the manifest's lock)."""
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




# Bytes a sample needs, from peak-memory measurements of the default weights on the CPU (one
# human meshed alone: 106 MB more at 512^3, 319 MB at 1024^3, about 300 bytes per R^2 cells of
# the surface, doubled for larger humans and other models), and from the tensors' sizes.
_BYTES_PER_SURFACE_CELL = 600  # meshing one human: narrow band levels, marching cubes, colours
_BYTES_PER_COARSE_POINT = 64  # the narrow band's first lattice, evaluated densely
_BYTES_PER_MESH_CELL = 70  # a finished mesh held until its batch is written (0.8 R^2 vertices)
_BYTES_PER_PREVIEW_PIXEL = 100  # rasterized maps and images of one view of one mesh


def memory_needed(resolution: int, batch_size: int = 4, preview_resolution: int | None = None,
                  preview_views: int = 1, meshing: MeshingOptions | None = None) -> dict[str, int]:
    """Estimated bytes that `write_samples` with these sizes holds at once, by part: 'meshing'
    (one human at `resolution`^3, with the narrow band's dense first lattice), 'meshes' (the
    batch's meshes) and 'previews' (the batch's views). Estimates, about twice what the default
    weights were measured to need, to refuse sizes that cannot fit (`check_memory`)."""
    coarse = (meshing or MeshingOptions()).coarse_resolution or coarse_resolution_for(resolution)
    needed = {"meshing": _BYTES_PER_SURFACE_CELL * resolution**2 + _BYTES_PER_COARSE_POINT * (coarse + 1) ** 3,
              "meshes": _BYTES_PER_MESH_CELL * resolution**2 * batch_size,
              "previews": 0 if preview_resolution is None else
              _BYTES_PER_PREVIEW_PIXEL * preview_resolution**2 * preview_views * batch_size}
    return needed


def available_memory(device: torch.device | str = "cpu") -> int | None:
    """Bytes free for new tensors on `device`: MemAvailable of /proc/meminfo for the CPU (None
    where there is none), the free memory of a CUDA device."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_memory(needed: dict[str, int], device: torch.device | str = "cpu") -> None:
    """ValueError with the estimate when the parts `needed` (`memory_needed`) exceed the memory
    available on `device`."""
    available, total = available_memory(device), sum(needed.values())
    if available is not None and total > available:
        parts = ", ".join(f"{name} {size / 2**30:.1f}" for name, size in needed.items() if size)
        raise ValueError(f"these sizes need about {total / 2**30:.1f} GiB ({parts}), more than the "
                         f"{available / 2**30:.1f} GiB available on {device}: lower the resolution, preview "
                         "resolution, views or batch size")


def write_samples(generator, out_dir: str, num: int, seed: int = 0, *, batch_size: int = 4, resolution: int = 256,
                  file_type: str = "glb", preview_resolution: int | None = None, preview_views: int = 1,
                  preview_maps: Sequence[str] = (), truncation_psi: float = 1.0, refiner=None, progress: bool = True,
                  render_size: int | None = None, refined_views: bool = False, seeds: Sequence[int] | None = None,
                  stale_after: float = STALE_AFTER, written: list | None = None, meshing: MeshingOptions | None = None,
                  noise_mode: str = "const", ground: bool = False, up: str = "y",
                  preview_elevation: float = 0.0) -> list[dict]:
    """Writes samples seed .. seed + num - 1 of `generator` to `out_dir` (see the module
    docstring), or those of the distinct `seeds` when given (then `num` must be len(seeds)),
    and returns the manifest records of those seeds made by this process or found done, in
    their order (under torchrun: the ones this process saw; rank 0 sees all after the final
    barrier).

    resolution: marching-cubes cells per axis (Generator.extract_mesh, with `meshing` and
    `noise_mode`: 'random' draws each seed's noise after torch.manual_seed(seed)); ground, up:
    where the mesh files put the human (`TexturedMesh.placed`; the previews and cameras.json
    keep the generator's frame);
    file_type: one of FILE_TYPES; preview_resolution: side of the preview PNGs (None: none);
    preview_views: previews per sample, evenly spaced about the vertical axis from the front
    (1 to 360); preview_maps: maps of MAPS written with every view (`encode_map`);
    preview_elevation: degrees the preview cameras are raised (positive: from above; -90 to 90);
    refiner: a
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
    if up not in UP_AXES:
        raise ValueError(f"up must be one of {', '.join(UP_AXES)}, got {up!r}")
    if file_type not in FILE_TYPES:
        raise ValueError(f"file_type must be one of {', '.join(FILE_TYPES)}, got {file_type!r}")
    if meshing.texture_size is not None and file_type not in ("glb", "obj"):
        raise ValueError(f"meshing.texture_size needs file_type 'glb' or 'obj' (a {file_type} file holds vertex "
                         "colours only), got file_type " + repr(file_type))
    preview_resolution, preview_views, preview_maps, preview_elevation = check_preview_options(
        preview_resolution, preview_views, preview_maps, preview_elevation)
    check_memory(memory_needed(resolution, batch_size, preview_resolution, preview_views, meshing),
                 next(generator.parameters()).device)
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
                "preview_views": preview_views, "preview_maps": preview_maps, "ground": bool(ground), "up": up,
                "preview_elevation": preview_elevation}
    created = record_settings(os.path.join(out_dir, SETTINGS), settings, may_change=(), write=rank == 0,
                              introduced=INTRODUCED)
    lock = FileLock(os.path.join(out_dir, MANIFEST_LOCK))
    claims = Claims(os.path.join(out_dir, CLAIMS), stale_after)
    batch = []
    try:
        if rank == 0:
            with lock:  # drops a torn last line (a process killed while appending)
                rewrite_manifest(out_dir, read_manifest(out_dir))
            _remove_stale_partials(out_dir, stale_after)
            if preview_resolution is not None:
                write_cameras(out_dir, generator, preview_views, preview_resolution, preview_elevation)
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
            meshes, own_seconds = [], []
            for i, sample_seed in enumerate(batch):  # one at a time, as extract_mesh works anyway: timed apart
                begin = time.perf_counter()
                meshes += generator.extract_mesh(z_shape[i : i + 1], z_texture[i : i + 1], resolution,
                                                 truncation_psi=truncation_psi, recolor=colouring, meshing=meshing,
                                                 noise_mode=noise_mode,
                                                 noise_seeds=[sample_seed] if noise_mode == "random" else None)
                own_seconds.append(time.perf_counter() - begin)
                claims.refresh(sample_seed)  # still being worked on: not stale
            if refiner is not None and not authors:
                meshes = refine_meshes(generator, refiner, meshes)
            names = [f"human-{sample_seed}" for sample_seed in batch]
            if refined_views:
                previews_of_views = _write_refined_views(out_dir, names, colouring.views)
                colouring.views.clear()
            previews = [{}] * len(batch) if preview_resolution is None else write_previews(
                generator, out_dir, names, meshes, preview_resolution, preview_views, preview_maps, preview_elevation)
            shared_seconds = (time.perf_counter() - start - sum(own_seconds)) / len(batch)  # refining, previews
            for sample_seed, name, mesh, preview, seconds in zip(batch, names, meshes, previews, own_seconds):
                begin = time.perf_counter()
                record = {"seed": sample_seed, "mesh": None if mesh.is_empty else f"{name}.{file_type}", "preview": None,
                          "vertices": int(mesh.vertices.shape[0]), "faces": int(mesh.faces.shape[0])}
                record.update(preview)
                if refined_views:
                    record["refined_views"] = previews_of_views[name]
                if record["mesh"] is not None:  # the same bytes whoever writes it: a seed names its mesh
                    mesh.export(os.path.join(out_dir, record["mesh"]), file_type, ground=ground, up=up)
                    if mesh.texture is not None and file_type == "obj":  # written beside it by export
                        record["material"] = [f"{name}.mtl", f"{name}-texture.png"]
                record["sha256"] = {file: file_sha256(os.path.join(out_dir, file)) for file in record_files(record)}
                record["seconds"] = round(seconds + shared_seconds + time.perf_counter() - begin, 4)
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
    except BaseException:
        for sample_seed in batch:  # unfinished: free for the next run at once, not after stale_after
            if claims.holds(sample_seed):
                claims.release(sample_seed)
        if created:  # failed before its first sample: the directory takes other settings again
            _forget_settings_unless_used(out_dir, claims)
        raise


def _forget_settings_unless_used(out_dir: str, claims: Claims) -> None:
    """Removes settings.json (and cameras.json) when no sample is listed and no other process
    holds a claim: a run that failed before its first sample leaves nothing that refuses the
    corrected command."""
    with FileLock(os.path.join(out_dir, MANIFEST_LOCK)):
        if read_manifest(out_dir) or claims.others():
            return
        for name in (SETTINGS, CAMERAS):
            try:
                os.unlink(os.path.join(out_dir, name))
            except FileNotFoundError:
                pass


def _write_refined_views(out_dir: str, names: Sequence[str], views: Sequence) -> dict[str, list[str]]:
    """Writes the refined views of `authors.AuthorsColouring` (one (decoded, refined) pair of
    [2, 3, R, R] per name) as `NAME-refined-AAA.png`; returns per name its files, VIEW_ANGLES order."""
    files = {}
    for name, (_, refined) in zip(names, views):
        files[name] = [f"{name}-refined-{int(angle):03d}.png" for angle in VIEW_ANGLES]
        for file, image in zip(files[name], refined):
            save_png(image.permute(1, 2, 0), os.path.join(out_dir, file))
    return files










