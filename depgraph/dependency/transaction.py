"""One change to a model, all or nothing: the transaction every pruning path runs in.

Protocol (the caller validates before opening; the transaction does the rest)::

    validate      refuse bad input with a typed error, nothing changed yet
    snapshot      Transaction(what, targets) / tx.cover(more_targets)
    mutate        handlers, hooks, attribute writes
    check         e.g. one forward pass
    commit        leaving the ``with`` block normally

Leaving the block by *any* ``BaseException`` (an error, ``KeyboardInterrupt``,
``SystemExit``) runs the rollback callbacks (hook undo, graph bookkeeping),
newest first, then restores every snapshot, and lets the exception through:

* a :class:`~depgraph.errors.DepgraphError` (e.g. ``InvalidIndicesError``) is
  re-raised as itself, with a note (``e.add_note``) naming what was restored, so
  ``except InvalidIndicesError`` keeps working;
* any other ``Exception`` becomes a :class:`~depgraph.errors.PruneFailedError`
  (a ``DepgraphError``) chained to the original (``raise ... from e``);
* ``KeyboardInterrupt`` / ``SystemExit`` and other non-``Exception`` classes
  are re-raised unchanged, after the restore.

Handlers replace ``.data``/``.grad`` of parameters and reassign attributes;
they never write into an existing tensor. Keeping the old tensor objects, the
old ``__dict__``/``_parameters``/``_buffers`` entries and each module's class is
therefore enough to restore bit-identically, without copying any weight. The
one change that does write in place, soft pruning (zeroing entries of a weight
an optimizer may hold), declares those tensors with :meth:`Transaction.cover_values`,
which keeps a copy of their values.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any

import torch
import torch.nn as nn

from ..errors import DepgraphError, PruneFailedError

__all__ = ["Snapshot", "Transaction", "add_note_once"]


class Snapshot:
    """References to everything a mutation may replace on ``targets`` (no tensor is copied).

    Args:
        targets: modules (with their sub-modules), bare tensors, or other objects with a
            ``__dict__`` (a config a size is read from, a hook with internal state).
    """

    def __init__(self, targets: Iterable[Any]):
        self.modules: list[tuple[nn.Module, type, dict, dict, dict]] = []
        self.tensors: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = []
        self.objects: list[tuple[Any, dict]] = []
        seen: set[int] = set()
        for t in targets:
            if isinstance(t, nn.Module):
                for m in t.modules():
                    if id(m) in seen:
                        continue
                    seen.add(id(m))
                    self.modules.append((m, type(m), dict(m.__dict__), dict(m._parameters), dict(m._buffers)))
                    for p in list(m._parameters.values()) + list(m._buffers.values()):
                        self._keep_tensor(p, seen)
            elif isinstance(t, torch.Tensor):
                self._keep_tensor(t, seen)
            elif hasattr(t, "__dict__") and id(t) not in seen:
                seen.add(id(t))
                self.objects.append((t, dict(t.__dict__)))

    def _keep_tensor(self, t: torch.Tensor | None, seen: set[int]) -> None:
        if t is None or id(t) in seen:
            return
        seen.add(id(t))
        self.tensors.append((t, t.data, t.grad))

    def restore(self) -> None:
        """Put every recorded reference back (classes, attributes, parameters, buffers, data, grads)."""
        for m, cls, d, params, buffers in self.modules:
            if type(m) is not cls:
                m.__class__ = cls
            m.__dict__.clear()
            m.__dict__.update(d)
            m._parameters.clear()
            m._parameters.update(params)
            m._buffers.clear()
            m._buffers.update(buffers)
        for obj, d in self.objects:
            obj.__dict__.clear()
            obj.__dict__.update(d)
        with torch.no_grad():
            for t, data, grad in self.tensors:
                if t.data is not data:
                    t.data = data
                if t.grad is not grad:
                    t.grad = grad
        for m, *_ in self.modules:
            if isinstance(m, nn.RNNBase):  # RNNs cache views of their weights
                m._init_flat_weights()


class Transaction:
    """A context manager that commits a model change entirely or restores it entirely.

    Args:
        what: what the change is, for the note on a re-raised error
            (``"pruning the group rooted at conv1 (3 channels)"``).
        targets: what the change may touch, snapshotted now (see :class:`Snapshot`).

    Example:
        >>> with Transaction("replacing the head", [model.fc]) as tx:
        ...     model.fc.weight.data = new_weight
        ...     tx.on_rollback(lambda: print("rolled back"))
        ...     check(model)                     # raising here restores model.fc
    """

    def __init__(self, what: str, targets: Iterable[Any] = ()) -> None:
        self.what = what
        self._snapshots: list[Snapshot] = []
        self._undo: list[Callable[[], None]] = []
        self._values: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._valued: set[int] = set()
        self.committed = False
        self.cover(targets)

    def cover(self, targets: Iterable[Any]) -> None:
        """Snapshot more targets; call before they change. Restores run newest first, so the
        oldest snapshot of an object wins."""
        targets = list(targets)
        if targets:
            self._snapshots.append(Snapshot(targets))

    def cover_values(self, tensors: Iterable[torch.Tensor]) -> None:
        """Keep a copy of the values of ``tensors`` that are about to be written in place.

        A snapshot keeps references only, which cannot undo an in-place write;
        this is the price (one copy per tensor, taken once) of restoring one.
        """
        with torch.no_grad():
            for t in tensors:
                if id(t) not in self._valued:
                    self._valued.add(id(t))
                    self._values.append((t, t.detach().clone()))

    def on_rollback(self, fn: Callable[[], None]) -> None:
        """Run ``fn()`` when the transaction rolls back: newest first, *before* the snapshots are
        restored (an undo log replays its own old values; the snapshots then settle everything on
        the state at the start)."""
        self._undo.append(fn)

    def rollback(self) -> None:
        """Run the rollback callbacks, then restore every snapshot; the transaction can be reused."""
        for fn in reversed(self._undo):
            fn()
        for snap in reversed(self._snapshots):
            snap.restore()
        with torch.no_grad():
            for t, value in self._values:
                if t.shape == value.shape:
                    t.copy_(value)
                else:
                    t.data = value

    def __enter__(self) -> Transaction:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool:
        if exc is None:
            self.committed = True
            return False
        self.rollback()
        if isinstance(exc, DepgraphError):
            add_note_once(exc, f"depgraph: {self.what} failed; the model was restored unchanged")
            return False
        if isinstance(exc, Exception):
            raise PruneFailedError(
                f"{self.what} failed ({type(exc).__name__}: {str(exc)[:300]}); the model was restored unchanged"
            ) from exc
        return False  # KeyboardInterrupt, SystemExit: restored, re-raised as they are


def add_note_once(exc: BaseException, text: str) -> None:
    """Add ``text`` to ``exc``'s notes unless it is there: a typed error crossing nested
    transactions (a group inside a step inside a replay) keeps its type and says once
    what each level restored."""
    notes = getattr(exc, "__notes__", ())
    if text not in notes:
        exc.add_note(text)
