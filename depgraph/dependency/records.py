"""Where each pruned layer's surviving channels came from: records that never travel in a pickle.

``module._depgraph_kept = {"out": idx, "in": idx}`` holds, per side, the
original channel index of every channel still present. Bare tensors are
recorded on their owner as ``_depgraph_kept_params[attr][dim]``;
``_depgraph_inexact`` holds why exactness does not apply, and
``_depgraph_handler`` a ``customized_pruners`` handler ``verify`` must reuse.
``depgraph.verify``, ``depgraph.state_dict`` and calibrated criteria read them.

Why the containers are :class:`Transient`: the records must follow
``copy.deepcopy`` (a snapshot taken between iterative steps is a valid
``original`` for ``verify``), but a whole-model ``torch.save`` must not carry
them - they are depgraph's bookkeeping, not part of the user's model (on a
segmentation model they added 4% to the file) - and a pickle holding depgraph
objects would need depgraph to load. A :class:`Transient` deep-copies with its
contents and pickles as an empty builtin ``dict``: a whole-model file holds a
few bytes per pruned module and loads without depgraph. :func:`depgraph.save`
writes the records as plain data instead.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from .._types import Indices
from ..functional.base import find_handler, keep_index

__all__ = [
    "Transient",
    "update_records",
    "kept_indices",
    "kept_params",
    "inexact_reasons",
    "recorded_handler",
    "has_records",
    "set_records",
    "export_records",
]

KEPT, KEPT_PARAMS, INEXACT, HANDLER = "_depgraph_kept", "_depgraph_kept_params", "_depgraph_inexact", "_depgraph_handler"


class Transient(dict):
    """A dict that ``copy.deepcopy`` copies with its contents and pickling writes as an empty ``dict``."""

    def __reduce_ex__(self, protocol: Any) -> tuple:
        return (dict, ())

    def __deepcopy__(self, memo: dict) -> Transient:
        out = type(self)()
        memo[id(self)] = out
        for k, v in self.items():
            out[copy.deepcopy(k, memo)] = copy.deepcopy(v, memo)
        return out


def _store(module: Any, name: str) -> Transient:
    """A fresh copy of the record, installed on ``module``: copy-on-write, so a transaction's
    snapshot (a shallow copy of ``__dict__``) still holds the old record if it rolls back."""
    store = module.__dict__[name] = Transient(module.__dict__.get(name) or {})
    return store


def _advance(store: dict, key: Any, width: int, idxs: Indices) -> None:
    base = store.get(key)
    if base is None or base.numel() != width:
        base = torch.arange(width)
    removed = idxs if isinstance(idxs, torch.Tensor) else torch.as_tensor(list(idxs), dtype=torch.long)
    store[key] = base[keep_index(width, removed)]


def update_records(items: list, widths: dict[int, int | None], inexact: list[str],
                   given: dict[int, Indices] | None = None) -> None:
    """Advance the kept-channel records of every member a committed prune changed.

    ``given``: ``id(item) -> the indices its handler was given`` (an int64 tensor where the
    handler took one), so the lists are not converted again.
    """
    given = given or {}
    for it in items:
        node = it.dep.target
        width = widths[id(it)]
        if width is None or not it.idxs:
            continue
        idxs = given.get(id(it), it.idxs)
        if node.is_parameter:
            holder = node.owner
            params = _store(holder, KEPT_PARAMS)
            params[node.attr] = dict(params.get(node.attr, {}))
            _advance(params[node.attr], node.pruning_dim, width, idxs)
        else:
            holder = node.module
            if find_handler(holder) is not node.handler:  # a customized_pruners handler: verify needs it
                _store(holder, HANDLER)["handler"] = node.handler
            _advance(_store(holder, KEPT), "out" if it.dep.is_out() else "in", width, idxs)
        if inexact:
            reasons = _store(holder, INEXACT)
            reasons.update(dict.fromkeys(inexact))


def kept_indices(module: Any) -> dict:
    """The ``{"out": ..., "in": ..., "inner": ...}`` record of a pruned module (empty if never pruned)."""
    return dict(module.__dict__.get(KEPT) or {})


def kept_params(module: Any) -> dict:
    """``{attr: {dim: kept}}`` of the bare tensors ``module`` owns (empty if none was pruned)."""
    return dict(module.__dict__.get(KEPT_PARAMS) or {})


def inexact_reasons(module: Any) -> set[str]:
    """Why exactness does not apply to prunes that went through ``module``."""
    return set(module.__dict__.get(INEXACT) or ())


def recorded_handler(module: Any) -> Any:
    """The ``customized_pruners`` handler that pruned ``module`` (None: the registered one)."""
    return (module.__dict__.get(HANDLER) or {}).get("handler")


def has_records(module: Any) -> bool:
    """Whether depgraph recorded which channels ``module`` (or a tensor it owns) kept."""
    return bool(module.__dict__.get(KEPT) or module.__dict__.get(KEPT_PARAMS))


def set_records(module: Any, records: dict[str, Any]) -> None:
    """Install records read from a saved state (``export_records`` layout)."""
    for name in (KEPT, KEPT_PARAMS):
        if name in records:
            module.__dict__[name] = Transient(records[name])
    if INEXACT in records:
        module.__dict__[INEXACT] = Transient(dict.fromkeys(records[INEXACT]))


def export_records(module: Any) -> dict[str, Any]:
    """The records of ``module`` as plain data (dicts, tensors, a sorted list of reasons) for a save file."""
    out: dict[str, Any] = {}
    if module.__dict__.get(KEPT):
        out[KEPT] = dict(module.__dict__[KEPT])
    if module.__dict__.get(KEPT_PARAMS):
        out[KEPT_PARAMS] = {k: dict(v) for k, v in module.__dict__[KEPT_PARAMS].items()}
    if module.__dict__.get(INEXACT):
        out[INEXACT] = sorted(module.__dict__[INEXACT])
    return out
