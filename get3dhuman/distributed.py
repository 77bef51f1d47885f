"""Data-parallel training across processes, launched by torchrun.

`torchrun --nproc-per-node N -m get3dhuman.cli train STAGE ...` starts N processes; each joins
the process group (`initialize`: NCCL on CUDA, each process on GPU LOCAL_RANK; Gloo on the CPU),
draws its own share of every step's batch (`rank_generator`, `local_batch_size`: the stage's
`batch_size` is the global batch), and averages gradients with the others before each optimiser
step (`average_gradients`, one flat all-reduce per update, as StyleGAN2-ADA does: it works with
R1's double backward, frozen decoders and alternating optimisers, where DistributedDataParallel's
hooks do not). Rank 0 alone writes logs and checkpoints; at every checkpoint the buffers (BatchNorm
statistics, which no training step reads) are set to rank 0's and `check_in_sync` verifies
that the ranks hold the same weights. Without torchrun every function here is the single-process identity.
"""

from __future__ import annotations

import atexit
import os
import sys

import numpy as np
import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """(rank, world size) of this process: (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """True on rank 0 (the process that writes logs and checkpoints) and outside a process group."""
    return world()[0] == 0


def initialize(device: str) -> str:
    """Joins torchrun's process group if this process was launched by it (WORLD_SIZE > 1 in the
    environment) and has not joined yet; returns the device this process trains on: for a CUDA
    `device` under torchrun, the GPU LOCAL_RANK, else `device` unchanged."""
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    cuda = torch.device(device).type == "cuda"
    if launched and not dist.is_initialized():
        if cuda:
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        dist.init_process_group("nccl" if cuda else "gloo")
        # Exiting with the group's threads still running aborted a Gloo process now and then
        # ("terminate called without an active exception").
        atexit.register(leave)
    if launched and cuda:
        return f"cuda:{int(os.environ['LOCAL_RANK'])}"
    return device


def leave() -> None:
    """Destroys this process's process group, if it has one (registered at exit by `initialize`)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def exit_process(status: int) -> None:
    """Ends this process with exit `status`. In a process group (a torchrun rank): leaves the
    group, flushes stdout and stderr and exits at once, skipping the interpreter's teardown;
    otherwise `sys.exit(status)`. Even after the group was destroyed, that teardown aborted a
    Gloo rank now and then ("terminate called without an active exception": 3 of about 40 runs
    of the test suite's torchrun stages). Every file is closed by then."""
    if not (dist.is_available() and dist.is_initialized()):
        sys.exit(status)
    leave()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def local_batch_size(batch_size: int, size: int | None = None) -> int:
    """The share of a global batch of one of `size` processes (default: this run's world size);
    raises ValueError unless `size` divides `batch_size`."""
    size = world()[1] if size is None else size
    if batch_size % size:
        raise ValueError(f"batch_size must be a multiple of the number of processes ({size}), got {batch_size}")
    return batch_size // size


def rank_generator(seed: int, step: int, rank: int | None = None) -> torch.Generator:
    """The random stream of process `rank` (default: this one) at `step` of a run seeded `seed`:
    independent across seeds, steps and ranks, and the same again on a resumed run."""
    rank = world()[0] if rank is None else rank
    state = np.random.SeedSequence([seed, step, rank]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def barrier() -> None:
    """Waits for every process (no-op in one process)."""
    if world()[1] > 1:
        dist.barrier()


def _flat_all_reduce(tensors: list[torch.Tensor], op) -> torch.Tensor:
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat, op=op)
    return flat


def average_gradients(parameters) -> None:
    """Replaces each gradient by its mean over the processes (one flat all-reduce). Every
    process must hold gradients for the same parameters, as it does running the same step.
    No-op in one process."""
    _, size = world()
    with_gradient = [p for p in parameters if p.grad is not None]
    if size == 1 or not with_gradient:
        return
    flat = _flat_all_reduce([p.grad for p in with_gradient], dist.ReduceOp.SUM) / size
    for parameter, gradient in zip(with_gradient, flat.split([p.numel() for p in with_gradient])):
        parameter.grad.copy_(gradient.view_as(parameter))


def average_metrics(record: dict[str, float]) -> dict[str, float]:
    """The mean of each value over the processes (every process must pass the same keys)."""
    _, size = world()
    if size == 1:
        return record
    keys = sorted(record)
    # NCCL reduces CUDA tensors only: the values travel on this process's GPU there.
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    values = torch.tensor([float(record[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(values)
    return dict(zip(keys, (values / size).tolist()))


def _state_tensors(modules: dict[str, torch.nn.Module], buffers_only: bool) -> list[torch.Tensor]:
    tensors = []
    for module in modules.values():
        tensors += list(module.buffers())
        if not buffers_only:
            tensors += [p.data for p in module.parameters()]
    return tensors


def broadcast_state(modules: dict[str, torch.nn.Module], buffers_only: bool = False) -> None:
    """Copies rank 0's parameters and buffers (or buffers only) to every process."""
    if world()[1] == 1:
        return
    for tensor in _state_tensors(modules, buffers_only):
        dist.broadcast(tensor, src=0)


def check_in_sync(modules: dict[str, torch.nn.Module]) -> None:
    """Raises RuntimeError naming the first module whose weights differ between processes."""
    if world()[1] == 1:
        return
    for name, module in modules.items():
        tensors = [t.float() for t in _state_tensors({name: module}, buffers_only=False)]
        if not tensors:
            continue
        largest = _flat_all_reduce(tensors, dist.ReduceOp.MAX)
        smallest = _flat_all_reduce(tensors, dist.ReduceOp.MIN)
        if not torch.equal(largest, smallest):
            raise RuntimeError(f"the processes' copies of {name!r} differ: data-parallel training lost sync")
