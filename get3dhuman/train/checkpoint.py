"""Resumable training checkpoints: model and optimiser tensors in safetensors, the step, the
optimisers' hyper-parameters and any extra state in a small json.

A checkpoint holds one model and optimiser, or several of each (named dicts: a GAN's
generator and discriminators with their optimisers).

Files are written under temporary names and renamed, the json last, so an interrupted save
never leaves a checkpoint that looks complete. Loading a file that is damaged or belongs to
another model raises ValueError saying which.
"""

from __future__ import annotations

import glob
import json
import os

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

FORMAT = 2  # tensors named model/<module>/<key> and optimizer/<optimiser>/<index>/<key>

Modules = torch.nn.Module | dict[str, torch.nn.Module]
Optimizers = torch.optim.Optimizer | dict[str, torch.optim.Optimizer]


def _named(value, default_name: str) -> dict:
    return dict(value) if isinstance(value, dict) else {default_name: value}


def _paths(directory: str, step: int) -> tuple[str, str]:
    stem = os.path.join(directory, f"checkpoint-{step:08d}")
    return stem + ".safetensors", stem + ".json"


def save_checkpoint(directory: str, step: int, model: Modules, optimizer: Optimizers,
                    extra: dict | None = None) -> str:
    """Saves the state after `step` completed steps; returns the safetensors path. `model` and
    `optimizer` are one module / optimiser or dicts of them by name."""
    os.makedirs(directory, exist_ok=True)
    tensors, param_groups, scalars = {}, {}, {}
    for name, module in _named(model, "model").items():
        tensors.update({f"model/{name}/{k}": v.detach().contiguous().cpu() for k, v in module.state_dict().items()})
    for name, optim in _named(optimizer, "optimizer").items():
        optimizer_state = optim.state_dict()
        param_groups[name] = optimizer_state["param_groups"]
        for index, state in optimizer_state["state"].items():
            for key, value in state.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"optimizer/{name}/{index}/{key}"] = value.detach().contiguous().cpu()
                else:
                    scalars[f"optimizer/{name}/{index}/{key}"] = value
    meta = {"format": FORMAT, "step": step, "param_groups": param_groups, "optimizer_scalars": scalars,
            "extra": extra or {}}
    tensor_path, meta_path = _paths(directory, step)
    save_file(tensors, tensor_path + ".tmp")
    os.replace(tensor_path + ".tmp", tensor_path)
    with open(meta_path + ".tmp", "w") as handle:
        json.dump(meta, handle)
    os.replace(meta_path + ".tmp", meta_path)
    return tensor_path


def latest_checkpoint(directory: str) -> str | None:
    """The safetensors path of the newest complete checkpoint in `directory`, or None."""
    complete = [path[: -len(".json")] + ".safetensors" for path in glob.glob(os.path.join(directory, "checkpoint-*.json"))]
    complete = [path for path in complete if os.path.exists(path)]
    return max(complete) if complete else None


def resolve_checkpoint(path: str, what: str) -> str:
    """The checkpoint file `path`, or the newest complete checkpoint of the run directory `path`;
    raises ValueError naming the argument `what` when there is none."""
    checkpoint = latest_checkpoint(path) if os.path.isdir(path) else path
    if checkpoint is None or not os.path.exists(checkpoint):
        raise ValueError(f"{what} must be a run directory with a checkpoint, or a checkpoint file, got {path!r}")
    return checkpoint


def load_checkpoint(path: str, model: Modules, optimizer: Optimizers | None = None) -> tuple[int, dict]:
    """Restores `model` (and `optimizer`), named as when saved, from a checkpoint; returns
    (step, extra). Raises ValueError for a damaged file or one of another model."""
    meta_path = path[: -len(".safetensors")] + ".json"
    try:
        tensors = load_file(path)
        with open(meta_path) as handle:
            meta = json.load(handle)
    except (SafetensorError, OSError, json.JSONDecodeError) as error:
        raise ValueError(f"checkpoint {path} is corrupted or incomplete: {error}") from error
    if meta.get("format") != FORMAT:
        raise ValueError(f"checkpoint {path} has format {meta.get('format')!r}, expected {FORMAT}")
    modules = _named(model, "model")
    weights = {name: {k[len(name) + 7:]: v for k, v in tensors.items() if k.startswith(f"model/{name}/")} for name in modules}
    problems = []
    for name, module in modules.items():
        expected = module.state_dict()
        given = weights[name]
        problems += [f"{name}.{k}" for k in expected if k not in given]
        problems += [f"{name}.{k}" for k in given if k not in expected]
        problems += [f"{name}.{k}" for k in expected if k in given and given[k].shape != expected[k].shape]
    if problems:
        raise ValueError(f"checkpoint {path} does not match the model (e.g. {', '.join(problems[:5])}): "
                         "was it written with another preset?")
    for name, module in modules.items():
        module.load_state_dict(weights[name])
    if optimizer is None:
        return meta["step"], meta["extra"]
    optimizers = _named(optimizer, "optimizer")
    missing = [name for name in optimizers if name not in meta["param_groups"]]
    if missing:
        raise ValueError(f"checkpoint {path} holds no optimiser state for {', '.join(missing)}")
    for name, optim in optimizers.items():
        device = optim.param_groups[0]["params"][0].device
        state: dict[int, dict] = {}
        for key, value in [*tensors.items(), *meta["optimizer_scalars"].items()]:
            if key.startswith(f"optimizer/{name}/"):
                _, _, index, entry = key.split("/", 3)
                state.setdefault(int(index), {})[entry] = value
        # Moments follow the parameters' device; Adam keeps its 'step' counter on the CPU.
        state = {i: {k: v.to(device) if isinstance(v, torch.Tensor) and k != "step" else v for k, v in s.items()}
                 for i, s in state.items()}
        optim.load_state_dict({"state": state, "param_groups": meta["param_groups"][name]})
    return meta["step"], meta["extra"]
