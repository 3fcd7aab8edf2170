"""Every public class, function and method of depgraph has a docstring; no signature types a group as ``Any``.

The API reference (``mkdocs build --strict``, run by .ci/run) is generated from
these docstrings. ``NOT_YET_DOCUMENTED`` listed what predated this check and is now
empty: every public name needs a docstring, and the list must stay empty (an entry that
gained a docstring fails as stale).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import depgraph

NOT_YET_DOCUMENTED: frozenset[str] = frozenset()


def _public_objects() -> dict[str, object]:
    """``qualified name -> function`` for every public class, function and method defined in depgraph."""
    found: dict[str, object] = {}
    for info in pkgutil.walk_packages(depgraph.__path__, "depgraph."):
        if any(part.startswith("_") for part in info.name.split(".")[1:]):
            continue
        module = importlib.import_module(info.name)
        names = getattr(module, "__all__", None) or [n for n in vars(module) if not n.startswith("_")]
        for name in names:
            obj = getattr(module, name, None)
            if not (inspect.isclass(obj) or inspect.isfunction(obj)):
                continue
            if not getattr(obj, "__module__", "").startswith("depgraph"):
                continue
            found.setdefault(f"{obj.__module__}.{obj.__qualname__}", obj)
            if inspect.isclass(obj):
                for attr, member in vars(obj).items():
                    fn = member.fget if isinstance(member, property) else getattr(member, "__func__", member)
                    if not attr.startswith("_") and inspect.isfunction(fn):
                        found.setdefault(f"{obj.__module__}.{obj.__qualname__}.{attr}", (obj, attr, fn))
    return found


def _has_doc(entry: object) -> bool:
    if not isinstance(entry, tuple):
        return entry.__doc__ is not None
    cls, attr, fn = entry
    if fn.__doc__ is not None:
        return True
    # an override of a documented base method inherits its docstring
    return any(attr in vars(base) and getattr(base, attr).__doc__ for base in cls.__mro__[1:])


def test_public_api_is_documented():
    objects = _public_objects()
    assert len(objects) > 400  # the walk found the package
    missing = sorted(n for n, e in objects.items() if not _has_doc(e) and n not in NOT_YET_DOCUMENTED)
    assert not missing, f"public names without a docstring: {missing}"
    stale = sorted(n for n in NOT_YET_DOCUMENTED if n not in objects or _has_doc(objects[n]))
    assert not stale, f"documented or gone; remove from NOT_YET_DOCUMENTED: {stale}"
    assert not NOT_YET_DOCUMENTED, "every public name is documented now: add a docstring instead"


def test_no_signature_types_a_group_as_any():
    offenders = []
    for name, entry in _public_objects().items():
        fn = entry[2] if isinstance(entry, tuple) else entry
        if not inspect.isfunction(fn):
            continue
        for param, ann in getattr(fn, "__annotations__", {}).items():
            if param in ("group", "groups", "dep") and ann in ("Any", "typing.Any"):
                offenders.append(f"{name}({param})")
    assert not offenders, offenders
