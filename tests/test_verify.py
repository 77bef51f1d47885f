"""`get3dhuman verify DIR [--repair]`: a dataset checked against its manifest's digests and its
settings, and repaired to the same bytes."""

import hashlib
import json
import os

import pytest
from inputs import generator_with_a_surface

from get3dhuman.cli import main
from get3dhuman.dataset import MANIFEST, SETTINGS, read_manifest, record_files, write_samples
from get3dhuman.mesh import MeshingOptions
from get3dhuman.verify import UNLISTED, repair, verify

OPTIONS = dict(resolution=32, meshing=MeshingOptions(coarse_resolution=8), preview_resolution=16, preview_views=2,
               preview_maps=("depth",), progress=False)


def _bytes_of(directory) -> dict[str, str]:
    return {name: hashlib.sha256((directory / name).read_bytes()).hexdigest() for name in sorted(os.listdir(directory))
            if name.startswith("human-")}


def test_the_manifest_records_each_files_sha256_and_a_sound_dataset_has_no_problem(tmp_path):
    records = write_samples(generator_with_a_surface(), str(tmp_path), 3, seed=4, **OPTIONS)
    for record in records:
        files = record_files(record)
        assert len(files) == (1 if record["mesh"] else 0) + 2 + 2  # mesh, two views, two depth maps
        assert record["sha256"] == {file: hashlib.sha256((tmp_path / file).read_bytes()).hexdigest() for file in files}
    assert verify(tmp_path) == []


def test_verify_names_each_bad_file_and_repair_restores_the_same_bytes(tmp_path):
    generator = generator_with_a_surface()
    records = write_samples(generator, str(tmp_path), 4, seed=4, **OPTIONS)
    original = _bytes_of(tmp_path)
    meshes = [record["mesh"] for record in records if record["mesh"]]
    assert len(meshes) >= 2
    (tmp_path / meshes[0]).write_bytes((tmp_path / meshes[0]).read_bytes()[:-10] + b"0123456789")  # changed
    os.unlink(tmp_path / records[1]["views"]["files"][1])  # missing
    (tmp_path / "human-99.glb").write_bytes(b"left by a killed writer")  # unlisted
    (tmp_path / "notes.txt").write_text("the user's own file")  # not a sample file: left alone
    problems = {(problem.seed, problem.file): problem.problem for problem in verify(tmp_path)}
    changed_seed = next(record["seed"] for record in records if record["mesh"] == meshes[0])
    assert problems == {(changed_seed, meshes[0]): "changed: its sha256 is not the one the manifest records",
                        (records[1]["seed"], records[1]["views"]["files"][1]): "missing",
                        (99, "human-99.glb"): UNLISTED}
    repaired = repair(generator, tmp_path)
    assert len(repaired) == 3 and verify(tmp_path) == []
    assert _bytes_of(tmp_path) == original  # the same bytes again; the unlisted file is gone
    assert (tmp_path / "notes.txt").exists()
    assert sorted(record["seed"] for record in read_manifest(str(tmp_path))) == [4, 5, 6, 7]


def test_records_that_contradict_the_settings_and_seeds_listed_twice_are_found(tmp_path):
    generator = generator_with_a_surface()
    records = write_samples(generator, str(tmp_path), 2, seed=4, **OPTIONS)
    doubled = dict(records[0])
    del doubled["maps"]
    with open(tmp_path / MANIFEST, "a") as handle:
        handle.write(json.dumps(doubled) + "\n")
    problems = verify(tmp_path)
    assert {problem.problem for problem in problems} == {
        "seed 4 is listed more than once", "seed 4's record has maps [], not ['depth'] against settings.json"}
    repair(generator, tmp_path)
    assert verify(tmp_path) == [] and [r["seed"] for r in read_manifest(str(tmp_path))].count(4) == 1


def test_a_dataset_without_its_settings_cannot_be_repaired(tmp_path):
    write_samples(generator_with_a_surface(), str(tmp_path), 1, seed=4, **OPTIONS)
    os.unlink(tmp_path / SETTINGS)
    assert [(problem.file, problem.problem) for problem in verify(tmp_path)] == [(SETTINGS, "missing")]
    with pytest.raises(ValueError, match="cannot be repaired: its settings.json is missing"):
        repair(generator_with_a_surface(), tmp_path)
    with pytest.raises(FileNotFoundError, match="must be a directory of `get3dhuman sample`"):
        verify(tmp_path / "nothing")


def test_the_command_line_reports_problems_with_exit_status_1_and_repairs(tmp_path, capsys):
    weights = tmp_path / "weights.safetensors"
    generator_with_a_surface().save_pretrained(weights)
    out = tmp_path / "out"
    assert main(["sample", "--num", "2", "--resolution", "32", "--weights", str(weights), "--out", str(out),
                 "--quiet"]) == 0
    assert main(["verify", str(out)]) == 0
    mesh = next(record["mesh"] for record in read_manifest(str(out)) if record["mesh"])
    original = (out / mesh).read_bytes()
    (out / mesh).write_bytes(b"damaged")
    capsys.readouterr()
    assert main(["verify", str(out)]) == 1
    assert capsys.readouterr().out.splitlines() == [f"{out / mesh}: changed: its sha256 is not the one the manifest "
                                                    "records"]
    with pytest.raises(SystemExit, match="holds a run with other settings"):  # another generator: refused
        main(["verify", str(out), "--repair", "--quiet"])
    assert main(["verify", str(out), "--repair", "--weights", str(weights), "--quiet"]) == 0
    assert (out / mesh).read_bytes() == original
