"""Deterministic random inputs shared by the tests and the benchmarks."""

import ast
import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import get3dhuman
from get3dhuman import kernels

# CUDA tests and benchmarks run where a GPU is present and the CUDA kernels were compiled.
CUDA_READY = torch.cuda.is_available() and "cuda" in get3dhuman.build_info()["compiled_backends"]


def triton_test_device() -> str:
    """Where a test module's Triton kernels run: 'cuda' with a GPU, else 'cpu' in the Triton
    interpreter (conftest sets TRITON_INTERPRET=1). Skips the calling module when neither can."""
    pytest.importorskip("triton")
    reason = kernels.triton_unusable_reason()
    if reason is not None:
        pytest.skip(reason, allow_module_level=True)
    if torch.cuda.is_available():
        return "cuda"
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("no GPU and TRITON_INTERPRET is not 1", allow_module_level=True)
    return "cpu"


def compile_without_interpreter(script: str, workdir) -> None:
    """Runs `script` (which prints 'compiled' when done) in a fresh Python with
    TRITON_INTERPRET=0, outside the source tree, and asserts that it succeeded: Triton's real
    compiler, which needs no GPU, checks what the interpreter cannot."""
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], env=env, cwd=workdir, capture_output=True, text=True,
        timeout=900, check=False,
    )
    assert result.returncode == 0 and "compiled" in result.stdout, result.stderr[-3000:]


def resumed_equals_straight(train, config, workdir, *inputs):
    """Trains `config` straight through, and again stopped after 2 steps and resumed; asserts
    that both end with identical weights. train(config, *inputs, out_dir, progress=False).
    Returns the resumed model and the metrics records of the resumed run."""
    straight = train(config, *inputs, str(workdir / "straight"), progress=False)
    train(dataclasses.replace(config, steps=2), *inputs, str(workdir / "resumed"), progress=False)
    resumed = train(config, *inputs, str(workdir / "resumed"), progress=False)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    with open(workdir / "resumed" / "metrics.jsonl") as log:
        return resumed, [json.loads(line) for line in log]


def random_calib(batch, dtype=torch.float32, seed=0):
    """[B, 4, 4] orthographic calibrations, each with its own rotation, scale and offset."""
    generator = torch.Generator().manual_seed(seed)
    calib = torch.zeros(batch, 4, 4, dtype=torch.float64)
    for b in range(batch):
        q, _ = torch.linalg.qr(torch.randn(3, 3, generator=generator, dtype=torch.float64))
        scale = 0.7 + 0.6 * torch.rand(3, generator=generator, dtype=torch.float64)
        calib[b, :3, :3] = q * scale
        calib[b, :3, 3] = 0.2 * torch.randn(3, generator=generator, dtype=torch.float64)
        calib[b, 3, 3] = 1
    return calib.to(dtype)


