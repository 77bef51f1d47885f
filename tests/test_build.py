"""The installation: build_info, the command line, the source distribution, and the native CMake
build with ctest."""

import json
import os
import shutil
import subprocess
import sys
import tarfile

import pytest
import torch

import get3dhuman

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_build_info_reports_the_installation():
    info = get3dhuman.build_info()
    assert info["version"] == get3dhuman.__version__
    assert info["torch"] == torch.__version__
    assert info["torch_cuda"] == torch.version.cuda
    assert "cpu" in info["compiled_backends"]
    assert info["cuda_available"] == torch.cuda.is_available()
    assert len(info["devices"]) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    for key, module in (("default_weights", get3dhuman.nn.generator), ("default_refiner_weights", get3dhuman.nn.refiner)):
        assert info[key] == (module.DEFAULT_WEIGHTS if os.path.exists(module.DEFAULT_WEIGHTS) else None)


@pytest.mark.skipif(os.environ.get("GET3DHUMAN_REQUIRE_CUDA_BUILD") != "1", reason="CI sets GET3DHUMAN_REQUIRE_CUDA_BUILD=1")
def test_cuda_kernels_were_built():
    assert "cuda" in get3dhuman.build_info()["compiled_backends"]


def test_cli_info_prints_build_info(tmp_path):
    executable = shutil.which("get3dhuman")
    assert executable is not None, "the get3dhuman console script is not installed"
    result = subprocess.run([executable, "info", "--json"], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert json.loads(result.stdout) == json.loads(json.dumps(get3dhuman.build_info()))
    plain = subprocess.run([executable, "info"], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert "compiled_backends" in plain.stdout
    backends = get3dhuman.build_info()["query_backends"]
    assert f"query backends: {' > '.join(backends['order'])}" in plain.stdout
    assert f"cpu: inference -> {backends['chosen']['cpu']['inference']}" in plain.stdout


def test_cli_help_lists_each_command_on_its_own_line(tmp_path):
    from get3dhuman import cli

    result = subprocess.run([shutil.which("get3dhuman"), "--help"], capture_output=True, text=True, check=True,
                            cwd=tmp_path)
    bullets = [line for line in cli.__doc__.splitlines() if line.startswith("- `get3dhuman ")]
    assert len(bullets) >= 10
    for bullet in bullets:  # argparse's default formatter runs them all into one paragraph
        assert bullet in result.stdout.splitlines(), bullet


def test_cli_rejects_unknown_commands(tmp_path):
    result = subprocess.run([shutil.which("get3dhuman"), "fly"], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2 and "invalid choice" in result.stderr


# Tracked files the source distribution leaves out: the CI script and git's own settings.
NOT_DISTRIBUTED = {".ci/run", ".gitignore"}


@pytest.mark.skipif(not os.path.isdir(os.path.join(ROOT, ".git")) or shutil.which("git") is None,
                    reason="needs the git checkout, to list the tracked files")
def test_source_distribution_holds_every_tracked_file(tmp_path):
    """An sdist (built from a copy of the tracked files, as from a clean checkout) holds the
    whole project: the native build's tests and the Python tests' helpers included."""
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    source = tmp_path / "source"
    for name in tracked:
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(os.path.join(ROOT, name), source / name)
    subprocess.run([sys.executable, "-c", f"import setuptools.build_meta as m; m.build_sdist({str(tmp_path)!r})"],
                   cwd=source, capture_output=True, text=True, check=True)
    [archive] = tmp_path.glob("*.tar.gz")
    with tarfile.open(archive) as sdist:
        members = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    assert sorted(set(tracked) - NOT_DISTRIBUTED - members) == []


CUDA_TOOLKIT = torch.version.cuda is not None and shutil.which("nvcc") is not None


@pytest.mark.slow
@pytest.mark.parametrize(
    "with_cuda",
    [False, pytest.param(True, marks=pytest.mark.skipif(not CUDA_TOOLKIT, reason="needs nvcc and a CUDA build of torch"))],
    ids=["cpu", "cuda"],
)
def test_native_cmake_build_and_ctest(tmp_path, with_cuda):
    """CMakeLists.txt builds the same csrc sources (with the CUDA kernels when asked) and its
    ctest suite passes."""
    cmake = shutil.which("cmake")
    assert cmake is not None, "cmake is a test dependency (pip install '.[test]')"
    build = tmp_path / "build"
    env = dict(os.environ, TORCH_CUDA_ARCH_LIST=os.environ.get("TORCH_CUDA_ARCH_LIST", "8.0"))
    configure = [cmake, "-S", ROOT, "-B", str(build), "-G", "Ninja", f"-DPython3_EXECUTABLE={sys.executable}"]
    configure.append(f"-DGET3DHUMAN_WITH_CUDA={'ON' if with_cuda else 'OFF'}")
    subprocess.run(configure, check=True, capture_output=True, env=env)
    subprocess.run([cmake, "--build", str(build)], check=True, capture_output=True, env=env)
    ctest = os.path.join(os.path.dirname(cmake), "ctest")
    result = subprocess.run([ctest, "--test-dir", str(build), "--output-on-failure"], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "100% tests passed" in result.stdout
