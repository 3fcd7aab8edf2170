"""Refuse a recipe whose MLP ratio would silently leave some weights of every layer unpruned.

The checkpoint recipe promises "``ratio`` of the MLP channels of every layer". Some
decoders compute part of a layer through ops the graph has no dimension rule for, and
the graph then freezes those dimensions (it warns, naming the op): Mixtral's experts in
transformers 5 are fused 3-D parameters run by ``torch._grouped_mm`` after a
``topk``/``sort`` routing, so neither whole experts nor expert channels form a group, in
memory or streamed. :func:`check_coverage` finds such layers before any weight is read
and refuses with their names, instead of returning a checkpoint pruned less than asked.
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from ..errors import UnsupportedOpError

__all__ = ["uncovered_layers", "check_coverage"]


def uncovered_layers(pruner: Any, model: nn.Module, ignored: list[nn.Module]) -> list[str]:
    """Modules inside the repeated blocks (decoder layers) holding a matrix no prunable group reaches."""
    covered: set[int] = set()
    for group in pruner.DG.get_all_groups(ignored, pruner.options.root_module_types):
        covered.update(id(dep.target.module) for dep, _ in group)
    skip = {id(m) for m in ignored for m in m.modules()}
    out = []
    for list_name, blocks in model.named_modules():
        if not isinstance(blocks, nn.ModuleList):
            continue
        for i, block in enumerate(blocks):
            for name, m in block.named_modules():
                mats = [p for p in m.parameters(recurse=False) if p.dim() >= 2]
                if mats and id(m) not in skip and id(m) not in covered and not all(id(p) in covered for p in mats):
                    out.append(f"{list_name}.{i}.{name}" if name else f"{list_name}.{i}")
    return out


def check_coverage(pruner: Any, model: nn.Module, ratio: float, ignored: list[nn.Module]) -> None:
    """Raise when ``ratio > 0`` and some layer's matrices cannot be pruned by any group.

    Raises:
        UnsupportedOpError: naming the layers (first five) and what to do instead.
    """
    if ratio <= 0:
        return
    missing = uncovered_layers(pruner, model, ignored)
    if missing:
        raise UnsupportedOpError(
            f"ratio={ratio} asks for MLP channels of every layer, but no prunable group reaches "
            f"{len(missing)} layer(s) of {type(model).__name__}: {', '.join(missing[:5])}"
            f"{' ...' if len(missing) > 5 else ''}. Their dimensions pass through ops without a "
            "dimension rule (the graph warned which, e.g. the routing and grouped matmuls of fused "
            "Mixture-of-Experts weights), so neither whole experts nor their channels can be removed, "
            "in memory either. Pass ratio=0 (and head_ratio=...) to prune only what the graph reaches, "
            "or ignore=(those names,) to keep them deliberately")
