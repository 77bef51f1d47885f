"""Claims shared by processes writing one directory (get3dhuman.claims), and `sample` processes
writing one dataset at once: each seed written once, a killed writer's claim taken over."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from inputs import generator_with_a_surface

from get3dhuman.claims import Claims, create_exclusively
from get3dhuman.dataset import CLAIMS, read_manifest


def test_a_claim_is_held_by_one_until_done_and_taken_over_once_stale(tmp_path):
    first, second = Claims(str(tmp_path), stale_after=3600), Claims(str(tmp_path), stale_after=3600)
    assert first.take(7) == "new" and first.holds(7)
    assert second.take(7) is None and not second.holds(7)  # fresh: held by the first
    impatient = Claims(str(tmp_path), stale_after=0)
    assert impatient.take(7) == "stale" and impatient.holds(7)
    assert not first.holds(7)  # taken over: the first must not list its result
    assert first.take(7) is None
    impatient.finish(7)
    assert not impatient.holds(7) and Claims(str(tmp_path), stale_after=0).take(7) is None  # done: never again
    assert sorted(os.listdir(tmp_path)) == ["7.claim"]  # nothing left aside
    with pytest.raises(ValueError, match="stale_after must be a number of seconds >= 0, got -1"):
        Claims(str(tmp_path), stale_after=-1)


def test_exclusive_creation_writes_once(tmp_path):
    path = str(tmp_path / "settings.json")
    assert create_exclusively(path, "first") and not create_exclusively(path, "second")
    assert open(path).read() == "first" and os.listdir(tmp_path) == ["settings.json"]


def _sample(weights, out, *options):
    """A `get3dhuman sample` process (run outside the source tree, so that it imports the
    installed package)."""
    command = [sys.executable, "-m", "get3dhuman.cli", "sample", "--weights", str(weights), "--resolution", "24",
               "--out", str(out), "--quiet", *options]
    return subprocess.Popen(command, cwd=out.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def _weights_and_one_writers_dataset(tmp_path, num: int):
    """A tiny generator's weights file, and the dataset of `num` samples one process writes
    with them in tmp_path/alone (the oracle)."""
    weights = tmp_path / "tiny.safetensors"
    generator_with_a_surface().save_pretrained(weights)
    alone = _sample(weights, tmp_path / "alone", "--num", str(num))
    assert alone.wait(timeout=600) == 0, alone.stderr.read()
    return weights


def _same_files_as(out, alone):
    records = read_manifest(str(out))
    assert sorted(record["seed"] for record in records) == sorted(record["seed"] for record in read_manifest(str(alone)))
    for record in records:
        assert (out / record["mesh"]).read_bytes() == (alone / record["mesh"]).read_bytes()


@pytest.mark.slow
def test_processes_started_at_once_on_one_directory_write_each_seed_once(tmp_path):
    weights = _weights_and_one_writers_dataset(tmp_path, 9)
    shared = tmp_path / "shared"
    processes = [_sample(weights, shared, "--num", "9") for _ in range(3)]
    outputs = [process.communicate(timeout=600) for process in processes]
    assert [process.returncode for process in processes] == [0, 0, 0], [err for _, err in outputs]
    written = [int(out.split("; ")[1].split(" written")[0]) for out, _ in outputs]
    assert sum(written) == 9  # each says what it wrote
    assert len(read_manifest(str(shared))) == 9
    _same_files_as(shared, tmp_path / "alone")


@pytest.mark.slow
def test_a_killed_writers_claim_is_taken_over_and_nothing_is_lost_or_doubled(tmp_path):
    weights = _weights_and_one_writers_dataset(tmp_path, 6)
    out = tmp_path / "shared"
    writer = _sample(weights, out, "--num", "6")
    claims = out / CLAIMS
    deadline = time.time() + 300
    while time.time() < deadline:  # kill it while it holds a claim it has not finished
        held = [path for path in claims.glob("*.claim")] if claims.exists() else []
        states = []
        for path in held:
            try:
                states.append(json.loads(path.read_text() or "{}"))
            except (OSError, json.JSONDecodeError):
                pass
        if any(not state.get("done") and state.get("pid") == writer.pid for state in states):
            writer.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    assert writer.wait(timeout=60) == -signal.SIGKILL
    left = [json.loads(path.read_text()) for path in claims.glob("*.claim")]
    assert any(not state["done"] for state in left)
    patient = _sample(weights, out, "--num", "6")  # the claim is fresh: not taken over
    assert patient.wait(timeout=600) == 0
    assert len(read_manifest(str(out))) < 6
    # Temporary files a killed writer left (an hour old), and a live writer's (new).
    leftovers = [out / ".partial-killed.glb", out / "human-99.png.tmp"]
    for leftover in leftovers:
        leftover.write_bytes(b"half")
        os.utime(leftover, (time.time() - 3600, time.time() - 3600))
    live = out / ".partial-live.glb"
    live.write_bytes(b"writing")
    cleaning = _sample(weights, out, "--num", "6", "--stale-after", "600")
    assert cleaning.wait(timeout=600) == 0, cleaning.stderr.read()
    assert not any(leftover.exists() for leftover in leftovers) and live.exists()
    assert len(read_manifest(str(out))) < 6  # the killed writer's claim is younger than 600 s
    resumed = _sample(weights, out, "--num", "6", "--stale-after", "0")
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()
    assert len(read_manifest(str(out))) == 6  # nothing lost, nothing listed twice
    _same_files_as(out, tmp_path / "alone")
