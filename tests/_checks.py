"""The one checking function of the core tests, and what it is built from.

Every core test asks the same questions of a prune: did the model keep its
output shapes, and does :func:`depgraph.verify` prove it computes what the
original computes with the removed channels zeroed?  And when a prune is
refused, is the model bit-for-bit what it was?

* :func:`prune_and_verify` - one group, from a root layer and indices.
* :func:`prune_all_groups` - every group of ``get_all_groups``, a few channels
  each, for several rounds, so the whole model shrinks.
* :func:`assert_refused_unchanged` - a refused call raises the expected typed
  error and leaves ``state_dict`` and every module attribute bit-identical.

Models are put in eval mode: ``verify`` compares in eval mode, and a forward
pass in train mode would move BatchNorm statistics between the two runs.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torch.nn as nn

import depgraph as tp
from depgraph.trace import call_model, flatten_tensors


@dataclass
class Pruned:
    """What a check did: the graph, the original (unpruned copy) and the verdict."""

    DG: tp.DependencyGraph
    original: nn.Module
    model: nn.Module
    result: tp.VerifyResult
    groups: list[tp.Group]


def build(model: nn.Module, example_inputs: Any, **kwargs: Any) -> tp.DependencyGraph:
    """Build the dependency graph the way the tests always do: under ``no_grad``."""
    with torch.no_grad():
        return tp.DependencyGraph().build_dependency(model, example_inputs, **kwargs)


def output_shapes(model: nn.Module, example_inputs: Any, forward_fn: Callable | None = None) -> list:
    with torch.no_grad():
        return [tuple(t.shape) for t in flatten_tensors(call_model(model, example_inputs, forward_fn))]


def check_result(
    original: nn.Module,
    model: nn.Module,
    example_inputs: Any,
    shapes_before: list,
    exact: bool | None = True,
    forward_fn: Callable | None = None,
) -> tp.VerifyResult:
    """Shapes unchanged, then ``verify``.

    ``exact=True``: exactness must apply and hold. ``exact=False``: exactness must
    *not* apply (a norm over a pruned dim) and the shapes must match. ``None``:
    exact wherever it applies.
    """
    assert output_shapes(model, example_inputs, forward_fn) == shapes_before, "output shapes changed"
    result = tp.verify(original, model, example_inputs, forward_fn=forward_fn)
    assert result.shapes_match, str(result)
    if exact is True:
        assert result.applies, f"exactness should apply: {result}"
        assert result.exact, str(result)
    elif exact is False:
        assert result.applies is False, f"exactness should not apply: {result}"
        assert result.exact is None
    else:
        assert result.ok, str(result)
    return result


def prune_and_verify(
    model: nn.Module,
    example_inputs: Any,
    root: nn.Module | torch.Tensor,
    pruning_fn: Callable,
    idxs: Sequence[int],
    exact: bool | None = True,
    forward_fn: Callable | None = None,
    **build_kwargs: Any,
) -> Pruned:
    """Prune the group of ``pruning_fn(root, idxs)`` in ``model`` and prove it.

    Deep-copies the original first, builds the graph under ``no_grad``, checks the
    group is prunable, prunes it, then checks output shapes and ``verify``.
    """
    model.eval()
    original = copy.deepcopy(model)
    shapes = output_shapes(model, example_inputs, forward_fn)
    DG = build(model, example_inputs, forward_fn=forward_fn, **build_kwargs)
    group = DG.get_pruning_group(root, pruning_fn, idxs)
    assert DG.check_pruning_group(group), group.details()
    group.prune()
    result = check_result(original, model, example_inputs, shapes, exact, forward_fn)
    return Pruned(DG, original, model, result, [group])


def prune_all_groups(
    model: nn.Module,
    example_inputs: Any,
    n_per_group: int | float = 1,
    rounds: int = 1,
    exact: bool | None = True,
    root_module_types: tuple = (nn.Conv2d, nn.Linear),
    ignored_layers: Sequence[nn.Module] = (),
    seed: int = 0,
    min_groups: int = 1,
    forward_fn: Callable | None = None,
    **build_kwargs: Any,
) -> Pruned:
    """Prune ``n_per_group`` random root channels of every group, ``rounds`` times.

    ``n_per_group`` is a count (at most all but one channel) or, as a float below 1,
    a fraction of the group's current width.

    A yielded group holds every root channel; the check re-plans it from the
    chosen indices, which must pass ``check_pruning_group``. At least
    ``min_groups`` groups must be found in the first round.
    """
    model.eval()
    original = copy.deepcopy(model)
    shapes = output_shapes(model, example_inputs, forward_fn)
    DG = build(model, example_inputs, forward_fn=forward_fn, **build_kwargs)
    gen = torch.Generator().manual_seed(seed)
    pruned: list[tp.Group] = []
    for r in range(rounds):
        found = 0
        for group in DG.get_all_groups(ignored_layers=ignored_layers, root_module_types=root_module_types):
            found += 1
            width = len(group[0].idxs)
            k = int(width * n_per_group) if isinstance(n_per_group, float) else n_per_group
            k = min(k, width - 1)
            idxs = torch.randperm(width, generator=gen)[:k].tolist()
            plan = DG.get_pruning_group(group[0].dep.target.module, group[0].dep.handler, idxs)
            if not DG.check_pruning_group(plan):  # the closure widened k channels too far
                plan = DG.get_pruning_group(group[0].dep.target.module, group[0].dep.handler, idxs[:1])
            assert DG.check_pruning_group(plan), plan.details()
            plan.prune()
            pruned.append(plan)
        if r == 0:
            assert found >= min_groups, f"expected at least {min_groups} prunable groups, found {found}"
    result = check_result(original, model, example_inputs, shapes, exact, forward_fn)
    return Pruned(DG, original, model, result, pruned)


# -- refusals change nothing -------------------------------------------------------------


def _bits(t: torch.Tensor) -> tuple:
    flat = t.detach().cpu().reshape(-1).contiguous()
    return (t.dtype, tuple(t.shape), bytes(flat.view(torch.uint8).numpy()) if flat.numel() else b"")


def _snap(v: Any) -> Any:
    """A comparable picture of an attribute value: tensors by identity and bits."""
    if isinstance(v, torch.Tensor):
        grad = v.grad if isinstance(v, nn.Parameter) else None
        return ("tensor", id(v), _bits(v), None if grad is None else _bits(grad))
    if isinstance(v, dict):
        return ("dict", type(v), tuple((k, _snap(x)) for k, x in v.items()))
    if isinstance(v, (list, tuple)):
        return (type(v), tuple(_snap(x) for x in v))
    if isinstance(v, (set, frozenset)):
        return (type(v), frozenset(v))
    if v is None or isinstance(v, (int, float, str, bool, torch.Size, torch.dtype, torch.device)):
        return v
    return ("object", id(v))


def model_state(model: nn.Module) -> dict:
    """``state_dict`` bits plus every attribute of every module (parameters by identity too)."""
    state = {"state_dict": {k: _bits(v) for k, v in model.state_dict().items()}, "repr": repr(model)}
    for name, m in model.named_modules():
        state[name] = (type(m), {k: _snap(v) for k, v in vars(m).items() if k != "_modules"})
    return state


def assert_same_state(before: dict, after: dict) -> None:
    assert before.keys() == after.keys()
    for key in before:
        assert before[key] == after[key], f"{key or '<model>'} changed"


def assert_refused_unchanged(
    model: nn.Module,
    action: Callable[[], object],
    exc: type[BaseException],
    match: str,
    DG: tp.DependencyGraph | None = None,
) -> pytest.ExceptionInfo:
    """``action()`` raises ``exc`` matching ``match``; the model (and DG history) are untouched."""
    before = model_state(model)
    history = DG.pruning_history() if DG is not None else None
    with pytest.raises(exc, match=match) as info:
        action()
    assert_same_state(before, model_state(model))
    if DG is not None:
        assert DG.pruning_history() == history
    return info


def names_in(group: tp.Group) -> set[str]:
    """Qualified names of the group's members."""
    return {dep.target.name for dep, _ in group}


def member(group: tp.Group, target: Any, out: bool | None = None) -> list[int]:
    """The indices the group removes from ``target`` (a module or tensor), on one side if given."""
    hits = [it for it in group.items
            if it.dep.target.module is target and (out is None or it.dep.is_out() == out)]
    assert hits, f"{type(target).__name__} is not in the group:{group.details()}"
    return sorted({i for it in hits for i in it.idxs})


def count_calls(monkeypatch, owner: Any, name: str) -> list[int]:
    """Wrap ``owner.name`` for the test: the returned list grows by one entry per call."""
    calls: list[int] = []
    original = getattr(owner, name)

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)
    return calls
