"""Checking a dataset directory of `write_samples` and repairing it (`get3dhuman verify DIR [--repair]`).

`verify` finds: listed files that are missing or whose bytes are not those the manifest's
sha256 records (records written before digests were recorded: existence only), finished
sample files (`human-SEED...`) the manifest does not list, seeds listed twice, records that do
not match settings.json, and a missing or unreadable settings.json or cameras.json. `repair`
regenerates the bad samples with the generator that made them (settings.json's fingerprint
refuses any other), which writes the same bytes, and removes the unlisted files.
Run them on a directory no process is writing.
"""

from __future__ import annotations

import json
import os
import re
from typing import NamedTuple

import torch
from filelock import FileLock

from get3dhuman.claims import Claims
from get3dhuman.dataset import (
    CLAIMS,
    DATASET_FORMAT,
    INTRODUCED,
    MANIFEST,
    MANIFEST_LOCK,
    SETTINGS,
    file_sha256,
    fingerprint,
    read_manifest,
    record_files,
    rewrite_manifest,
    write_samples,
)
from get3dhuman.mesh import MeshingOptions
from get3dhuman.previews import CAMERAS
from get3dhuman.run_settings import read_settings

_SAMPLE_FILE = re.compile(r"human-(\d+)[-.].*(?<!\.tmp)$")  # a sample's finished files (not *.tmp)
UNLISTED = "not listed in the manifest"
_AUTHORS_VIEWS = re.compile(r"the authors' two views, (\d+) px")


class Problem(NamedTuple):
    """What is wrong with one file of a dataset directory: `file` (relative to the directory),
    the `seed` whose sample it belongs to (None for the directory's own files), and `problem`."""

    seed: int | None
    file: str
    problem: str


def _settings(out_dir: str) -> tuple[dict | None, list[Problem]]:
    """settings.json of `out_dir` (None where it cannot be used) and its problems."""
    try:
        settings = read_settings(os.path.join(out_dir, SETTINGS), INTRODUCED)
    except FileNotFoundError:
        return None, [Problem(None, SETTINGS, "missing")]
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        return None, [Problem(None, SETTINGS, f"not readable as json ({error})")]
    if not isinstance(settings.get("format"), int) or not 1 <= settings["format"] <= DATASET_FORMAT:
        return None, [Problem(None, SETTINGS, f"of a dataset format this version does not know: {settings['format']!r}")]
    return settings, []


def _against_settings(record: dict, settings: dict) -> list[str]:
    """How `record` differs from what settings.json says every record holds."""
    differences = []
    if record["mesh"] is not None and not record["mesh"].endswith("." + settings["file_type"]):
        differences.append(f"a mesh file other than .{settings['file_type']}")
    if (record.get("preview") is None) != (settings["preview_resolution"] is None):
        differences.append("previews" if settings["preview_resolution"] is None else "no preview")
    views = len(record["views"]["files"]) if "views" in record else 1
    if settings["preview_resolution"] is not None and views != settings["preview_views"]:
        differences.append(f"{views} views, not {settings['preview_views']}")
    if sorted(record.get("maps", {})) != sorted(settings["preview_maps"]):
        differences.append(f"maps {sorted(record.get('maps', {}))}, not {sorted(settings['preview_maps'])}")
    return differences


