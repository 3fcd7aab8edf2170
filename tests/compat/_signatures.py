"""Compare the public surface of torch_pruning with depgraph's.

``public_paths`` walks the original package the way a user reaches it (module
attributes, classes and their public methods); ``signature_problems`` says in
words why depgraph's callable does not accept every call the original accepts.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable, Iterator
from typing import Any

_P = inspect.Parameter
_POSITIONAL = (_P.POSITIONAL_ONLY, _P.POSITIONAL_OR_KEYWORD)

# Dunder methods users call directly (``imp(group)``, ``handler(layer, idxs)``).
PUBLIC_DUNDERS = ("__init__", "__call__")


def _is_original(obj: Any, package: str) -> bool:
    module = getattr(obj, "__module__", None) or ""
    return module == package or module.startswith(package + ".")


def public_paths(root: types.ModuleType, modules: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """Yield ``(dotted path, object)`` for every public name under ``modules``.

    Args:
        root: the original package (only objects it defines are walked; leaked
            imports such as ``torch`` or ``typing`` are not its API).
        modules: ``{dotted path: module or class}`` to list (``"tp.utils"``...).
    """
    package = root.__name__
    for prefix, mod in modules.items():
        for name in sorted(vars(mod)):
            if name.startswith("_"):
                continue
            obj = getattr(mod, name)
            if isinstance(obj, types.ModuleType):
                if obj.__name__.startswith(package):
                    yield f"{prefix}.{name}", obj
                continue
            if callable(obj) and not isinstance(obj, type) and not _is_original(obj, package):
                if not _is_original(getattr(obj, "__self__", None), package):
                    continue
            if isinstance(obj, type) and not _is_original(obj, package):
                continue
            yield f"{prefix}.{name}", obj
            if isinstance(obj, type):
                yield from _class_members(f"{prefix}.{name}", obj, package)


def _class_members(prefix: str, cls: type, package: str) -> Iterator[tuple[str, Any]]:
    for name in sorted(dir(cls)):
        if name.startswith("_") and name not in PUBLIC_DUNDERS:
            continue
        owner = next((k for k in cls.__mro__ if name in vars(k)), None)
        if owner is None or not _is_original(owner, package):
            continue
        yield f"{prefix}.{name}", inspect.getattr_static(owner, name)


def resolve(root: Any, dotted: str) -> Any:
    """Follow ``a.b.c`` from ``root``; raises AttributeError naming the missing part.

    The last step on a class reads the attribute statically (a ``staticmethod``
    stays one), so methods compare like for like.
    """
    *parents, last = dotted.split(".")
    obj = root
    for part in parents:
        obj = getattr(obj, part)
    return inspect.getattr_static(obj, last) if isinstance(obj, type) else getattr(obj, last)


def _unwrap(member: Any) -> tuple[Callable | None, bool]:
    """``(function, takes self/cls first)`` for a class attribute or a plain callable."""
    if isinstance(member, staticmethod):
        return member.__func__, False
    if isinstance(member, classmethod):
        return member.__func__, True
    if isinstance(member, property) or not callable(member):
        return None, False
    if inspect.isfunction(member) and "." in member.__qualname__ and "<locals>" not in member.__qualname__:
        return member, True  # a method read from its class: first parameter is self
    return member, False


def _default_key(value: Any) -> Any:
    """Defaults that mean the same in both libraries compare equal.

    An empty mutable container (the original's ``dict()`` / ``[]`` defaults) and
    ``None`` both mean "nothing given"; functions and classes compare by name,
    as the two libraries define their own ``linear_scheduler`` and type tuples.
    """
    if value is None or isinstance(value, dict) or (isinstance(value, (list, set, tuple)) and not value):
        return None  # any dict: the original's ``dict()`` defaults are shared and it writes into them
    if isinstance(value, (list, tuple)):
        return tuple(_default_key(v) for v in value)
    if isinstance(value, type) or inspect.isfunction(value) or inspect.ismethod(value):
        return value.__qualname__
    return value


def signature_problems(original: Any, ours: Any) -> list[str]:
    """Why ``ours`` would reject or misread a call written for ``original`` (empty: compatible).

    Both are class attributes (as ``inspect.getattr_static`` returns them, so a
    static method is told from a method) or plain callables. Every original
    parameter must exist in ours under the same name, at the same position when
    it can be passed positionally, with an equal default; ``*args`` /
    ``**kwargs`` must stay; parameters ours adds are keyword-only with a default.
    """
    if isinstance(original, property):
        return [] if isinstance(ours, property) or not callable(ours) else ["the original is a property"]
    fo, self_o = _unwrap(original)
    if fo is None:
        return []
    fd, self_d = _unwrap(ours)
    if fd is None:
        return ["not callable in depgraph"]
    if isinstance(fo, type) or isinstance(fd, type):
        return []  # a class: its __init__ and __call__ are compared as members
    try:
        sig_o = inspect.signature(fo)
    except (TypeError, ValueError):
        return []
    try:
        sig_d = inspect.signature(fd)
    except (TypeError, ValueError):
        return ["depgraph's signature cannot be read"]
    po = list(sig_o.parameters.values())[int(self_o):]
    pd = list(sig_d.parameters.values())[int(self_d):]
    problems: list[str] = []
    by_name = {p.name: p for p in pd}
    pos_d = [p for p in pd if p.kind in _POSITIONAL]
    kinds_d = {p.kind for p in pd}
    for i, p in enumerate(po):
        if p.kind is _P.VAR_POSITIONAL:
            if _P.VAR_POSITIONAL not in kinds_d:
                problems.append(f"*{p.name} missing")
            continue
        if p.kind is _P.VAR_KEYWORD:
            if _P.VAR_KEYWORD not in kinds_d:
                problems.append(f"**{p.name} missing")
            continue
        q = by_name.get(p.name)
        if q is None:
            problems.append(f"parameter {p.name!r} missing")
            continue
        if p.kind in _POSITIONAL:
            if q.kind not in _POSITIONAL:
                problems.append(f"{p.name!r} is keyword-only in depgraph")
            elif i >= len(pos_d) or pos_d[i].name != p.name:
                at = pos_d.index(q) if q in pos_d else "?"
                problems.append(f"{p.name!r} at position {at}, the original has it at {i}")
        if (p.default is _P.empty) != (q.default is _P.empty):
            if p.default is _P.empty:
                continue  # ours gives a default to a required parameter: still accepts the call
            problems.append(f"{p.name!r} has no default in depgraph (original: {p.default!r})")
        elif p.default is not _P.empty and _default_key(p.default) != _default_key(q.default):
            problems.append(f"{p.name!r} defaults to {q.default!r}, the original to {p.default!r}")
    names_o = {p.name for p in po}
    for q in pd:
        if q.name in names_o or q.kind in (_P.VAR_POSITIONAL, _P.VAR_KEYWORD):
            continue
        if q.default is _P.empty and q.kind is not _P.VAR_KEYWORD:
            problems.append(f"extra parameter {q.name!r} is required")
        elif q.kind in _POSITIONAL:
            problems.append(f"extra parameter {q.name!r} is not keyword-only")
    return problems
