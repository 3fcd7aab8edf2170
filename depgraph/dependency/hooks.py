"""Prune hooks: behaviour other packages attach to every prune of a graph.

Protocol (``graph.register_prune_hook(hook, when=...)`` returns a
:class:`torch.utils.hooks.RemovableHandle`; ``handle.remove()`` detaches it)::

    when="before"   hook(graph, items)
                    inside the prune's transaction, after validation and the
                    snapshot, before any handler runs. ``items`` are the group's
                    GroupItems with *current* indices, outputs first. What the hook
                    changes on the model (a bias it compensates) is restored with
                    the rest if the prune fails.
    when="after"    hook(graph, plan)
                    after the handlers ran and the size attributes were updated,
                    before the forward check; ``plan`` is the group's
                    :class:`~depgraph.dims.propagate.Propagation` (``plan.state``:
                    slot -> removed positions). Typical use: sync size attributes
                    or a config the forward reads. When the prune is rolled back
                    afterwards the hook is called again as ``hook(graph, None)``
                    to undo its own bookkeeping (the model itself is restored by
                    the transaction).

A hook that raises fails the prune: the model is restored and the error
re-raised (see :mod:`depgraph.dependency.transaction`). Hooks run in
registration order. A hook object may define ``deferred()``, a context
manager a pruner step enters around all of its groups (a config sync warns
once about the step's end state instead of per group).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from torch.utils.hooks import RemovableHandle

from ..errors import DepgraphError

__all__ = ["PruneHooks", "RemovableHandle", "WHEN"]

WHEN = ("before", "after")


class PruneHooks:
    """The before/after hook tables of one graph."""

    def __init__(self) -> None:
        self._tables: dict[str, OrderedDict[int, Callable]] = {w: OrderedDict() for w in WHEN}

    def register(self, hook: Callable[..., Any], when: str) -> RemovableHandle:
        """Add ``hook`` to the ``when`` table and return the handle that removes it.

        Raises:
            DepgraphError: ``when`` is not ``"before"`` or ``"after"``, or ``hook`` is not callable
                (refused here rather than at the next prune, inside a transaction).
        """
        if when not in self._tables:
            raise DepgraphError(f"register_prune_hook: when={when!r} is not one of {list(WHEN)}")
        if not callable(hook):
            raise DepgraphError(f"register_prune_hook: the hook must be callable, got {type(hook).__name__}")
        table = self._tables[when]
        handle = RemovableHandle(table)
        table[handle.id] = hook
        return handle

    def of(self, when: str) -> tuple[Callable[..., Any], ...]:
        """The hooks registered for ``when``, in call order."""
        return tuple(self._tables[when].values())

    def all(self) -> tuple[Callable[..., Any], ...]:
        """Every hook, ``before`` ones first: what a transaction must snapshot so their state rolls back."""
        return self.of("before") + self.of("after")
