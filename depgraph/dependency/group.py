"""A group: every (layer, indices) pair coupled to one pruning decision.

A group is a pure plan: building it changes nothing. ``prune()`` asks the
graph to apply it as a transaction (validate all members, then mutate, restore
on failure).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch

from ..dims.propagate import Propagation
from ..errors import DepgraphError
from .node import Dependency, GroupItem, fn_name

if TYPE_CHECKING:
    from .graph import DependencyGraph

__all__ = ["Group"]


class Group:
    """Members of one coupled prune; ``group[0]`` is the root.

    Iterating yields :class:`GroupItem` named tuples ``(dep, idxs)``; ``group[i].root_idxs``
    maps each member index to the root channel it goes with.

    A group is a plan made on one version of the model (:attr:`version`). Pruning it after
    another prune changed a layer it reaches raises :class:`~depgraph.errors.StaleGroupError`
    instead of removing whatever channels now sit at its indices; so does pruning it twice.
    Plan again with ``DG.get_pruning_group`` (or ``group.prune(idxs=...)``) to prune more.
    """

    def __init__(self, *, graph: DependencyGraph | None = None, items: list[GroupItem] | None = None,
                 plan: Propagation | None = None, version: int | None = None,
                 root: tuple[int, torch.Tensor] | None = None):
        self._DG = graph
        self._items = list(items or [])
        self._propagation = plan if plan is not None else Propagation()
        self._version = version
        self._root = root  # (slot, original positions) it was planned from: replanning starts there

    # -- container protocol -------------------------------------------------------
    @property
    def items(self) -> list[GroupItem]:
        """The members in prune order, the root first (the original's ``group.items``)."""
        return self._items

    @property
    def propagation(self) -> Propagation:
        """The propagation the members were read from (slot -> removed original positions)."""
        return self._propagation

    @property
    def version(self) -> int | None:
        """The graph version this group was planned on (None: built by hand, never checked)."""
        return self._version

    @property
    def graph(self) -> DependencyGraph | None:
        """The graph the group was planned on (None for a group built by hand), which
        checks on :meth:`prune` that the model has not changed since.
        """
        return self._DG

    def __iter__(self) -> Iterator[GroupItem]:
        return iter(self._items)

    def __getitem__(self, k: int) -> GroupItem:
        return self._items[k]

    def __setitem__(self, k: int, v: GroupItem) -> None:
        self._items[k] = v if isinstance(v, GroupItem) else GroupItem(*v)

    def __len__(self) -> int:
        return len(self._items)

    def add_dep(self, dep: Dependency, idxs: list[int]) -> None:
        """Append a member (as in Torch-Pruning)."""
        self._items.append(GroupItem(dep, list(idxs)))

    def add_and_merge(self, dep: Dependency, idxs: list[int]) -> None:
        """Add ``idxs`` to the member with the same target and handler, or append a new member."""
        for k, it in enumerate(self._items):
            if it.dep.target is dep.target and it.dep.handler == dep.handler:
                merged = list(dict.fromkeys([*it.idxs, *idxs]))
                roots = list(it.root_idxs) + list(idxs)[: len(merged) - len(it.idxs)]
                self._items[k] = GroupItem(it.dep, merged, roots)
                return
        self.add_dep(dep, idxs)

    def has_dep(self, dep: Dependency) -> bool:
        """Whether this exact dependency object is a member (identity, not equality)."""
        return any(it.dep is dep for it in self._items)

    def has_pruning_op(self, dep: Dependency, idxs) -> bool:
        """Whether some member already removes ``idxs`` from ``dep``'s target with the same handler,
        so a caller merging groups does not prune the same channels twice.
        """
        return any(
            it.dep.target is dep.target and it.dep.handler == dep.handler and set(idxs) <= set(it.idxs)
            for it in self._items
        )

    # -- why it may not be prunable ---------------------------------------------------
    @property
    def blocked_by(self) -> list[str]:
        """Reasons this group cannot be pruned (frozen dims it reaches); empty if none."""
        return sorted(set(self._propagation.violations.values()))

    @property
    def inexact_reasons(self) -> list[str]:
        """Why pruning this group is valid but not exactly 'the channels zeroed' (norms over them)."""
        return sorted(set(self._propagation.inexact.values()))

    # -- actions --------------------------------------------------------------------------
    def prune(self, idxs=None, record_history: bool = True) -> None:
        """Remove the group's channels from every member, or re-plan from new root ``idxs`` first.

        One transaction (see :meth:`DependencyGraph.apply_group`): on any failure or interrupt
        the model is exactly as before.

        Raises:
            StaleGroupError: the group was planned before a prune that changed a layer it reaches.
        """
        if self._DG is None:
            raise DepgraphError("this group belongs to no DependencyGraph; build it with DG.get_pruning_group")
        if idxs is not None:
            root = self._items[0].dep
            group = self._DG.get_pruning_group(root.target.module, root.handler, idxs)
            group.prune(record_history=record_history)
            return
        self._DG.apply_group(self, record_history=record_history)

    def exec(self) -> None:
        """The first release's spelling of :meth:`prune` (``plan.exec()``); warns, as the original does."""
        warnings.warn("Group.exec() will be deprecated in the future; use Group.prune() instead",
                      UserWarning, stacklevel=2)
        self.prune()

    def __call__(self) -> None:
        """``group()`` is ``group.prune()``, as in the original."""
        return self.prune()

    def replan(self) -> Group | None:
        """The same decision planned on the model as it is now: the original root positions still
        present (None when none is left or the group was not planned from the graph)."""
        if self._root is None or self._DG is None:
            return None
        slot, positions = self._root
        positions = positions[self._DG.is_alive(slot, positions)]
        return self._DG.plan_group(slot, positions) if positions.numel() else None

    def details(self) -> str:
        """A readable table of the members: which function on which layer, the indices, and why
        the group is blocked or inexact (what ``print(group)`` shows).
        """
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
