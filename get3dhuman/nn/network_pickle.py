"""Data-only reading of StyleGAN2-ADA network pickles (StyleGAN-Human's releases among them).

Those files are pickles of NVIDIA's `torch_utils.persistence` classes: every network is stored
as a call `_reconstruct_persistent_obj(meta)` whose meta carries the source code of the
network's module (which a plain `pickle.load` would execute) and the object's state. This
reader executes nothing of the file: it resolves only the globals of a fixed allow-list
(containers, torch's tensor rebuilders with storages read by `torch.load(weights_only=True)`,
numpy scalars and arrays), turns each network object into a `PickledModule` record of its
class name, constructor arguments and state, and refuses every other global by name.
"""

from __future__ import annotations

import _compat_pickle
import collections
import io
import os
import pickle

import numpy as np
import torch

from get3dhuman._checks import check_file

try:
    from numpy._core import multiarray as _multiarray
except ImportError:  # numpy 1
    from numpy.core import multiarray as _multiarray


class PickledModule:
    """A network object of a pickle, as data: `class_name`, `init_kwargs` (the constructor's
    keyword arguments that `torch_utils.persistence` records; {} for plain torch modules) and
    `state` (the object's attributes: `_parameters`, `_buffers`, `_modules`, ...)."""

    class_name = "?"

    def __init__(self, class_name: str, state: dict):
        self.class_name = class_name
        self.__setstate__(state)

    def __setstate__(self, state) -> None:
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(f"a network object of class {self.class_name} holds a state of type "
                                         f"{type(state).__name__}, not a dict")
        self.state = state
        self.init_kwargs = dict(state.get("_init_kwargs") or {})

    def __repr__(self) -> str:
        return f"PickledModule({self.class_name}, {len(self.state_dict())} tensors)"

    def submodules(self) -> dict[str, PickledModule]:
        """The direct child networks by attribute name."""
        return {name: child for name, child in (self.state.get("_modules") or {}).items() if child is not None}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Parameters and buffers of this network and its children by dotted name, as
        `torch.nn.Module.state_dict` names them (`mapping.fc0.weight`, ...)."""
        tensors = {}
        for group in ("_parameters", "_buffers"):
            tensors.update({name: value for name, value in (self.state.get(group) or {}).items()
                            if isinstance(value, torch.Tensor)})
        for name, child in self.submodules().items():
            tensors.update({f"{name}.{key}": value for key, value in child.state_dict().items()})
        return tensors

    def class_names(self) -> set[str]:
        """The class names of this network and of every network below it."""
        names = {self.class_name}
        for child in self.submodules().values():
            names |= child.class_names()
        return names


def _reconstruct_persistent_obj(meta) -> PickledModule:
    if not isinstance(meta, dict) or meta.get("type") != "class":
        raise pickle.UnpicklingError("a torch_utils.persistence object that is not a class instance "
                                     f"(type {meta.get('type') if isinstance(meta, dict) else meta!r})")
    return PickledModule(str(meta.get("class_name")), meta.get("state") or {})


def _parameter(data, requires_grad=False, backward_hooks=None, state=None) -> torch.Tensor:
    return data  # weights are read, not trained here: a plain tensor


def _storage_from_bytes(data: bytes):
    return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")


def _reconstructor(cls, base, state):  # copyreg._reconstructor of protocol 0/1 pickles, for allowed classes only
    if isinstance(cls, type) and issubclass(cls, PickledModule) and base is object:
        return cls.__new__(cls)
    if isinstance(cls, type) and issubclass(cls, dict) and base is dict:
        return cls(state)
    raise pickle.UnpicklingError(f"copyreg._reconstructor of {cls!r} on {base!r} is not allowed")


def _bytes_of_text(text: str, encoding: str = "latin1") -> bytes:  # how protocols 0-2 store bytes
    if encoding != "latin1":
        raise pickle.UnpicklingError(f"_codecs.encode with {encoding!r} is not allowed")
    return text.encode("latin1")


class EasyDict(dict):
    """dnnlib's attribute dictionary (constructor arguments), read as a plain dict."""


def _plain_module_class(module: str, name: str) -> type:
    # A torch.nn container or layer pickled without torch_utils.persistence: kept as a record.
    return type(name, (PickledModule,), {"class_name": f"{module}.{name}"})


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("copyreg", "_reconstructor"): _reconstructor,
    ("_codecs", "encode"): _bytes_of_text,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _parameter,
    ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("dnnlib.util", "EasyDict"): EasyDict,
    ("dnnlib", "EasyDict"): EasyDict,
    ("numpy", "dtype"): np.dtype,
    ("numpy", "ndarray"): np.ndarray,
}
for _core in ("numpy.core.multiarray", "numpy._core.multiarray"):  # numpy 1 and 2 name the module differently
    _ALLOWED[(_core, "scalar")] = _multiarray.scalar
    _ALLOWED[(_core, "_reconstruct")] = _multiarray._reconstruct


class _DataOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        # Python 2 names, which pickle writes for protocols 0-2 (`fix_imports`); no Python 3 name is one
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module.startswith("torch.nn.modules.") and name[:1].isupper():
            return _plain_module_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"the pickle refers to {module}.{name}, which a data-only read does not "
                                     "accept (only networks, tensors and containers)")

    def persistent_load(self, pid):
        raise pickle.UnpicklingError(f"the pickle holds a persistent reference {pid!r}: not a network pickle")


def read_network_pickle(path: str | os.PathLike) -> dict:
    """The top-level dict of a StyleGAN2-ADA network pickle (keys such as 'G', 'D', 'G_ema',
    'training_set_kwargs') with every network as a `PickledModule`. Nothing in the file is
    executed. Raises FileNotFoundError for a missing file and ValueError for a file that is not
    such a pickle or refers to anything outside the allow-list (named in the message)."""
    path = check_file(path, "a network pickle")
    with open(path, "rb") as handle:
        try:
            data = _DataOnlyUnpickler(handle).load()
        except (pickle.UnpicklingError, EOFError, AttributeError, TypeError, ValueError, RuntimeError, KeyError,
                IndexError) as error:  # what a malformed stream raises
            raise ValueError(f"{path} is not a readable network pickle: {error}") from error
    if not isinstance(data, dict) or not any(isinstance(value, PickledModule) for value in data.values()):
        raise ValueError(f"{path} is not a network pickle: it holds no dict of networks")
    return data