def verify(out_dir: str | os.PathLike) -> list[Problem]:
    """The problems of the dataset directory `out_dir` (see the module docstring); [] for a
    sound one. FileNotFoundError when it holds no manifest (not a dataset)."""
    out_dir = os.fspath(out_dir)
    if not os.path.isfile(os.path.join(out_dir, MANIFEST)):
        raise FileNotFoundError(f"out_dir must be a directory of `get3dhuman sample` (with {MANIFEST}), got {out_dir!r}")
    settings, problems = _settings(out_dir)
    listed, seen = set(), set()
    records = read_manifest(out_dir)
    for record in records:
        seed = record["seed"]
        if seed in seen:
            problems.append(Problem(seed, MANIFEST, f"seed {seed} is listed more than once"))
        seen.add(seed)
        differences = [] if settings is None else _against_settings(record, settings)
        if differences:
            problems.append(Problem(seed, MANIFEST, f"seed {seed}'s record has {', '.join(differences)} "
                                                    f"against {SETTINGS}"))
        digests = record.get("sha256", {})
        for file in record_files(record):
            listed.add(file)
            path = os.path.join(out_dir, file)
            if not os.path.isfile(path):
                problems.append(Problem(seed, file, "missing"))
            elif file in digests and file_sha256(path) != digests[file]:
                problems.append(Problem(seed, file, "changed: its sha256 is not the one the manifest records"))
    if any(record.get("preview") for record in records) and \
            not os.path.isfile(os.path.join(out_dir, CAMERAS)):
        problems.append(Problem(None, CAMERAS, "missing"))
    for name in sorted(os.listdir(out_dir)):
        match = _SAMPLE_FILE.match(name)
        if match and name not in listed and os.path.isfile(os.path.join(out_dir, name)):
            problems.append(Problem(int(match.group(1)), name, UNLISTED))
    return problems


def _sample_options(settings: dict, records: list[dict]) -> dict:
    """The write_samples options that made a directory of these settings and records."""
    extract = dict(settings["extract_options"])
    noise_mode = extract.pop("noise_mode", "const")
    if "compute_dtype" in extract:
        extract["compute_dtype"] = getattr(torch, extract["compute_dtype"].removeprefix("torch."))
    authors = _AUTHORS_VIEWS.fullmatch(settings.get("refined_colors") or "")
    return {"resolution": settings["resolution"], "file_type": settings["file_type"],
            "preview_resolution": settings["preview_resolution"], "preview_views": settings["preview_views"],
            "preview_maps": settings["preview_maps"], "preview_elevation": settings["preview_elevation"],
            "truncation_psi": settings["truncation_psi"],
            "meshing": MeshingOptions(**extract), "noise_mode": noise_mode,
            "render_size": int(authors.group(1)) if authors and int(authors.group(1)) != settings["resolution"]
            else None,
            "refined_views": any("refined_views" in record for record in records),
            "ground": settings["ground"], "up": settings["up"]}


def repair(generator, out_dir: str | os.PathLike, refiner=None, *, progress: bool = False) -> list[Problem]:
    """Repairs what `verify` finds in `out_dir`: removes the files of the bad samples and the
    unlisted ones, and writes the bad samples again with `generator` and `refiner` (those that
    made the directory: settings.json refuses others), the same bytes as before. Returns the
    problems repaired. ValueError when settings.json itself is bad (nothing says how to redo it)."""
    out_dir = os.fspath(out_dir)
    problems = verify(out_dir)
    if any(problem.file == SETTINGS for problem in problems):
        raise ValueError(f"{out_dir} cannot be repaired: its {SETTINGS} is "
                         f"{next(p.problem for p in problems if p.file == SETTINGS)}")
    if not problems:
        return []
    settings, _ = _settings(out_dir)
    makers = {"generator": fingerprint(generator), "refiner": None if refiner is None else fingerprint(refiner)}
    others = [name for name, made in makers.items() if settings.get(name) != made]
    if others:  # refused before anything is removed
        raise ValueError(f"{out_dir} holds a run with other settings ({', '.join(others)}): repair it with the "
                         "generator and refiner that made it")
    bad = {problem.seed for problem in problems if problem.seed is not None and problem.problem != UNLISTED}
    with FileLock(os.path.join(out_dir, MANIFEST_LOCK)):
        records = read_manifest(out_dir)
        kept = {record["seed"]: record for record in records if record["seed"] not in bad}
        removed = [file for record in records if record["seed"] in bad for file in record_files(record)]
        removed += [problem.file for problem in problems if problem.problem == UNLISTED]
        for file in removed:
            try:
                os.unlink(os.path.join(out_dir, file))
            except FileNotFoundError:
                pass
        rewrite_manifest(out_dir, list(kept.values()))
    claims = Claims(os.path.join(out_dir, CLAIMS), 0)
    for seed in bad:
        claims.release(seed)
    options = _sample_options(settings, records)
    seeds = sorted(bad)
    write_samples(generator, out_dir, len(seeds), seeds=seeds, refiner=refiner, progress=progress, **options)
    return problems
