"""Ints that remember they were read from a tensor's shape.

During a trace, ``x.shape`` and ``x.size()`` return :class:`ShapeInt` values and
arithmetic on them stays a ``ShapeInt``. A shape argument that reaches
``view``/``reshape``/``expand``/``split`` as a ``ShapeInt`` (or ``-1``) is
recomputed from the tensor on every call, so it follows a prune. A plain int
was written into the code (``x.view(-1, 400)``, ``self.num_heads``): the
dimension it sizes cannot change, and the rules freeze it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import torch

__all__ = ["ShapeInt", "AttrInt", "is_computed", "tag_shape", "attributes_tagged"]


class ShapeInt(int):
    """An ``int`` derived from a traced tensor's shape."""

    # ``src``: the (value id, dim) pairs this int was computed from, so a rule can
    # tell a size read from the tensor it reshapes from one read from another tensor.

    def __new__(cls, value: int, src: frozenset = frozenset()) -> ShapeInt:
        obj = super().__new__(cls, value)
        obj.src = src
        return obj

    def _wrap(self, v: Any, o: Any = None) -> Any:
        if isinstance(v, int) and not isinstance(v, bool):
            return ShapeInt(v, self.src | getattr(o, "src", frozenset()))
        return v

    def __add__(self, o): return self._wrap(int.__add__(self, o), o)
    def __radd__(self, o): return self._wrap(int.__radd__(self, o), o)
    def __sub__(self, o): return self._wrap(int.__sub__(self, o), o)
    def __rsub__(self, o): return self._wrap(int.__rsub__(self, o), o)
    def __mul__(self, o): return self._wrap(int.__mul__(self, o), o)
    def __rmul__(self, o): return self._wrap(int.__rmul__(self, o), o)
    def __floordiv__(self, o): return self._wrap(int.__floordiv__(self, o), o)
    def __rfloordiv__(self, o): return self._wrap(int.__rfloordiv__(self, o), o)
    def __mod__(self, o): return self._wrap(int.__mod__(self, o), o)
    def __rmod__(self, o): return self._wrap(int.__rmod__(self, o), o)
    def __pow__(self, o, mod=None): return self._wrap(int.__pow__(self, o, mod))
    def __neg__(self): return self._wrap(int.__neg__(self))
    def __pos__(self): return self
    def __abs__(self): return self._wrap(int.__abs__(self))

    def __repr__(self) -> str:
        return int.__repr__(self)


class AttrInt(int):
    """An ``int`` read from a module attribute (``self.num_heads``) during the trace.

    A size argument that is exactly such an attribute can follow a prune: the
    graph sets the attribute to the new size afterwards. Arithmetic gives plain
    ints (a size derived from attributes cannot be inverted, so it freezes).
    """

    def __new__(cls, value: int, owner: Any, attr: str) -> AttrInt:
        obj = super().__new__(cls, value)
        obj.owner, obj.attr = owner, attr
        return obj

    def __repr__(self) -> str:
        return int.__repr__(self)


@contextlib.contextmanager
def attributes_tagged(modules: Iterable[Any]) -> Iterator[None]:
    """Replace int attributes of ``modules`` by :class:`AttrInt` for the duration of a trace."""
    changed: list[tuple[Any, str, int]] = []
    try:
        for m in modules:
            for k, v in list(vars(m).items()):
                if type(v) is int and not k.startswith("_"):
                    m.__dict__[k] = AttrInt(v, m, k)
                    changed.append((m, k, v))
        yield
    finally:
        for m, k, v in changed:
            if isinstance(m.__dict__.get(k), AttrInt):
                m.__dict__[k] = v


def tag_shape(out: Any, value_id: int = -1, dim: int | None = None) -> Any:
    """``torch.Size`` / int results of ``.shape``/``.size(dim)`` of value ``value_id`` as ShapeInts."""
    if isinstance(out, torch.Size):
        return torch.Size([ShapeInt(v, frozenset({(value_id, i)})) for i, v in enumerate(out)])
    if isinstance(out, int) and not isinstance(out, bool):
        return ShapeInt(out, frozenset({(value_id, dim)}) if dim is not None else frozenset())
    return out


def is_computed(v: Any) -> bool:
    """True for ``-1`` and ShapeInts: sizes the code recomputes from the tensor."""
    return isinstance(v, ShapeInt) or (isinstance(v, int) and v == -1)
