"""How the utilities call a model on ``example_inputs`` and read its batch size."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn as nn

from .._types import ExampleInputs
from ..trace.recorder import call_model as trace_call_model

__all__ = ["call_model", "batch_size", "eval_no_grad"]


def call_model(model: nn.Module, example_inputs: ExampleInputs) -> Any:
    """``model(**d)`` for a dict, ``model(*xs)`` for a tuple/list (else ``model(xs)``), else ``model(x)``."""
    return trace_call_model(model, example_inputs)


def batch_size(example_inputs: ExampleInputs) -> int:
    """Leading dim of the first tensor input (1 when there is none or it is a scalar)."""
    if isinstance(example_inputs, dict):
        values = list(example_inputs.values())
    elif isinstance(example_inputs, (tuple, list)):
        values = list(example_inputs)
    else:
        values = [example_inputs]
    for v in values:
        if isinstance(v, torch.Tensor):
            return max(int(v.shape[0]), 1) if v.dim() > 0 else 1
    return 1


@contextmanager
def eval_no_grad(model: nn.Module) -> Iterator[None]:
    """Eval mode and no autograd for the block; every module's training flag is restored."""
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            yield
    finally:
        for m, was_training in flags:
            m.training = was_training
