"""Resumable training checkpoints: model and optimiser tensors in safetensors, the step, the
optimiser's hyper-parameters and any extra state in a small json.

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

FORMAT = 1


def _paths(directory: str, step: int) -> tuple[str, str]:
    stem = os.path.join(directory, f"checkpoint-{step:08d}")
    return stem + ".safetensors", stem + ".json"


def save_checkpoint(directory: str, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    extra: dict | None = None) -> str:
    """Saves the state after `step` completed steps; returns the safetensors path."""
    os.makedirs(directory, exist_ok=True)
    tensors = {f"model.{k}": v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    optimizer_state = optimizer.state_dict()
    scalars = {}
    for index, state in optimizer_state["state"].items():
        for name, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{index}.{name}"] = value
    meta = {"format": FORMAT, "step": step, "param_groups": optimizer_state["param_groups"],
            "optimizer_scalars": scalars, "extra": extra or {}}
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


def load_checkpoint(path: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> tuple[int, dict]:
    """Restores `model` (and `optimizer`) from a checkpoint; returns (step, extra)."""
    meta_path = path[: -len(".safetensors")] + ".json"
    try:
        tensors = load_file(path)
        with open(meta_path) as handle:
            meta = json.load(handle)
    except (SafetensorError, OSError, json.JSONDecodeError) as error:
        raise ValueError(f"checkpoint {path} is corrupted or incomplete: {error}") from error
    if meta.get("format") != FORMAT:
        raise ValueError(f"checkpoint {path} has format {meta.get('format')!r}, expected {FORMAT}")
    weights = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    expected = model.state_dict()
    problems = [k for k in expected if k not in weights] + [k for k in weights if k not in expected]
    problems += [k for k in expected if k in weights and weights[k].shape != expected[k].shape]
    if problems:
        raise ValueError(f"checkpoint {path} does not match the model (e.g. {', '.join(problems[:5])}): "
                         "was it written with another preset?")
    model.load_state_dict(weights)
    if optimizer is not None:
        state: dict[int, dict] = {}
        for key, value in tensors.items():
            if key.startswith("optimizer."):
                _, index, name = key.split(".", 2)
                state.setdefault(int(index), {})[name] = value
        for key, value in meta["optimizer_scalars"].items():
            index, name = key.split(".", 1)
            state.setdefault(int(index), {})[name] = value
        device = next(model.parameters()).device
        # Moments follow the parameters' device; Adam keeps its 'step' counter on the CPU.
        state = {i: {k: v.to(device) if isinstance(v, torch.Tensor) and k != "step" else v for k, v in s.items()}
                 for i, s in state.items()}
        optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return meta["step"], meta["extra"]
