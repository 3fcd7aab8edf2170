"""Registrations that wait until a third-party module has been imported by someone else.

Some layers depgraph supports belong to optional packages (GPT-2's ``Conv1D``
lives in ``transformers.pytorch_utils``). Registering a handler keyed by such a
type needs the type, but ``import depgraph`` must never import the package.
The way out: a model that contains the layer can only exist once its package
is in ``sys.modules``, so each registry looks there (:func:`resolve`) before a
lookup, and runs the callbacks of the modules that have appeared since.

Nothing is imported here: a module that was never imported keeps its callbacks
pending. A lookup costs ``O(1)`` however many modules are awaited: the awaited names
are looked up in ``sys.modules`` only when ``sys.modules`` changed since the last
look (its length or its newest entry: an import appends a key), or while a callback
asked to run again.

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
# (len(sys.modules), its newest key) when the awaited names were last looked up; None: look again
_SEEN: tuple[int, str | None] | None = None


def when_imported(module_name: str, callback: Callable[[ModuleType], bool | None]) -> None:
    """Run ``callback(module)`` at the first :func:`resolve` that finds ``module_name`` in ``sys.modules``.

    Not at once, even if the module is there: callers register while depgraph is
    still being imported, and callbacks may import depgraph's other registries.

    A callback returns ``False`` when the module is not usable yet (still being
    initialised, the name it needs not yet defined); it then runs again at the
    next :func:`resolve`.
    """
    global _SEEN
    _PENDING.setdefault(module_name, []).append(callback)
    _SEEN = None  # a name to look up that the last look did not know


def resolve() -> None:
    """Run the callbacks of every awaited module that has been imported since the last call."""
    global _SEEN
    if not _PENDING:
        return
    seen = _modules_signature()
    if seen == _SEEN:  # nothing imported since the last look: no awaited name can have appeared
        return
    _SEEN = seen
    retried = False
    for name in _imported():
        # Pop first: a callback that looks something up re-enters resolve() and must not run twice.
        callbacks = _PENDING.pop(name)
        retry = [cb for cb in callbacks if cb(sys.modules[name]) is False]
        if retry:
            _PENDING.setdefault(name, []).extend(retry)
            retried = True
    if retried:  # a module still being initialised: look again next time, imports or not
        _SEEN = None


def _modules_signature() -> tuple[int, str | None]:
    """What changes when a module is imported: the length of ``sys.modules`` or its newest key."""
    return len(sys.modules), next(reversed(sys.modules), None)


def _imported() -> list[str]:
    """The awaited names now in ``sys.modules`` (one dict check per awaited name)."""
    return [n for n in _PENDING if sys.modules.get(n) is not None]
