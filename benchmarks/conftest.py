"""The same-run summary of every benchmark's speed-up and memory relative to the reference.

GET3DHUMAN_VIRTUAL_CUDA=1 runs the session on the tests' simulated CUDA device
(tests/virtual_cuda.py), so that the CUDA rows' code runs without a GPU: with
GET3DHUMAN_BENCH_QUICK=1 and --benchmark-disable, a dry run of what a GPU session benchmarks
(its figures mean nothing: the CPU kernels compute them). With TRITON_INTERPRET=1 as well, the
package may choose its Triton kernels for the simulated device, and the interpreter runs them."""

import contextlib
import os
from collections import defaultdict

import pytest

_RESULTS = defaultdict(dict)  # (case) -> {implementation: (median seconds, peak bytes)}
# The row each case is compared with: our reference implementation, or a peer library.
_BASELINES = ("reference", "skimage", "authors-dense", "dense")


@pytest.fixture
def record():
    """record(case, implementation, seconds, peak_bytes) keeps a result for the summary."""

    def _record(case, implementation, seconds, peak_bytes):
        _RESULTS[case][implementation] = (seconds, peak_bytes)

    return _record


def pytest_terminal_summary(terminalreporter):
    if not _RESULTS:
        return
    write = terminalreporter.write_line
    write("")
    write("get3dhuman: same-run comparison (speed-up and memory relative to the baseline: "
          + " / ".join(_BASELINES) + ")")
    write(f"{'case':<28} {'implementation':<14} {'median s':>10} {'speed-up':>9} {'peak MiB':>10} {'mem ratio':>10}")
    for case, rows in sorted(_RESULTS.items()):
        reference = next((rows[name] for name in _BASELINES if name in rows), None)
        for implementation, (seconds, peak) in sorted(rows.items()):
            speedup = f"{reference[0] / seconds:.2f}x" if reference else "-"
            ratio = f"{peak / reference[1]:.3f}" if reference and reference[1] > 0 else "-"
            write(f"{case:<28} {implementation:<14} {seconds:>10.4f} {speedup:>9} {peak / 2**20:>10.1f} {ratio:>10}")


_SIMULATION = contextlib.ExitStack()


def pytest_configure(config):
    if os.environ.get("GET3DHUMAN_VIRTUAL_CUDA") == "1":
        # Not bench_settings' flags: importing it here would list the devices before the simulated one exists.
        import torch
        from virtual_cuda import virtual_cuda

        if torch.cuda.is_available():
            pytest.exit("GET3DHUMAN_VIRTUAL_CUDA=1 simulates a GPU where there is none; this machine has one", 2)
        _SIMULATION.enter_context(virtual_cuda(triton=os.environ.get("TRITON_INTERPRET") == "1"))


def pytest_unconfigure(config):
    _SIMULATION.close()
