"""Count multiply-accumulates (MACs) and parameters of a model by running it once.

How it works: a forward pre/post hook on every module keeps a stack of the
modules currently running. When a module with a MAC rule
(:mod:`depgraph.utils.op_rules`) finishes, its rule is charged to it, unless
an enclosing module with a rule is still running (that one already accounts
for its children, e.g. ``nn.MultiheadAttention``'s ``out_proj``). Torch
functions with a rule (:mod:`depgraph.utils.op_rules_fn`: matmul, SDPA,
``F.linear`` ...) called outside any ruled module are charged to the innermost
running module, which is how the attention matmuls of timm and Hugging Face
blocks are counted. All hooks and the function mode are removed in ``finally``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch.nn as nn
from torch.overrides import TorchFunctionMode

from .._types import ExampleInputs
from ..errors import TraceError
from ..trace.kept import attributes_as_found
from . import op_rules_seq  # noqa: F401  (registers the sequence-layer rules)
from ._inputs import batch_size, call_model, eval_no_grad
from .op_rules import find_op_rule
from .op_rules_fn import find_function_rule

__all__ = ["count_ops_and_params", "count_params"]


def count_params(module: nn.Module) -> int:
    """Number of parameter elements of ``module`` (shared parameters counted once)."""
    return sum(p.numel() for p in module.parameters())


class _Tally:
    """MACs charged to each module during one forward pass."""

    def __init__(self, root: nn.Module) -> None:
        self.root = root
        self.own: dict[nn.Module, int] = {}
        self.stack: list[nn.Module] = []
        self.ruled_depth = 0  # how many modules with a rule are running

    def charge(self, module: nn.Module, macs: int) -> None:
        self.own[module] = self.own.get(module, 0) + int(macs)


class _FunctionCounter(TorchFunctionMode):
    def __init__(self, tally: _Tally) -> None:
        super().__init__()
        self.tally = tally

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.tally.ruled_depth == 0:
            rule = find_function_rule(func)
            if rule is not None:
                owner = self.tally.stack[-1] if self.tally.stack else self.tally.root
                self.tally.charge(owner, rule(args, kwargs, out))
        return out


@contextmanager
def _counting(model: nn.Module, tally: _Tally) -> Iterator[None]:
    handles = []

    def pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        tally.stack.append(module)
        if find_op_rule(module) is not None:
            tally.ruled_depth += 1

    def post_hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        if tally.stack and tally.stack[-1] is module:
            tally.stack.pop()
        rule = find_op_rule(module)
        if rule is None:
            return
        tally.ruled_depth -= 1
        if tally.ruled_depth == 0:  # outermost ruled module: count it, not its parts
            tally.charge(module, rule(module, tuple(args) + tuple(kwargs.values()), output))

    try:
        for m in model.modules():
            handles.append(m.register_forward_pre_hook(pre_hook, with_kwargs=True))
            handles.append(m.register_forward_hook(post_hook, with_kwargs=True))
        with _FunctionCounter(tally):
            yield
    finally:
        for h in handles:
            h.remove()


def _per_example(macs: int, batch: int) -> int | float:
    return macs // batch if macs % batch == 0 else macs / batch


def count_ops_and_params(model: nn.Module, example_inputs: ExampleInputs, layer_wise: bool = False) -> tuple:
    """MACs of one forward pass (per example) and the number of parameters.

    The model runs once in eval mode under ``torch.no_grad()``; its training
    flags are restored afterwards, tensors the forward keeps on its modules (an
    activation cache) are put back as they were, and nothing else is changed (no copy is made,
    so the layer-wise dicts are keyed by the caller's own modules). MACs are
    divided by the batch size, taken as the leading dim of the first tensor
    input, because pruning tables quote MACs per image.

    Args:
        model: the network to measure.
        example_inputs: a tensor, a tuple/list of positional inputs, or a dict
            of keyword inputs.
        layer_wise: also return per-module figures.

    Returns:
        ``(macs, params)``; with ``layer_wise=True``
        ``(macs, params, layer_macs, layer_params)`` where the two dicts map
        every module (the root included) to the MACs / parameters of its
        whole subtree.

    Raises:
        TraceError: the model failed to run on ``example_inputs``.

    Example:
        >>> model = torchvision.models.resnet18()
        >>> macs, params = count_ops_and_params(model, torch.randn(1, 3, 224, 224))
        >>> macs, params
        (1822177768, 11689512)
    """
    tally = _Tally(model)
    try:
        with attributes_as_found(model), eval_no_grad(model), _counting(model, tally):
            call_model(model, example_inputs)
    except Exception as e:  # the boundary: say which model and inputs failed
        raise TraceError(
            f"count_ops_and_params could not run {type(model).__name__} on the example inputs: "
            f"{type(e).__name__}: {e}"
        ) from e
    batch = batch_size(example_inputs)
    macs = _per_example(sum(tally.own.values()), batch)
    params = count_params(model)
    if not layer_wise:
        return macs, params
    layer_macs: dict[nn.Module, int | float] = {}
    _accumulate(model, tally.own, layer_macs)
    layer_macs = {m: _per_example(int(v), batch) for m, v in layer_macs.items()}
    layer_macs[model] = macs  # exact even when a module is shared by two parents
    layer_params = {m: count_params(m) for m in model.modules()}
    return macs, params, layer_macs, layer_params


def _accumulate(module: nn.Module, own: dict[nn.Module, int], out: dict) -> int:
    if module in out:
        return out[module]
    total = own.get(module, 0) + sum(_accumulate(c, own, out) for c in module.children())
    out[module] = total
    return total
