"""Measurement helpers shared by the benchmark suite, the tests and the command line.

`measure_sampling` (`get3dhuman bench`) times what `get3dhuman sample` spends on the model
(Generator.extract_mesh: networks, field queries, narrow band, marching cubes, vertex colours;
not the files it writes) for a few seeds, after one untimed warm-up, and reports the throughput
with the time of each stage: how many humans an hour a machine makes. The benchmark suite
(`pytest benchmarks --benchmark-only`, BENCHMARKS.md) compares every kernel with its reference.

Peak memory of a CPU query is measured in a fresh process (``python -m get3dhuman.benchmark``)
as the growth of the peak resident set size (Linux VmHWM, reset just before the query), so
allocator caches of earlier runs cannot hide or inflate it; on CUDA it is the growth of
torch's peak allocated memory.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from get3dhuman._checks import check_int, check_seed
from get3dhuman.mesh import ExtractionTimings, MeshingOptions
from get3dhuman.nn import ImplicitDecoder
from get3dhuman.ops import query_field, reference_query_field

# query_field variants, and the projected one with bfloat16 matrix products (`compute_dtype`).
IMPLEMENTATIONS = ("reference", "direct", "projected", "projected-bf16")
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
    """Evaluates the query with one of IMPLEMENTATIONS: 'reference' or a query_field variant."""
    if implementation == "reference":
        return reference_query_field(decoder, features, points, calib)
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    variant, _, narrow = implementation.partition("-")
    return query_field(decoder, features, points, calib, variant=variant,
                       compute_dtype=torch.bfloat16 if narrow else None)


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


# Fields of ExtractionTimings, with the names `summary` prints.
STAGES = {"networks": "networks", "queries": "queries", "narrow_band": "narrow band",
          "marching_cubes": "marching cubes", "colors": "colours", "texture": "texture"}


@dataclasses.dataclass
class SamplingBenchmark:
    """What `measure_sampling` measured.

    seconds: wall-clock seconds of each timed run (all `humans` of it); stages: seconds a human
    per stage (STAGES) in the median run (of an even number: the faster middle one);
    evaluated_fraction: the mean fraction of the lattice's points whose field was evaluated in
    that run; faces, vertices: means a human; dtype: of the generator's weights and networks;
    compute_dtype: of the decoders' matrix products.
    """

    device: str
    resolution: int
    humans: int
    batch_size: int
    seconds: list[float]
    stages: dict[str, float]
    evaluated_fraction: float
    faces: float
    vertices: float
    compute_dtype: str
    dtype: str = "float32"

    @property
    def seconds_per_human(self) -> float:
        """The median run's seconds divided by its humans."""
        return statistics.median(self.seconds) / self.humans

    @property
    def humans_per_second(self) -> float:
        """1 / seconds_per_human."""
        return 1.0 / self.seconds_per_human

    def to_dict(self) -> dict:
        """The fields and the two rates, for JSON."""
        return {**dataclasses.asdict(self), "seconds_per_human": self.seconds_per_human,
                "humans_per_second": self.humans_per_second}

    def summary(self) -> str:
        """Three lines for people: the throughput, the stages, the meshes."""
        stages = ", ".join(f"{STAGES[name]} {seconds:.3f} s" for name, seconds in self.stages.items())
        runs = "1 run" if len(self.seconds) == 1 else f"the median of {len(self.seconds)} runs"
        return (f"{self.humans} human{'s' if self.humans > 1 else ''} at {self.resolution}^3 on {self.device} (batches "
                f"of {self.batch_size}, {self.dtype} networks, {self.compute_dtype} decoder products), {runs}: "
                f"{self.seconds_per_human:.3f} s a human, "
                f"{self.humans_per_second:.2f} humans/s, {3600 * self.humans_per_second:,.0f} an hour\n"
                f"  a human: {stages}\n"
                f"  {100 * self.evaluated_fraction:.2f} % of the lattice points evaluated; {self.faces:,.0f} faces and "
                f"{self.vertices:,.0f} vertices a human")


def measure_sampling(generator, num: int = 4, resolution: int = 256, *, batch_size: int = 4, seed: int = 0,
                     repeat: int = 3, truncation_psi: float = 1.0, meshing: MeshingOptions | None = None,
                     **extract_options) -> SamplingBenchmark:
    """Times `generator.sample` (extract_mesh) of the humans of seeds seed .. seed + num - 1 in
    batches of `batch_size`, `repeat` times, after one untimed run of the first seed (first
    calls allocate and pick kernels), on the generator's device (synchronised before every
    clock reading). `meshing` and other options go to `extract_mesh`."""
    num, batch_size, repeat, resolution = (check_int(value, name, 1) for value, name in (
        (num, "num"), (batch_size, "batch_size"), (repeat, "repeat"), (resolution, "resolution")))
    seed = check_seed(seed)
    weights = next(generator.parameters())
    device, weights_dtype = weights.device, weights.dtype

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def run(count: int, timings: ExtractionTimings) -> list:
        return generator.sample(count, seed, resolution, batch_size=batch_size, truncation_psi=truncation_psi,
                                timings=timings, meshing=meshing, **extract_options)

    run(1, ExtractionTimings())
    seconds, timings = [], []
    for _ in range(repeat):
        timings.append(ExtractionTimings())
        synchronize()
        start = time.perf_counter()
        meshes = run(num, timings[-1])
        synchronize()
        seconds.append(time.perf_counter() - start)
    median_run = sorted(range(repeat), key=seconds.__getitem__)[(repeat - 1) // 2]
    stages = {name: getattr(timings[median_run], name) / num for name in STAGES}
    return SamplingBenchmark(
        device=str(device), resolution=resolution, humans=num, batch_size=batch_size, seconds=seconds, stages=stages,
        evaluated_fraction=statistics.fmean(timings[median_run].evaluated_fraction),
        faces=statistics.fmean(mesh.faces.shape[0] for mesh in meshes),
        vertices=statistics.fmean(mesh.vertices.shape[0] for mesh in meshes),
        compute_dtype=str((meshing and meshing.compute_dtype) or weights_dtype).removeprefix("torch."),
        dtype=str(weights_dtype).removeprefix("torch."))


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
