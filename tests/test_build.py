"""The installation: build_info, the command line, the source distribution, and the native CMake
build with ctest."""

import importlib
import importlib.util
import inspect
import json
import os
import pkgutil
import shutil
import subprocess
import sys
import tarfile

import pytest
import torch

import get3dhuman
from get3dhuman import kernels

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
    if os.path.exists("/proc/cpuinfo") and info["cpu_bf16"] is not None:  # the kernel's own flags: the oracle
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next(line for line in cpuinfo if line.startswith("flags")).split()
        assert ("avx512_bf16" in info["cpu_bf16"]) == ("avx512_bf16" in flags)
        assert "amx" not in info["cpu_bf16"] or "amx_tile" in flags  # torch also asks whether the OS enabled it


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
    rows = [line for line in cli.__doc__.splitlines() if line.startswith("  ") and line[2] != " "]
    assert {row.split()[0] for row in rows} == set(cli.HANDLERS)  # a row for every command
    for row in rows:  # argparse's default formatter runs them all into one paragraph
        assert row in result.stdout.splitlines(), row


def test_cli_prints_the_version(capsys):
    from get3dhuman.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0 and capsys.readouterr().out == f"get3dhuman {get3dhuman.__version__}\n"


def test_torch_is_required_at_a_version_without_the_weights_only_advisories():
    """torch.load(weights_only=True) had code-execution advisories below 2.6 (CVE-2025-32434) and
    2.10 (CVE-2026-24747): the package and its build require 2.10 or newer."""
    tomllib = pytest.importorskip("tomllib")
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as handle:
        project = tomllib.load(handle)
    for requirements in (project["project"]["dependencies"], project["build-system"]["requires"]):
        (torch_requirement,) = [r for r in requirements if r.startswith("torch")]
        assert torch_requirement == "torch>=2.10", requirements


def test_cli_rejects_unknown_commands(tmp_path):
    result = subprocess.run([shutil.which("get3dhuman"), "fly"], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2 and "invalid choice" in result.stderr


@pytest.mark.skipif(torch.version.cuda is None, reason="needs a CUDA build of torch")
def test_build_refuses_a_toolkit_of_another_cuda_major_version_and_says_the_ways_out(tmp_path):
    other = "11.8" if not torch.version.cuda.startswith("11.") else "12.4"
    nvcc = tmp_path / "bin" / "nvcc"
    nvcc.parent.mkdir()
    nvcc.write_text(f"#!/bin/sh\necho 'Cuda compilation tools, release {other}, V{other}.89'\n")
    nvcc.chmod(0o755)
    environment = {key: value for key, value in os.environ.items() if key != "GET3DHUMAN_FORCE_CPU"}
    result = subprocess.run([sys.executable, "setup.py", "--version"], cwd=ROOT, capture_output=True, text=True,
                            env={**environment, "CUDA_HOME": str(tmp_path)}, check=False)
    assert result.returncode != 0
    assert f"built with CUDA {torch.version.cuda}, the toolkit at {tmp_path} is CUDA {other}" in result.stderr
    assert "GET3DHUMAN_FORCE_CPU=1" in result.stderr
    forced = subprocess.run([sys.executable, "setup.py", "--version"], cwd=ROOT, capture_output=True, text=True,
                            env={**environment, "CUDA_HOME": str(tmp_path), "GET3DHUMAN_FORCE_CPU": "1"}, check=False)
    assert forced.returncode == 0 and "building CPU kernels only" in forced.stdout


def undocumented_names(module) -> list[str]:
    """Public names defined in `module` (its __all__, else those without a leading underscore)
    whose function, class, method or property has no docstring; the module itself if it has none."""
    missing = [] if module.__doc__ else [module.__name__]
    names = getattr(module, "__all__", None) or [name for name in vars(module) if not name.startswith("_")]
    for name in names:
        value = getattr(module, name)
        if not (inspect.isfunction(value) or inspect.isclass(value)) or value.__module__ != module.__name__:
            continue  # imported from elsewhere, or data
        if not value.__doc__:
            missing.append(f"{module.__name__}.{name}")
        if inspect.isclass(value):
            for member, attribute in vars(value).items():
                function = attribute.fget if isinstance(attribute, property) else getattr(attribute, "__func__", attribute)
                if not member.startswith("_") and inspect.isfunction(function) and not function.__doc__:
                    missing.append(f"{module.__name__}.{name}.{member}")
    return missing


def test_every_public_name_has_a_docstring(tmp_path):
    source = tmp_path / "bare.py"  # the oracle's own check: it sees what is missing
    source.write_text("class Shape:\n    'A shape.'\n    def area(self):\n        return 0\n\n    @property\n"
                      "    def side(self):\n        return 1\n\n\ndef grow():\n    pass\n")
    spec = importlib.util.spec_from_file_location("bare", source)
    bare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bare)
    assert undocumented_names(bare) == ["bare", "bare.Shape.area", "bare.Shape.side", "bare.grow"]
    # get3dhuman.kernels comes from kernels/, which an editable install maps apart from get3dhuman/.
    packages = [(get3dhuman.__path__, "get3dhuman."), (kernels.__path__, "get3dhuman.kernels.")]
    if importlib.util.find_spec("triton") is None:
        packages.pop()  # its kernel modules import triton
    names = {info.name for path, prefix in packages for info in pkgutil.walk_packages(path, prefix)}
    modules = [importlib.import_module(name) for name in sorted(names) if not name.rsplit(".", 1)[-1].startswith("_")]
    assert len(modules) >= 40 and "get3dhuman.kernels.stylegan2" in {module.__name__ for module in modules}
    assert [name for module in [get3dhuman, *modules] for name in undocumented_names(module)] == []


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
def test_native_cmake_build_and_ctest(tmp_path):
    """CMakeLists.txt builds the same csrc sources and its ctest suite passes: without the CUDA
    kernels, then (where nvcc and a CUDA build of torch are present) with them, reconfigured in
    the same build directory, so that ninja compiles only the CUDA sources anew (the CPU ones
    compile alike in both)."""
    cmake = shutil.which("cmake")
    assert cmake is not None, "cmake is a test dependency (pip install '.[test]')"
    build = tmp_path / "build"
    env = dict(os.environ, TORCH_CUDA_ARCH_LIST=os.environ.get("TORCH_CUDA_ARCH_LIST", "8.0"))
    ctest = os.path.join(os.path.dirname(cmake), "ctest")
    for with_cuda in [False, True] if CUDA_TOOLKIT else [False]:
        configure = [cmake, "-S", ROOT, "-B", str(build), "-G", "Ninja", f"-DPython3_EXECUTABLE={sys.executable}",
                     f"-DGET3DHUMAN_WITH_CUDA={'ON' if with_cuda else 'OFF'}"]
        subprocess.run(configure, check=True, capture_output=True, env=env)
        built = subprocess.run([cmake, "--build", str(build)], check=True, capture_output=True, text=True, env=env)
        if with_cuda:
            assert "Building CUDA object" in built.stdout, built.stdout
        result = subprocess.run([ctest, "--test-dir", str(build), "--output-on-failure"], capture_output=True, text=True,
                                env=env)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "100% tests passed" in result.stdout
