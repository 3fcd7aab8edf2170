"""Ints that remember they were read from a tensor's shape.

During a trace, ``x.shape`` and ``x.size()`` return :class:`ShapeInt` values and
arithmetic on them stays a ``ShapeInt``. A shape argument that reaches
``view``/``reshape``/``expand``/``split`` as a ``ShapeInt`` (or ``-1``) is
recomputed from the tensor on every call, so it follows a prune. A plain int
was written into the code (``x.view(-1, 400)``, ``self.num_heads``): the
dimension it sizes cannot change, and the rules freeze it.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["ShapeInt", "is_computed", "tag_shape"]


class ShapeInt(int):
    """An ``int`` derived from a traced tensor's shape."""

    __slots__ = ()

    def _wrap(self, v: Any) -> Any:
        return ShapeInt(v) if isinstance(v, int) and not isinstance(v, bool) else v

    def __add__(self, o): return self._wrap(int.__add__(self, o))
    def __radd__(self, o): return self._wrap(int.__radd__(self, o))
    def __sub__(self, o): return self._wrap(int.__sub__(self, o))
    def __rsub__(self, o): return self._wrap(int.__rsub__(self, o))
    def __mul__(self, o): return self._wrap(int.__mul__(self, o))
    def __rmul__(self, o): return self._wrap(int.__rmul__(self, o))
    def __floordiv__(self, o): return self._wrap(int.__floordiv__(self, o))
    def __rfloordiv__(self, o): return self._wrap(int.__rfloordiv__(self, o))
    def __mod__(self, o): return self._wrap(int.__mod__(self, o))
    def __rmod__(self, o): return self._wrap(int.__rmod__(self, o))
    def __pow__(self, o, mod=None): return self._wrap(int.__pow__(self, o, mod))
    def __neg__(self): return self._wrap(int.__neg__(self))
    def __pos__(self): return self
    def __abs__(self): return self._wrap(int.__abs__(self))

    def __repr__(self) -> str:
        return int.__repr__(self)


def tag_shape(out: Any) -> Any:
    """``torch.Size`` / int results of ``.shape``/``.size()`` as ShapeInts."""
    if isinstance(out, torch.Size):
        return torch.Size([ShapeInt(v) for v in out])
    if isinstance(out, int) and not isinstance(out, bool):
        return ShapeInt(out)
    return out


def is_computed(v: Any) -> bool:
    """True for ``-1`` and ShapeInts: sizes the code recomputes from the tensor."""
    return isinstance(v, ShapeInt) or (isinstance(v, int) and v == -1)
