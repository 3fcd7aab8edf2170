"""Registrations that wait until a third-party module has been imported by someone else.

Some layers depgraph supports belong to optional packages (GPT-2's ``Conv1D``
lives in ``transformers.pytorch_utils``). Registering a handler keyed by such a
type needs the type, but ``import depgraph`` must never import the package.
The way out: a model that contains the layer can only exist once its package
is in ``sys.modules``, so each registry looks there (:func:`resolve`) before a
lookup, and runs the callbacks of the modules that have appeared since.

Nothing is imported here: a module that was never imported keeps its callbacks
pending, at the cost of one dict check per lookup.

Example:
    >>> when_imported("transformers.pytorch_utils", lambda mod: PrunerBox.__setitem__(mod.Conv1D, handler))
    >>> resolve()   # called by find_handler, channel_slices, get_dim_rule ...
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import ModuleType

__all__ = ["when_imported", "resolve"]

_PENDING: dict[str, list[Callable[[ModuleType], bool | None]]] = {}


def when_imported(module_name: str, callback: Callable[[ModuleType], bool | None]) -> None:
    """Run ``callback(module)`` at the first :func:`resolve` that finds ``module_name`` in ``sys.modules``.

    Not at once, even if the module is there: callers register while depgraph is
    still being imported, and callbacks may import depgraph's other registries.

    A callback returns ``False`` when the module is not usable yet (still being
    initialised, the name it needs not yet defined); it then runs again at the
    next :func:`resolve`.
    """
    _PENDING.setdefault(module_name, []).append(callback)


def resolve() -> None:
    """Run the callbacks of every awaited module that has been imported since the last call."""
    if not _PENDING:
        return
    for name in [n for n in _PENDING if sys.modules.get(n) is not None]:
        # Pop first: a callback that looks something up re-enters resolve() and must not run twice.
        callbacks = _PENDING.pop(name)
        retry = [cb for cb in callbacks if cb(sys.modules[name]) is False]
        if retry:
            _PENDING.setdefault(name, []).extend(retry)
