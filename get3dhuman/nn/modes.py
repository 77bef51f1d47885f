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
