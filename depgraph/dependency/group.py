"""A group: every (layer, indices) pair coupled to one pruning decision.

A group is a pure plan: building it changes nothing. ``prune()`` asks the
graph to apply it as a transaction (validate all members, then mutate, restore
on failure).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .node import Dependency, GroupItem, fn_name

if TYPE_CHECKING:
    from .graph import DependencyGraph

__all__ = ["Group"]


class Group:
    """Members of one coupled prune; ``group[0]`` is the root.

    Iterating yields ``(dep, idxs)``; ``group[i].root_idxs`` maps each member
    index to the root channel it goes with.
    """

    def __init__(self, graph: DependencyGraph, items: list[GroupItem], plan: object):
        self._graph = graph
        self._items = items
        self._plan = plan  # the propagation the items were read from

    # -- container protocol -------------------------------------------------------
    @property
    def items(self) -> list[GroupItem]:
        return self._items

    def __iter__(self):
        return (tuple(it) for it in self._items)

    def __getitem__(self, k: int) -> GroupItem:
        return self._items[k]

    def __len__(self) -> int:
        return len(self._items)

    def has_dep(self, dep: Dependency) -> bool:
        return any(it.dep is dep for it in self._items)

    def has_pruning_op(self, dep: Dependency, idxs) -> bool:
        return any(
            it.dep.target is dep.target and it.dep.handler is dep.handler and set(idxs) <= set(it.idxs)
            for it in self._items
        )

    # -- why it may not be prunable ---------------------------------------------------
    @property
    def blocked_by(self) -> list[str]:
        """Reasons this group cannot be pruned (frozen dims it reaches); empty if none."""
        return sorted(set(self._plan.violations.values()))

    @property
    def inexact_reasons(self) -> list[str]:
        """Why pruning this group is valid but not exactly 'the channels zeroed' (norms over them)."""
        return sorted(set(self._plan.inexact.values()))

    # -- actions --------------------------------------------------------------------------
    def prune(self, idxs=None, record_history: bool = True) -> None:
        """Remove the group's channels from every member, or re-plan from new root ``idxs`` first."""
        if idxs is not None:
            root = self._items[0].dep
            target = root.target.module
            group = self._graph.get_pruning_group(target, root.handler, idxs)
            group.prune(record_history=record_history)
            return
        self._graph.apply_group(self, record_history=record_history)

    exec = prune  # v0 spelling: ``plan.exec()``

    def details(self) -> str:
        lines = ["", "-" * 32, " " * 10 + "Pruning Group", "-" * 32]
        for i, it in enumerate(self._items):
            dep = it.dep
            tag = " (root)" if i == 0 else ""
            lines.append(
                f"[{i}] {fn_name(dep.trigger)} on {dep.source.name} ({_mod(dep.source)}) => "
                f"{fn_name(dep.handler)} on {dep.target.name} ({_mod(dep.target)}), "
                f"idxs ({len(it.idxs)}) = {_fmt(it.idxs)}{tag}"
            )
        if self.blocked_by:
            lines.append("not prunable: " + "; ".join(self.blocked_by))
        if self.inexact_reasons:
            lines.append("not exact (normalised over pruned dims): " + "; ".join(self.inexact_reasons))
        lines.append("-" * 32)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.details()

    def __repr__(self) -> str:
        root = self._items[0] if self._items else None
        where = f"{root.dep.target.name}, {len(root.idxs)} channels" if root else "empty"
        return f"<Group {where}, {len(self._items)} members>"


def _mod(node) -> str:
    m = node.module
    if isinstance(m, torch.Tensor):
        return f"Parameter{tuple(m.shape)}, dim={node.pruning_dim}"
    return repr(m) if len(repr(m)) < 90 else type(m).__name__


def _fmt(idxs: list[int], n: int = 20) -> str:
    return str(idxs) if len(idxs) <= n else f"[{', '.join(map(str, idxs[:n]))}, ...]"
