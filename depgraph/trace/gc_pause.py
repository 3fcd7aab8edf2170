"""Pause Python's cyclic garbage collector while depgraph allocates many short-lived objects.

Why: a trace, a graph build or a pruner step allocates tens of thousands of
small objects (values, ops, slots, index tensors). Each 700 allocations start a
young-generation collection, and every so often one of them is a full
collection that walks every object the process holds - after ``import torch``
and a model, some 340k of them: 0.11 s, a third of a ResNet-50 graph build,
spent finding no garbage (depgraph's objects are freed by reference counting).
Inside :func:`gc_paused` no automatic collection starts; the collector runs
again, as usual, in the caller's code afterwards.

The pause is process-wide (so is the collector), counted: nested and
concurrent uses (threads) pause once, and the last one out restores the
state the first one in found - also when the block raises. A collector the
caller had disabled stays disabled; ``gc.collect()`` still works inside.
"""

from __future__ import annotations

import contextlib
import gc
import threading

__all__ = ["gc_paused"]

_lock = threading.Lock()
_depth = 0  # blocks now inside a pause, all threads together
_restore = False  # whether the first block in found the collector enabled


class gc_paused(contextlib.ContextDecorator):  # noqa: N801 - used like a function: ``with gc_paused():``
    """Context manager (and decorator) that pauses automatic cyclic garbage collection.

    Example:
        >>> with gc_paused():
        ...     trace = record(model, example_inputs, is_leaf)
    """

    def __enter__(self) -> gc_paused:
        global _depth, _restore
        with _lock:
            if _depth == 0:
                _restore = gc.isenabled()
                gc.disable()
            _depth += 1
        return self

    def __exit__(self, *exc: object) -> bool:
        global _depth
        with _lock:
            _depth -= 1
            if _depth == 0 and _restore:
                gc.enable()
        return False
