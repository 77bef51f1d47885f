"""One-file weights of a trained module (`Generator`, `Refiner`): its tensors, its sizes (JSON
metadata) and a format tag in a safetensors file, loadable without the training code's presets
and without unpickling anything."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import zipfile

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from get3dhuman._checks import check_file

STORAGE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# The package's default weights: the 'small' preset trained by TRAINING.md's commands.
WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "weights")


def write_pretrained(module: nn.Module, path: str | os.PathLike, file_format: str, sizes: dict,
                     dtype: torch.dtype = torch.float32, extra: dict[str, torch.Tensor] | None = None) -> None:
    """Writes `module`'s state dict, with its floating-point tensors rounded to `dtype` (one of
    STORAGE_DTYPES; float16 halves the file, the tensors load back as the module's dtype), the
    `extra` tensors as they are, and `sizes` (JSON) under the tag `file_format` to `path` (its
    folder made if missing), through a temporary file renamed at the end (an interrupted write
    leaves no partial file)."""
    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(map(str, STORAGE_DTYPES))}, got {dtype!r}")
    tensors = {k: (v.to(dtype) if v.is_floating_point() else v).detach().contiguous().cpu()
               for k, v in module.state_dict().items()}
    tensors.update({k: v.detach().contiguous().cpu() for k, v in (extra or {}).items()})
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    metadata = {"format": file_format, "config": json.dumps(sizes), DIGEST_KEY: tensors_digest(tensors)}
    save_file(tensors, path + ".tmp", metadata=metadata)
    os.replace(path + ".tmp", path)


# The metadata entry of `write_pretrained` files holding `tensors_digest` of their tensors.
DIGEST_KEY = "tensors_sha256"


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """The SHA-256 (hex) of named tensors: their names, shapes, dtypes and bytes, in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(tensors.items()):
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def is_pretrained_file(path: str | os.PathLike, file_format: str) -> bool:
    """Whether `path` is a safetensors file of `write_pretrained` with tag `file_format`."""
    try:
        with safe_open(os.fspath(path), framework="pt") as handle:
            return (handle.metadata() or {}).get("format") == file_format
    except (SafetensorError, OSError):
        return False


def read_pretrained(path: str | os.PathLike | None, file_format: str,
                    default: str) -> tuple[dict[str, torch.Tensor], dict, str]:
    """(tensors, sizes, path) of the `write_pretrained` file `path`, or of the packaged file
    `default` when `path` is None. Raises FileNotFoundError for a missing file, ValueError for a
    file that is not safetensors, has another format tag, or whose tensors do not match the
    digest written with them (files written before the digest load unchecked)."""
    if path is None and not os.path.exists(default):
        raise FileNotFoundError(f"this installation ships no default weights ({default}); train the model "
                                "(TRAINING.md), `get3dhuman export` it and pass its path")
    path = check_file(default if path is None else path, "a weights file")
    try:
        with safe_open(path, framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except SafetensorError as error:
        raise ValueError(f"{path} is not a safetensors file: {error}") from error
    if metadata.get("format") != file_format:
        raise ValueError(f"{path} is not a weights file of format {file_format!r} (its format: "
                         f"{metadata.get('format')!r})")
    if DIGEST_KEY in metadata and tensors_digest(tensors) != metadata[DIGEST_KEY]:
        raise ValueError(f"{path} is corrupted: its tensors do not match the digest written with them "
                         f"({DIGEST_KEY} {metadata[DIGEST_KEY][:16]}...)")
    return tensors, json.loads(metadata["config"]), path


def load_pretrained_state(module: nn.Module, tensors: dict[str, torch.Tensor], path: str) -> None:
    """Loads `tensors` into `module`; ValueError naming `path` when they do not fit it."""
    try:
        module.load_state_dict(tensors)
    except RuntimeError as error:
        raise ValueError(f"{path} does not match its own config: {error}") from error


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a state-dict file: one `torch.save` wrote (read with `weights_only=True`,
    so nothing but tensors is ever unpickled) or a .safetensors file. A ``module.`` prefix on
    every name (DataParallel's) is dropped. Raises FileNotFoundError for a missing file and a
    one-line ValueError naming the file when it carries code, is truncated or corrupt, or holds
    anything but a flat dict of tensors."""
    path = check_file(path, "a checkpoint")
    if path.endswith(".safetensors"):
        try:
            with safe_open(path, framework="pt") as handle:
                state = {key: handle.get_tensor(key) for key in handle.keys()}
        except SafetensorError as error:
            raise ValueError(f"{path} is not a safetensors file: {error}") from error
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            if "weights only load failed" in str(error).lower():
                raise ValueError(f"{path} holds objects other than tensors, which are never unpickled (a pickle "
                                 "may run code)") from error
            raise ValueError(f"{path} is truncated or corrupt: {_first_line(error)}") from error
        except (RuntimeError, EOFError, zipfile.BadZipFile) as error:  # torch.load's errors on a cut file
            raise ValueError(f"{path} is truncated or not a torch checkpoint: {_first_line(error)}") from error
        except OSError as error:
            if error.errno == errno.EINVAL:  # torch's zip reader on some cut files
                raise ValueError(f"{path} is truncated or not a torch checkpoint: {_first_line(error)}") from error
            raise ValueError(f"{path} cannot be read: {error.strerror or error}") from error
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} must hold a flat dict of tensors (a state dict), got {type(state).__name__}")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


# What the authors' two released files hold, told apart by their parameter names.
OFFICIAL_FILES = {
    "generator": ("the authors' shape/texture generator (Get3DHuman_shape_texture_*.pth; pass it as --checkpoint)",
                  ("backbone_shape.", "backbone_texture.", "filter_shape.", "mlp_shape.", "Dis_shape.")),
    "refiner": ("the authors' refinement network (Get3DHuman_refinement_*.pth; pass it as --refiner)", ("rnet.",)),
}


def official_kind(path: str | os.PathLike) -> str | None:
    """Which of the authors' files `path` holds by its tensors' names ('generator', 'refiner'),
    or None (not such a file, or unreadable: loading it says why). Reads no tensor data."""
    path = os.fspath(path)
    try:
        if path.endswith(".safetensors"):
            with safe_open(path, framework="pt") as handle:
                names = list(handle.keys())
        else:
            names = list(torch.load(path, map_location="cpu", weights_only=True, mmap=True))
    except Exception:  # noqa: BLE001 - any unreadable file is "not one of theirs" here
        return None
    return _kind_of_names(names)


def _kind_of_names(names) -> str | None:
    """The key of OFFICIAL_FILES whose parameter names are among `names` (a ``module.`` prefix
    ignored), or None."""
    names = [name[len("module."):] if name.startswith("module.") else name for name in names]
    return next((kind for kind, (_, prefixes) in OFFICIAL_FILES.items()
                 if any(name.startswith(prefixes) for name in names)), None)


def check_official_kind(state: dict[str, torch.Tensor], kind: str, path: str) -> None:
    """Raises a ValueError naming `path` when `state` holds the other of the authors' two files
    than `kind` ('generator' or 'refiner'), saying what it holds."""
    held = _kind_of_names(state)
    if held not in (None, kind):
        raise ValueError(f"{path} holds {OFFICIAL_FILES[held][0]}, not {OFFICIAL_FILES[kind][0].split(' (')[0]}")


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
