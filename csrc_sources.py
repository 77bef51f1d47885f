"""The one list of the extension's C++/CUDA sources, used by setup.py and CMakeLists.txt.

Every op lives in csrc/<op>/ with a CPU kernel (cpu.cpp) and a CUDA kernel (cuda.cu); schemas
are in csrc/registration.cpp. Run as a script, prints the sources for CMake.
"""

import glob
import os
import sys


def cpu_sources(root):
    """Relative paths of the C++ sources (schemas first, then every op's CPU kernel)."""
    ops = sorted(glob.glob(os.path.join(root, "csrc", "*", "cpu.cpp")))
    return ["csrc/registration.cpp"] + [os.path.relpath(path, root) for path in ops]


def cuda_sources(root):
    """Relative paths of every op's CUDA kernel."""
    ops = sorted(glob.glob(os.path.join(root, "csrc", "*", "cuda.cu")))
    return [os.path.relpath(path, root) for path in ops]


if __name__ == "__main__":
    root = os.path.dirname(os.path.abspath(__file__))
    kind = sys.argv[1] if len(sys.argv) > 1 else "cpu"
    print(";".join(cuda_sources(root) if kind == "cuda" else cpu_sources(root)), end="")
