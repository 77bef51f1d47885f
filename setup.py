"""Builds get3dhuman and its compiled extension get3dhuman._C.

CPU kernels are always built. CUDA kernels are built when torch is a CUDA build and a CUDA
toolkit (nvcc) is found; no GPU is needed. GET3DHUMAN_FORCE_CPU=1 builds the CPU kernels only.
Install with `pip install --no-build-isolation .` after torch (the extension links the torch
that is installed, so the build must see it).
"""

import glob
import os
import re
import shutil
import subprocess
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, ROOT)
from csrc_sources import cpu_sources, cuda_sources  # noqa: E402  (shared with CMakeLists.txt)

DEFAULT_CUDA_ARCHS = "7.5;8.0;9.0+PTX"  # Turing, Ampere/Ada (sm_80 cubins run on 8.x), Hopper + PTX for newer


def _cuda_home_candidates():
    """CUDA roots to try when CUDA_HOME is unset, most specific first."""
    nvcc = shutil.which("nvcc")
    if nvcc:
        yield os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
    yield from sorted(glob.glob("/usr/local/cuda*"), key=len)


def _locate_cuda_home():
    """Sets CUDA_HOME before torch.utils.cpp_extension reads it.

    torch guesses the toolkit from `which nvcc`, which is wrong when nvcc is a wrapper script
    outside the toolkit (e.g. /usr/local/bin/nvcc); accept only a root holding the headers.
    """
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    for root in _cuda_home_candidates():
        if os.path.isfile(os.path.join(root, "include", "cuda_runtime.h")) and os.path.isfile(
            os.path.join(root, "bin", "nvcc")
        ):
            os.environ["CUDA_HOME"] = root
            return


_locate_cuda_home()

import torch  # noqa: E402
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def _want_cuda():
    if os.environ.get("GET3DHUMAN_FORCE_CPU", "0") not in ("", "0"):
        print("get3dhuman: GET3DHUMAN_FORCE_CPU is set: building CPU kernels only")
        return False
    if torch.version.cuda is None:
        print("get3dhuman: torch is a CPU build: building CPU kernels only")
        return False
    if CUDA_HOME is None:
        print("get3dhuman: no CUDA toolkit found (set CUDA_HOME): building CPU kernels only")
        return False
    toolkit = _toolkit_version()
    toolkit_major, torch_major = (toolkit or "").split(".")[0], torch.version.cuda.split(".")[0]
    if toolkit is not None and toolkit_major != torch_major:
        # torch refuses this pair too, but only after the build starts and without the ways out.
        raise SystemExit(
            f"get3dhuman: torch {torch.__version__} was built with CUDA {torch.version.cuda}, the toolkit at "
            f"{CUDA_HOME} is CUDA {toolkit}, and the CUDA kernels need the same major version: install a torch "
            f"built for CUDA {toolkit_major} (the README's torch==2.14.1 is CUDA 13), point CUDA_HOME at a "
            f"CUDA {torch_major} toolkit, or build the CPU kernels only with GET3DHUMAN_FORCE_CPU=1"
        )
    return True


def _toolkit_version():
    """The CUDA_HOME toolkit's version ('13.0') from `nvcc --version`, or None if it cannot tell."""
    try:
        report = subprocess.run([os.path.join(CUDA_HOME, "bin", "nvcc"), "--version"], capture_output=True,
                                text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    match = re.search(r"release (\d+\.\d+)", report)
    return match[1] if match else None


def _extension():
    # at::parallel_for is OpenMP-based: without it kernels run serially. No errno from sqrt and
    # no floating-point traps (the kernels use neither) let GCC vectorise branch-free loops
    # (csrc/sdf_union); they change no result.
    cxx_flags = ["-O3", "-fopenmp", "-fno-math-errno", "-fno-trapping-math"]
    define_macros = [("GET3DHUMAN_PYTHON_MODULE", None)]
    if not _want_cuda():
        return CppExtension(
            "get3dhuman._C",
            cpu_sources(ROOT),
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=["-fopenmp"],
            define_macros=define_macros,
        )
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)
    print(f"get3dhuman: building CUDA kernels with {CUDA_HOME} for {os.environ['TORCH_CUDA_ARCH_LIST']}")
    define_macros.append(("GET3DHUMAN_WITH_CUDA", None))
    return CUDAExtension(
        "get3dhuman._C",
        cpu_sources(ROOT) + cuda_sources(ROOT),
        extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3"]},
        extra_link_args=["-fopenmp"],
        define_macros=define_macros,
    )


setup(
    packages=find_packages(include=["get3dhuman", "get3dhuman.*"]) + ["get3dhuman.kernels"],
    package_dir={"get3dhuman.kernels": "kernels"},
    package_data={"get3dhuman": ["weights/*.safetensors"]},  # the default weights, once trained (TRAINING.md)
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
