"""Checks of the public functions' arguments, in one wording: an error names the argument, what
it takes and what it got (`steps must be an int >= 2, got 1`)."""

from __future__ import annotations

import math
import numbers
import os


def check_int(value, name: str, low: int, high: int | None = None, *, none_ok: bool = False) -> int | None:
    """`value` as a Python int when it is a whole number in [low, high] (no upper bound when `high`
    is None); None when `none_ok` and `value` is None. Any integral type passes (numpy and Python
    ints), bools do not (True is no count). Otherwise raises ValueError naming `name` and the range."""
    if value is None and none_ok:
        return None
    whole = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if whole and value >= low and (high is None or value <= high):
        return int(value)
    expected = f"an int >= {low}" if high is None else f"an int in [{low}, {high}]"
    raise ValueError(f"{name} must be {expected}{' or None' if none_ok else ''}, got {value!r}")


def is_finite_number(value) -> bool:
    """Whether `value` is a finite real number: a Python or numpy int or float, not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def check_truncation_psi(value) -> float:
    """`value` as a float when it is a truncation psi: a finite real number (1: no truncation;
    0: every sample the mean; others extrapolate). Raises ValueError otherwise."""
    if not is_finite_number(value):
        raise ValueError(f"truncation_psi must be a finite number (1: none), got {value!r}")
    return float(value)


def check_seed(seed) -> int:
    """`seed` as a Python int when it is a seed `latents_of_seeds` takes: a whole number in
    [0, 2^64). Raises ValueError otherwise."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2**64:
        # torch would seed -1 as 2^64 - 1: one sample would have two names.
        raise ValueError(f"seed must be an int in [0, 2^64), got {seed!r}")
    return int(seed)


def check_file(path: str | os.PathLike, what: str) -> str:
    """`path` as a str when it names a file; otherwise FileNotFoundError saying whether it is
    missing or a directory (`what`: the file expected there, e.g. 'a weights file')."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        problem = f"is a directory, not {what}" if os.path.isdir(path) else "does not exist"
        raise FileNotFoundError(f"path {path!r} {problem}")
    return path


def check_device(name: str, argument: str = "--device"):
    """The torch.device `name` names, if this machine can run it (torch's own error would come
    mid-run); ValueError naming `argument` otherwise."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"{argument} must be a torch device such as cpu, cuda or cuda:1, got {name!r}") from error
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"{argument} {name}: no CUDA device is usable here (torch.cuda.is_available() is False); "
                             "use --device cpu")
        if device.index is not None and device.index >= count:
            raise ValueError(f"{argument} {name}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    elif device.type != "cpu":
        raise ValueError(f"{argument} must be cpu or cuda[:N], got {name!r}")
    return device
