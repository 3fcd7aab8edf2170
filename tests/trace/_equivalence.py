"""A trace as plain, comparable data, and the two ways to record one (meta shadow, real forward).

``describe`` keeps everything a graph is built from: each op's target (module by
name, function by identity), scope, arguments with every traced int's origin
(the values and dims a ``ShapeInt`` was read from, the attributes an
``AttrInt`` / ``AttrExpr`` stands for), inputs, outputs and their structure;
every value's shape, kind and producer; parameters by qualified name, owner and
real tensor; the model's inputs and outputs; module names and calls.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn as nn

from depgraph.trace import Trace, Value, memo, meta_shadow, recorder
from depgraph.trace.shape_int import AttrExpr, ShapeInt


@contextlib.contextmanager
def meta_tracing(on: bool | None) -> Iterator[None]:
    """Force (``True``) or forbid the meta shadow for the block, or leave it to the default (``None``:
    the environment variable unset), with the trace memo emptied on both sides."""
    old = os.environ.pop(meta_shadow.ENV_VAR, None)
    if on is not None:
        os.environ[meta_shadow.ENV_VAR] = "1" if on else "0"
    memo.clear()
    try:
        yield
    finally:
        memo.clear()
        os.environ.pop(meta_shadow.ENV_VAR, None)
        if old is not None:
            os.environ[meta_shadow.ENV_VAR] = old


def record(model: nn.Module, example_inputs: Any, on_meta: bool, **kwargs: Any) -> Trace:
    """One trace of ``model``, with the meta shadow allowed or not (leaves as the default graph decides)."""
    import depgraph as tp

    DG = tp.DependencyGraph()
    with meta_tracing(on_meta):
        return recorder.record(model, example_inputs, DG._is_leaf, kwargs.get("forward_fn"),
                               kwargs.get("output_transform"))


def _arg(a: Any, names: dict[int, str]) -> Any:
    if isinstance(a, Value):
        return ("V", a.id)
    if isinstance(a, ShapeInt):
        attrs = None if a.attrs is None else tuple((names.get(id(o), id(o)), k, v) for o, k, v in a.attrs)
        return ("S", int(a), tuple(sorted(a.src, key=repr)), attrs)
    if isinstance(a, AttrExpr):
        terms = tuple((c, tuple((names.get(id(o), id(o)), k, v) for o, k, v in f)) for c, f in a.terms)
        return ("A", type(a).__name__, int(a), terms)
    if isinstance(a, (tuple, list)):
        return (type(a).__name__, tuple(_arg(x, names) for x in a))
    if isinstance(a, dict):
        return ("dict", tuple((k, _arg(x, names)) for k, x in a.items()))
    if isinstance(a, torch.Tensor):
        return ("tensor!", tuple(a.shape), str(a.device))  # never expected: tensors become Values
    if isinstance(a, nn.Module):
        return ("M", names.get(id(a), id(a)))
    return ("=", repr(a), type(a).__name__)


def describe(trace: Trace, same_model: bool = True) -> dict[str, Any]:
    """Everything a graph is built from, as plain data (modules by qualified name, functions by identity).

    ``same_model=False`` leaves out the identity of parameter tensors (their qualified names stay), to
    compare traces of two instances of one architecture.
    """
    names = {id(m): n for m, n in trace.module_names.items()}
    ops = []
    for op in trace.ops:
        target = ("M", names.get(id(op.target), id(op.target))) if op.is_module else ("F", id(op.target), op.name)
        ops.append((op.id, target, op.scope, _arg(op.args, names), _arg(op.kwargs, names),
                    [v.id for v in op.inputs], [v.id for v in op.outputs], _arg(op.output_struct, names)))
    values = [(v.id, v.shape, v.kind, None if v.producer is None else v.producer.id, v.qualname,
               names.get(id(v.owner)) if v.owner is not None else None, v.attr,
               id(v.tensor_ref) if same_model else None)
              for v in trace.values]
    params = sorted((k if same_model else 0, v.id, v.qualname, id(v.tensor_ref) if same_model else None)
                    for k, v in trace.params.items())
    return {
        "ops": ops, "values": values, "params": params,
        "inputs": [v.id for v in trace.inputs], "outputs": [v.id for v in trace.outputs],
        "module_names": sorted(trace.module_names.values()),
        "module_calls": sorted((names[id(m)], [o.id for o in calls]) for m, calls in trace.module_calls.items()),
        "kept": [(k.where, k.value.id) for k in trace.kept],
    }


def first_difference(a: dict[str, Any], b: dict[str, Any]) -> str:
    """Where two descriptions first differ (for an assertion message)."""
    for key in a:
        if a[key] != b[key]:
            if isinstance(a[key], list) and isinstance(b[key], list):
                for i, (x, y) in enumerate(zip(a[key], b[key], strict=False)):
                    if x != y:
                        return f"{key}[{i}]:\n  meta {x}\n  real {y}"
                return f"{key}: lengths {len(a[key])} != {len(b[key])}"
            return f"{key}: {a[key]} != {b[key]}"
    return ""
