"""Where each pruned layer's surviving channels came from, kept on the pruned model itself.

``module._depgraph_kept = {"out": idx, "in": idx}`` holds, per side, the
original channel index of every channel still present. Bare tensors are
recorded on their owner as ``_depgraph_kept_params[attr][dim]``. The records
are plain attributes: they survive ``deepcopy`` and ``torch.save`` but stay out
of ``state_dict``. ``depgraph.verify`` and ``depgraph.state_dict`` read them.
"""

from __future__ import annotations

from typing import Any

import torch

from ..functional.base import find_handler, keep_index

__all__ = ["update_records", "kept_indices"]


def _advance(store: dict, key: Any, width: int, idxs: list[int]) -> None:
    base = store.get(key)
    if base is None or base.numel() != width:
        base = torch.arange(width)
    store[key] = base[keep_index(width, torch.as_tensor(idxs, dtype=torch.long))]


def update_records(items: list, widths: dict[int, int | None], inexact: list[str]) -> None:
    for it in items:
        node = it.dep.target
        width = widths[id(it)]
        if width is None or not it.idxs:
            continue
        if node.is_parameter:
            owner = node.owner
            params = owner.__dict__.setdefault("_depgraph_kept_params", {})
            _advance(params.setdefault(node.attr, {}), node.pruning_dim, width, it.idxs)
            holder = owner
        else:
            holder = node.module
            if find_handler(holder) is not node.handler:  # a customized_pruners handler: verify needs it
                holder.__dict__["_depgraph_handler"] = node.handler
            _advance(holder.__dict__.setdefault("_depgraph_kept", {}), "out" if it.dep.is_out() else "in",
                     width, it.idxs)
        if inexact:
            holder.__dict__.setdefault("_depgraph_inexact", set()).update(inexact)


def kept_indices(module: Any) -> dict:
    """The ``{"out": ..., "in": ...}`` record of a pruned module (empty if never pruned)."""
    return dict(module.__dict__.get("_depgraph_kept", {}))
