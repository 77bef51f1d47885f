"""Clean failures of `get3dhuman sample`: operating-system errors in one line with exit status 1,
Ctrl-C with a resumable state and exit status 130, sizes that cannot fit refused before anything
is written, and a run that failed before its first sample leaving nothing that refuses the
corrected command."""

import errno
import os
import signal
import subprocess
import sys
import time

import pytest
from inputs import generator_with_a_surface

from get3dhuman import dataset
from get3dhuman.cli import main
from get3dhuman.dataset import MANIFEST, SETTINGS, read_manifest, write_samples
from get3dhuman.mesh import MeshingOptions, TexturedMesh
from get3dhuman.verify import verify


@pytest.fixture
def weights(tmp_path):
    path = tmp_path / "weights.safetensors"
    generator_with_a_surface().save_pretrained(path)
    return path


def _sample(weights, out, *options) -> list[str]:
    return ["sample", "--weights", str(weights), "--resolution", "32", "--out", str(out), "--quiet", *options]


def test_a_full_disk_ends_in_one_line_and_lists_nothing_half_written(tmp_path, weights, monkeypatch):
    written = []

    def export(mesh, path, file_type=None, **placement):
        if written:
            raise OSError(errno.ENOSPC, "No space left on device", path)
        written.append(path)
        return original(mesh, path, file_type, **placement)

    original = TexturedMesh.export
    monkeypatch.setattr(TexturedMesh, "export", export)
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match=r"^get3dhuman sample: .*human-\d+\.glb: No space left on device$") as exited:
        main(_sample(weights, out, "--num", "4", "--batch-size", "1"))
    assert isinstance(exited.value.code, str)  # printed to stderr, exit status 1
    listed = read_manifest(str(out))
    assert [record["mesh"] for record in listed if record["mesh"]] == [os.path.basename(written[0])]
    assert verify(out) == []


def test_a_read_only_directory_and_a_file_in_the_way_end_in_one_line(tmp_path, weights, monkeypatch):
    in_the_way = tmp_path / "file"
    in_the_way.write_text("")
    with pytest.raises(SystemExit, match=rf"^get3dhuman sample: {in_the_way}: File exists$"):
        main(_sample(weights, in_the_way, "--num", "1"))
    with pytest.raises(SystemExit, match=rf"^get3dhuman sample: {in_the_way / 'out'}: Not a directory$"):
        main(_sample(weights, in_the_way / "out", "--num", "1"))

    def read_only(path, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", path)

    monkeypatch.setattr(dataset, "record_settings", read_only)
    with pytest.raises(SystemExit, match=r"^get3dhuman sample: .*settings.json: Read-only file system$"):
        main(_sample(weights, tmp_path / "ro", "--num", "1"))


def test_sizes_that_cannot_fit_are_refused_with_an_estimate_before_anything_is_written(tmp_path, weights):
    out = tmp_path / "out"
    for flags in (["--resolution", "100000"], ["--preview", "100000"], ["--preview", "20000", "--views", "360"],
                  ["--batch-size", "100000000", "--preview", "64"]):
        with pytest.raises(SystemExit, match=r"^get3dhuman sample: these sizes need about [\d.]+ GiB \(.*\), more than "
                                             r"the [\d.]+ GiB available on cpu"):
            main([*_sample(weights, out, "--num", "1"), *flags])
        assert not out.exists()
    needed = dataset.memory_needed(100000)
    assert needed["meshing"] > 2 * 10**12  # a dense first lattice of 3125^3 points: what the unchecked run tried


def test_a_run_that_failed_before_its_first_sample_leaves_the_directory_free(tmp_path, monkeypatch):
    generator = generator_with_a_surface()
    with pytest.raises(ValueError, match="times a power of two"):  # fails in the meshing, after the settings
        write_samples(generator, str(tmp_path), 2, resolution=32, meshing=MeshingOptions(coarse_resolution=7),
                      preview_resolution=16, progress=False)
    assert not (tmp_path / SETTINGS).exists()
    records = write_samples(generator, str(tmp_path), 2, resolution=32, progress=False)  # the corrected command
    assert len(records) == 2 and verify(tmp_path) == []
    monkeypatch.setattr(generator, "extract_mesh", lambda *args, **kwargs: 1 / 0)
    with pytest.raises(ZeroDivisionError):  # with samples listed, a failure leaves the settings
        write_samples(generator, str(tmp_path), 3, resolution=32, progress=False)
    assert (tmp_path / SETTINGS).exists() and len(read_manifest(str(tmp_path))) == 2


def test_ctrl_c_says_how_many_samples_were_written_and_the_same_command_resumes(tmp_path, weights):
    out, count = tmp_path / "out", 100  # about 0.1 s a sample: far more than the interrupt takes to land
    command = [sys.executable, "-m", "get3dhuman.cli", *_sample(weights, out, "--num", str(count), "--batch-size", "1",
                                                                   "--preview", "16")]
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not ((out / MANIFEST).exists() and (out / MANIFEST).read_text().count("\n") >= 1):
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    listed = len(read_manifest(str(out)))
    assert process.returncode == 130, (listed, stdout, stderr)
    assert stderr.strip().splitlines()[-1] == (f"get3dhuman sample: interrupted after {listed} samples; run the same "
                                               "command to resume")
    assert 1 <= listed < count and verify(out) == []
    assert not [name for name in os.listdir(out) if name.startswith(".partial-") or name.endswith(".tmp")]
    resumed = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert sorted(record["seed"] for record in read_manifest(str(out))) == list(range(count)) and verify(out) == []
