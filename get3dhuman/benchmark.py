"""Measurement helpers shared by the benchmark suite, the tests and the command line.

Peak memory of a CPU query is measured in a fresh process (``python -m get3dhuman.benchmark``)
as the growth of the peak resident set size (Linux VmHWM, reset just before the query), so
allocator caches of earlier runs cannot hide or inflate it; on CUDA it is the growth of
torch's peak allocated memory.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile

import torch

from get3dhuman.nn import ImplicitDecoder
from get3dhuman.ops import query_field, reference_query_field

IMPLEMENTATIONS = ("reference", "direct", "projected")
DECODERS = {"shape": ImplicitDecoder.official_shape, "texture": ImplicitDecoder.official_texture}


def query_case(decoder_name: str, count: int, device: str = "cpu", size: int = 128, seed: int = 0):
    """An official-size query: (decoder, features [1, C, size, size], points [1, count, 3]
    uniform in [-1, 1]^3 (random order), calib [1, 4, 4] identity)."""
    if decoder_name not in DECODERS:
        raise ValueError(f"decoder_name must be one of {sorted(DECODERS)}, got {decoder_name!r}")
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    decoder = DECODERS[decoder_name]().to(device)
    features = torch.randn(1, decoder.in_channels - 1, size, size, generator=generator).to(device)
    points = (torch.rand(1, count, 3, generator=generator) * 2 - 1).to(device)
    calib = torch.eye(4).unsqueeze(0).to(device)
    return decoder, features, points, calib


def run_query(implementation: str, decoder, features, points, calib) -> torch.Tensor:
    """Evaluates the query with one implementation: 'reference' or a query_field variant."""
    if implementation == "reference":
        return reference_query_field(decoder, features, points, calib)
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    return query_field(decoder, features, points, calib, variant=implementation)


def _resident_kib(field: str) -> int:
    """A /proc/self/status memory field (VmRSS, VmHWM) in KiB. ru_maxrss is no substitute:
    Linux carries it across fork and exec, so a child of a large process would inherit a peak."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}: peak memory needs Linux")


def _measure_here(implementation: str, decoder_name: str, count: int, device: str, size: int) -> dict:
    case = query_case(decoder_name, count, device, size)
    with torch.no_grad():
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            out = run_query(implementation, *case)
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() - before
        else:
            with open("/proc/self/clear_refs", "w") as clear_refs:
                clear_refs.write("5")  # resets VmHWM to the current resident size
            before = _resident_kib("VmRSS")
            out = run_query(implementation, *case)
            peak = (_resident_kib("VmHWM") - before) * 1024
    return {"peak_bytes": int(peak), "checksum": float(out.double().sum())}


def peak_memory(implementation: str, decoder_name: str, count: int, device: str = "cpu", size: int = 128) -> dict:
    """Extra peak memory (bytes) of one query, and the output's checksum.

    CPU: measured in a fresh subprocess (started outside the source tree). CUDA: in-process.
    """
    if device != "cpu":
        return _measure_here(implementation, decoder_name, count, device, size)
    with tempfile.TemporaryDirectory() as workdir:
        command = [sys.executable, "-m", "get3dhuman.benchmark", implementation, decoder_name, str(count), "--size", str(size)]
        result = subprocess.run(command, capture_output=True, text=True, check=True, cwd=workdir)
    return json.loads(result.stdout)


def main(argv: list[str] | None = None) -> int:
    """Prints the peak-memory measurement of one CPU query as JSON (used by peak_memory)."""
    parser = argparse.ArgumentParser(description="measure the peak memory of one pixel-aligned query")
    parser.add_argument("implementation", choices=IMPLEMENTATIONS)
    parser.add_argument("decoder", choices=sorted(DECODERS))
    parser.add_argument("count", type=int)
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args(argv)
    print(json.dumps(_measure_here(args.implementation, args.decoder, args.count, "cpu", args.size)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
