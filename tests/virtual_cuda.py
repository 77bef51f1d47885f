"""A simulated CUDA device for machines without a GPU: tensors that say they are on 'cuda:0'
and compute on the CPU, so the package's CUDA code paths in Python (device arguments,
transfers, the choices made on `tensor.is_cuda`) run and can be compared with the CPU's.

Inside `virtual_cuda()`, `torch.cuda.is_available()` is True, `device='cuda'` makes
VirtualCudaTensor objects, and every ATen or custom op on them runs its CPU kernel on the
wrapped CPU tensors (so the CUDA kernels themselves are not run: they need a GPU). Ops mixing
a virtual CUDA tensor with a CPU tensor are refused as CUDA refuses them (a CPU tensor of zero
dimensions is allowed, as in TensorIterator ops; copies and indexing with CPU indices too),
and so are random draws on a CUDA device with a CPU generator. The DeviceTraffic it yields
counts what would make the host wait for the GPU.

Not simulated: streams, events, CUDA graphs, memory statistics (0), `Tensor.data_ptr()` and
storages of virtual tensors, `Tensor.to(memory_format=...)` to or from the device, and C++ code
that makes tensors from a virtual tensor's options other than by the `new_*` ops (they land on
the CPU, and the next op mixing them with the device refuses them).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import traceback

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

VIRTUAL_DEVICE = torch.device("cuda", 0)

# Advanced indexing (reads and writes): CUDA moves CPU index tensors to the indexed tensor's device.
_INDEX_OPS = {
    torch.ops.aten.index.Tensor,
    torch.ops.aten.index_put_.default,
    torch.ops.aten.index_put.default,
    torch.ops.aten._index_put_impl_.default,
}
# Ops that CUDA runs with operands on different devices: indexing, copies and the transfer itself.
_CROSS_DEVICE_OPS = {torch.ops.aten.copy_.default, torch.ops.aten._to_copy.default, *_INDEX_OPS}

# Ops whose output size CUDA learns from the values, by a synchronisation.
_SIZED_BY_VALUES_OPS = {
    torch.ops.aten.nonzero.default,
    torch.ops.aten.masked_select.default,
    torch.ops.aten._unique2.default,
    torch.ops.aten.unique_dim.default,
    torch.ops.aten.unique_consecutive.default,
}

_NEW_LIKE_OPS = {
    torch.ops.aten.new_empty.default,
    torch.ops.aten.new_empty_strided.default,
    torch.ops.aten.new_zeros.default,
    torch.ops.aten.new_ones.default,
    torch.ops.aten.new_full.default,
}


class VirtualCudaTensor(torch.Tensor):
    """A tensor on the simulated 'cuda:0' holding its values in a CPU tensor, `inner`. To C++ it
    is a CPU tensor (so autograd never asks the real runtime for a stream); Python code sees
    `device` cuda:0 and `is_cuda`."""

    inner: torch.Tensor

    @staticmethod
    def __new__(cls, inner: torch.Tensor):
        tensor = torch.Tensor._make_wrapper_subclass(
            cls, inner.size(), strides=inner.stride(), storage_offset=inner.storage_offset(), dtype=inner.dtype,
            layout=inner.layout, device=inner.device, requires_grad=False)
        tensor.inner = inner
        return tensor

    @property
    def device(self) -> torch.device:
        return VIRTUAL_DEVICE

    @property
    def is_cuda(self) -> bool:
        return True

    @property
    def is_cpu(self) -> bool:
        return False

    def get_device(self) -> int:
        return 0

    def __repr__(self, *, tensor_contents=None):
        return f"VirtualCudaTensor({self.inner!r})"

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        raise RuntimeError(f"{func} got a virtual CUDA tensor outside virtual_cuda()")


def _is_cuda(device) -> bool:
    return device is not None and torch.device(device).type == "cuda"


@dataclasses.dataclass
class DeviceTraffic:
    """What a simulated run made the host wait for or compute, as a GPU run would have it.

    host_reads: device-to-host copies (`.cpu()`, `.item()`, `.tolist()`), each a synchronisation.
    sized_by_values: ops whose output size depends on the values (`nonzero`, boolean masks,
        `unique`), which synchronise as well.
    host_elements: per op, the elements of CPU tensors it wrote while no operand was on the
        device: work left on the CPU.
    sites: where the synchronisations came from ('path:line code' of the innermost package
        frame; 'sized ' before those of sized_by_values).
    """

    host_reads: int = 0
    sized_by_values: int = 0
    host_elements: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    sites: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    @property
    def synchronisations(self) -> int:
        """host_reads + sized_by_values."""
        return self.host_reads + self.sized_by_values


def _indexes_by_mask(func, args) -> bool:
    """Whether func is advanced indexing (read or write) with a boolean mask, which CUDA turns
    into indices by a `nonzero`."""
    if func not in _INDEX_OPS:
        return False
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in args[1])


def _caller() -> str:
    """The innermost frame of the package that led here, as 'path:line code'."""
    for frame in reversed(traceback.extract_stack()):
        if "/get3dhuman/" in frame.filename:
            return f"{frame.filename.split('/get3dhuman/')[-1]}:{frame.lineno} {frame.line}"
    return "?"


class _VirtualCudaMode(TorchDispatchMode):
    def __init__(self, traffic: DeviceTraffic):
        super().__init__()
        self.traffic = traffic

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        wrappers = {}
        on_cuda, on_cpu = False, False

        def unwrap(value):
            nonlocal on_cuda, on_cpu
            if isinstance(value, VirtualCudaTensor):
                on_cuda = True
                wrappers[id(value.inner)] = value
                return value.inner
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                on_cpu = True
            return value

        first_cuda = bool(args) and isinstance(args[0], VirtualCudaTensor)
        args, kwargs = tree_map(unwrap, (args, kwargs))
        target_cuda = on_cuda
        if func is torch.ops.aten._to_copy.default:
            target_cuda = _is_cuda(kwargs["device"]) if kwargs.get("device") is not None else on_cuda
        elif func in _CROSS_DEVICE_OPS:  # the result is where the indexed or copied-into tensor is
            if on_cuda and not first_cuda and func is not torch.ops.aten.copy_.default:
                raise RuntimeError("indices should be either on cpu or on the same device as the indexed tensor (cpu)")
            target_cuda = first_cuda
        elif on_cuda and on_cpu:
            raise RuntimeError(f"Expected all tensors to be on the same device, but found at least two devices, "
                               f"cuda:0 and cpu! ({func})")
        if "device" in kwargs:
            # C++ code makes `self.new_empty_strided(..., self.options())` (convolution backward),
            # whose device is the CPU that C++ sees: a new_* op follows its operand.
            follows_operand = kwargs["device"] is None or func in _NEW_LIKE_OPS
            target_cuda = _is_cuda(kwargs["device"]) or (follows_operand and on_cuda)
            kwargs["device"] = torch.device("cpu")
        generator = kwargs.get("generator")
        if target_cuda and generator is not None and generator.device.type != "cuda":
            raise RuntimeError(f"Expected a 'cuda' device type for generator but found '{generator.device.type}'")
        result = func(*args, **kwargs)
        self._record(func, args, on_cuda, target_cuda, result)

        def wrap(value):
            if isinstance(value, torch.Tensor) and not isinstance(value, VirtualCudaTensor):
                if id(value) in wrappers:  # in-place and out= ops return their operand
                    return wrappers[id(value)]
                if target_cuda:
                    return VirtualCudaTensor(value)
            return value

        return tree_map(wrap, result)

    def _record(self, func, args, on_cuda: bool, target_cuda: bool, result) -> None:
        if on_cuda and (not target_cuda or func is torch.ops.aten._local_scalar_dense.default):
            self.traffic.host_reads += 1
            self.traffic.sites[_caller()] += 1
        elif on_cuda and (func in _SIZED_BY_VALUES_OPS or _indexes_by_mask(func, args)):
            self.traffic.sized_by_values += 1
            self.traffic.sites["sized " + _caller()] += 1
        elif not on_cuda and not target_cuda:
            outputs = [t for t in tree_flatten(result)[0] if isinstance(t, torch.Tensor)]
            self.traffic.host_elements[str(func.overloadpacket)] += sum(t.numel() for t in outputs)


_CUDA_MODULE_STUBS = {
    "is_available": lambda: True,
    "device_count": lambda: 1,
    "current_device": lambda: 0,
    "get_device_name": lambda device=None: "virtual CUDA device (CPU)",
    "get_device_capability": lambda device=None: (9, 0),
    "synchronize": lambda device=None: None,
    "reset_peak_memory_stats": lambda device=None: None,
    "memory_allocated": lambda device=None: 0,
    "max_memory_allocated": lambda device=None: 0,
    "set_device": lambda device: None,
    "_lazy_init": lambda: None,
    # (free, total) bytes: the host's, where the simulated device's tensors live.
    "mem_get_info": lambda device=None: tuple(os.sysconf(name) * os.sysconf("SC_PAGE_SIZE")
                                              for name in ("SC_AVPHYS_PAGES", "SC_PHYS_PAGES")),
}


def _no_triton(tensor, explicit=True) -> str:
    return "Triton kernels are not simulated (virtual_cuda(triton=False))"


def _from_data(make):
    """torch.tensor / torch.as_tensor for the virtual device: made on the CPU, then moved (their
    C++ path would set the real CUDA device first)."""

    def from_data(data, *args, device=None, **kwargs):
        if _is_cuda(device):
            return make(data, *args, **kwargs).to(device)
        return make(data, *args, device=device, **kwargs)

    return from_data


def _transfer(tensor, device, dtype, copy=False):
    """Tensor.to for the virtual device: C++ sees a virtual tensor as a CPU one, so moves to and
    from 'cuda' are made here as the copies they are on a GPU."""
    source_cuda = isinstance(tensor, VirtualCudaTensor)
    target_cuda = source_cuda if device is None else torch.device(device).type == "cuda"
    if target_cuda == source_cuda and (dtype is None or dtype == tensor.dtype) and not copy:
        return tensor
    return torch.ops.aten._to_copy.default(tensor, dtype=dtype or tensor.dtype,
                                           device=VIRTUAL_DEVICE if target_cuda else torch.device("cpu"))


def _to(self, *args, copy=False, **kwargs):
    if args and isinstance(args[0], VirtualCudaTensor):  # to(other): other's device and dtype (C++ sees a CPU one)
        args = (VIRTUAL_DEVICE, args[0].dtype, *args[1:])
    device, dtype, _, memory_format = torch._C._nn._parse_to(*args, **kwargs)  # (device, dtype, non_blocking, format)
    if isinstance(self, VirtualCudaTensor) or (device is not None and device.type == "cuda"):
        if memory_format is not None:
            raise NotImplementedError("virtual_cuda: Tensor.to(memory_format=...) is not simulated")
        return _transfer(self, device, dtype, copy=copy)
    return _ORIGINAL_TO(self, *args, copy=copy, **kwargs)


def _numpy(self, *, force=False):
    if isinstance(self, VirtualCudaTensor):  # as CUDA refuses it
        raise TypeError("can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() to copy the tensor to "
                        "host memory first.")
    return _ORIGINAL_NUMPY(self, force=force)


_ORIGINAL_TO, _ORIGINAL_NUMPY, _ORIGINAL_TOLIST = torch.Tensor.to, torch.Tensor.numpy, torch.Tensor.tolist
_TENSOR_METHODS = {
    "numpy": _numpy,
    "tolist": lambda self: _ORIGINAL_TOLIST(_transfer(self, torch.device("cpu"), None)),
    "to": _to,
    "cuda": lambda self, device=None, non_blocking=False, memory_format=None: _transfer(self, VIRTUAL_DEVICE, None),
    "cpu": lambda self, memory_format=None: _transfer(self, torch.device("cpu"), None),
}


@contextlib.contextmanager
def virtual_cuda(triton: bool = False):
    """Simulates one CUDA device while active (see the module docstring); yields the run's
    DeviceTraffic.

    triton: let get3dhuman choose its Triton kernels for virtual tensors. They then run on the
    CPU tensors inside, in the Triton interpreter (TRITON_INTERPRET=1), minutes for a human.
    Without it the package is told that Triton cannot run (as on a GPU without Triton)."""
    from get3dhuman.ops import query, stylegan2

    patches = [(torch.cuda, name, stub) for name, stub in _CUDA_MODULE_STUBS.items()]
    if not triton:
        patches += [(module, "triton_device_reason", _no_triton) for module in (query, stylegan2)]
    patches += [(torch, name, _from_data(getattr(torch, name))) for name in ("tensor", "as_tensor")]
    patches += [(torch.Tensor, name, method) for name, method in _TENSOR_METHODS.items()]
    # Optimizers ask the real runtime whether a CUDA graph is being captured.
    patches.append((torch.optim.Optimizer, "_accelerator_graph_capture_health_check", lambda self: None))
    originals = [(module, name, getattr(module, name)) for module, name, _ in patches]
    for module, name, replacement in patches:
        setattr(module, name, replacement)
    # Module.to would assign a virtual parameter's .data to the CPU parameter (C++ sees two CPU
    # tensors); swapping the tensors keeps the wrapper.
    swap = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        traffic = DeviceTraffic()
        with _VirtualCudaMode(traffic):
            yield traffic
    finally:
        torch.__future__.set_swap_module_params_on_conversion(swap)
        for module, name, original in originals:
            setattr(module, name, original)


def to_cpu(tree):
    """`tree` (nested lists, tuples and dicts of tensors) with every tensor a plain CPU tensor."""
    return tree_map(lambda t: t.inner.clone() if isinstance(t, VirtualCudaTensor) else t, tree)
