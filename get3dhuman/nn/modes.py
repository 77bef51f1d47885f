"""Switching modules to evaluation for a block of inference code."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def evaluation_mode(*modules: torch.nn.Module) -> Iterator[None]:
    """Puts `modules` in eval mode for the block and gives each back its training flag after it,
    also when the block raises (inference helpers must not leave a model in the wrong mode)."""
    was_training = [module.training for module in modules]
    for module in modules:
        module.eval()
    try:
        yield
    finally:
        for module, training in zip(modules, was_training):
            module.train(training)


@contextlib.contextmanager
def frozen_parameters(*modules: torch.nn.Module) -> Iterator[None]:
    """Turns off requires_grad of every parameter of `modules` for the block (gradients then
    flow to the inputs only, and the weights' gradients are never computed), and gives each
    parameter back its flag after it."""
    parameters = [parameter for module in modules for parameter in module.parameters()]
    flags = [parameter.requires_grad for parameter in parameters]
    for parameter in parameters:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter, flag in zip(parameters, flags):
            parameter.requires_grad_(flag)