def random_inputs(batch=2, channels=5, height=7, width=9, count=200, dtype=torch.float32, device="cpu", seed=0):
    """features [B,C,H,W], points [B,N,3] (about a third projecting outside the image), calib."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, channels, height, width, generator=generator, dtype=torch.float64)
    points = (torch.rand(batch, count, 3, generator=generator, dtype=torch.float64) * 2 - 1) * 1.4
    calib = random_calib(batch, torch.float64, seed)
    return tuple(t.to(device=device, dtype=dtype) for t in (features, points, calib))


# Parameter names and shapes of the authors' generator module (a copy of
# shared/reference/official-checkpoint-keys.tsv, so the tests do not depend on ../shared), and of
# their refinement module, `refinenet(isTrain=False)` (its `rnet` is `Generate(3, 3)` of their
# libs/models_social_media.py; listed from an instance of their class).
OFFICIAL_KEYS_FILE = os.path.join(os.path.dirname(__file__), "data", "official-checkpoint-keys.tsv")
OFFICIAL_REFINER_KEYS_FILE = os.path.join(os.path.dirname(__file__), "data", "official-refiner-keys.tsv")


def official_checkpoint_layout(prefix: str = "", keys_file: str = OFFICIAL_KEYS_FILE) -> dict[str, tuple[int, ...]]:
    """{name without `prefix`: shape} of every tensor of `keys_file` (the generator's by
    default) whose name starts with `prefix`."""
    with open(keys_file) as keys:
        rows = [line.rstrip("\n").split("\t") for line in keys if line.strip()]
    return {name[len(prefix):]: tuple(ast.literal_eval(shape)) for name, shape in rows if name.startswith(prefix)}


def generator_with_a_surface(seen_from_the_front: bool = False, preset: str = "tiny"):
    """A random Generator (of `preset`) whose occupancy is shifted to cross 0.5 inside the box.

    A random decoder is nearly monotone in depth, and falls along the front camera's rays, which
    then start inside and hit nothing (render.ray_march); `seen_from_the_front` negates the
    depth feature, so that the occupancy grows away from the camera and the front view shows a
    surface."""
    torch.manual_seed(0)
    generator = get3dhuman.Generator(preset)
    if seen_from_the_front:
        generator.config = dataclasses.replace(generator.config, depth_scale=-generator.config.depth_scale)
    z = torch.randn(4, generator.config.z_dim)
    with torch.no_grad():
        shape = generator.shape_features(z)
        probe = generator.query_occupancy(shape.volume, torch.rand(4, 4096, 3) * 1.6 - 0.8)
        generator.mlp_shape.filters[-1].bias -= torch.logit(probe.median())
    return generator


def generator_with_their_conventions():
    """A tiny random generator with the authors' camera and conventions whose front view hits a
    surface: its occupancy shifted to cross 0.5, growing away from the front, and made 50 times
    steeper, so that their 55 steps of (2 o - 1) * 25 / 128 reach it (half the front view's
    pixels at 32 px; none of the back view's, which starts inside)."""
    from get3dhuman.nn.generator import OFFICIAL_CALIBRATION

    generator = generator_with_a_surface(seen_from_the_front=True)
    with torch.no_grad():
        generator.mlp_shape.filters[-1].weight *= 50
        generator.mlp_shape.filters[-1].bias *= 50
    conventions = get3dhuman.Generator(dataclasses.replace(generator.config, authors_conventions=True)).eval()
    conventions.load_state_dict(generator.state_dict())
    conventions.calibration.copy_(OFFICIAL_CALIBRATION)
    return conventions


PROCESSES = 2  # of the torchrun tests
# Threads of each torchrun process (torchrun's default, made explicit): an oracle that must
# match them bit for bit runs with as many, as some CPUs' oneDNN and MKL kernels split a
# reduction between threads (so the rounding depends on the thread count).
THREADS_PER_PROCESS = 1


def torchrun(*arguments: str, cwd) -> None:
    """`torchrun --standalone --nproc-per-node 2 -m get3dhuman.cli ARGUMENTS` with
    THREADS_PER_PROCESS threads a process; fails the test on error."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={PROCESSES}",
               "-m", "get3dhuman.cli", *arguments, "--quiet"]
    environment = {**os.environ, "OMP_NUM_THREADS": str(THREADS_PER_PROCESS)}
    result = subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@contextlib.contextmanager
def torch_threads(count: int):
    """Runs the block with `count` torch threads, then restores the previous number."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def write_network_pickle(path, networks: dict, init_kwargs: dict, protocol: int = 4, plain_modules: tuple = ()) -> None:
    """Writes the torch modules `networks` (name -> module, or any picklable value) to `path` as
    NVIDIA's torch_utils.persistence pickles store them (StyleGAN2-ADA, StyleGAN-Human): every
    module a call `torch_utils.persistence._reconstruct_persistent_obj(meta)` whose meta holds a
    module source (one that raises if ever executed) and the module's attributes, the
    constructor's keyword arguments `init_kwargs[name]` (dnnlib.util.EasyDict) recorded on the
    top networks; modules of the types `plain_modules` are pickled as torch pickles them (no
    persistence). The two packages are stood in for while writing and removed afterwards."""
    import pickle
    import types

    fakes = {name: types.ModuleType(name) for name in ("torch_utils", "torch_utils.persistence", "dnnlib", "dnnlib.util")}

    def _reconstruct_persistent_obj(meta):
        raise AssertionError("only written here")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    easy_dict = type("EasyDict", (dict,), {"__module__": "dnnlib.util"})
    fakes["torch_utils.persistence"]._reconstruct_persistent_obj = _reconstruct_persistent_obj
    fakes["dnnlib.util"].EasyDict = easy_dict
    tops = {id(module): name for name, module in networks.items()}

    class PersistencePickler(pickle.Pickler):
        def reducer_override(self, obj):
            if not isinstance(obj, torch.nn.Module) or isinstance(obj, plain_modules):
                return NotImplemented
            state = dict(obj.__dict__)
            kwargs = init_kwargs.get(tops.get(id(obj)), {})
            state["_init_args"] = ()
            state["_init_kwargs"] = easy_dict({k: easy_dict(v) if isinstance(v, dict) else v for k, v in kwargs.items()})
            meta = {"type": "class", "version": 6, "module_src": "raise SystemExit('executed the module source')",
                    "class_name": type(obj).__name__, "state": state}
            return _reconstruct_persistent_obj, (meta,)

    saved = {name: sys.modules.get(name) for name in fakes}
    sys.modules.update(fakes)
    try:
        with open(path, "wb") as handle:
            PersistencePickler(handle, protocol=protocol).dump(networks)
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name)
            else:
                sys.modules[name] = module


# Mesh checks shared by the meshing tests.


def edge_use(faces):
    """{(a, b): count} of directed edges."""
    f = faces.numpy()
    directed = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    keys, counts = np.unique(directed, axis=0, return_counts=True)
    return keys, counts


def assert_closed_oriented(vertices, faces):
    """Every edge used by exactly two faces, in opposite directions; no unused vertex."""
    keys, counts = edge_use(faces)
    assert (counts == 1).all(), "a directed edge is used twice: inconsistent orientation or non-manifold edge"
    reverse = {tuple(k) for k in keys}
    assert all((b, a) in reverse for a, b in keys), "an edge has a single face: the mesh is open"
    assert np.array_equal(np.unique(faces.numpy()), np.arange(len(vertices)))


def signed_volume(vertices, faces):
    v = vertices.double()[faces]
    return float(torch.linalg.det(v).sum() / 6)


def humans(count, seed=0):
    """Parameters [count, P] of synthetic humans of seeded latents."""
    from get3dhuman.synthetic import human_parameters

    generator = torch.Generator().manual_seed(seed)
    return human_parameters(torch.randn(count, 512, generator=generator))
