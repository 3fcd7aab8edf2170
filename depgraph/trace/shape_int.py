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
import threading
import types
from collections.abc import Iterable, Iterator
from typing import Any

import torch

__all__ = ["ShapeInt", "AttrInt", "AttrExpr", "is_computed", "tag_shape", "attributes_tagged", "size_reads_recorded"]

# Collectors of the (value id, dim) pairs whose sizes the traced code compared or tested in Python
# (``if c.shape[1] <= 4: raise``), per thread (a trace records its own thread's forward, as the
# torch function mode does): innermost last; empty outside a trace.
_local = threading.local()


def _readers() -> list[set[tuple[int, int | None]]]:
    stack = getattr(_local, "readers", None)
    if stack is None:
        stack = _local.readers = []
    return stack


@contextlib.contextmanager
def size_reads_recorded() -> Iterator[set[tuple[int, int | None]]]:
    """Collect the ``(value id, dim)`` pairs of every :class:`ShapeInt` compared or tested for truth.

    Arithmetic and reshape arguments follow a prune (the rules see them); a comparison is Python
    control flow no rule sees, so a prune of that dim must be checked by running the model.
    """
    got: set[tuple[int, int | None]] = set()
    stack = _readers()
    stack.append(got)
    try:
        yield got
    finally:
        stack.pop()  # this collector: nested ones were popped by their own exits


def _note_read(*values: Any) -> None:
    stack = _readers()
    if stack:
        for v in values:
            if isinstance(v, ShapeInt) and v.src:
                stack[-1].update(v.src)


def _read_then(name: str) -> Any:
    """``int``'s method ``name``, noting first that the traced code read the operands' sizes."""
    plain = getattr(int, name)

    def method(self: int, *other: Any) -> Any:
        _note_read(self, *other)
        return plain(self, *other)

    method.__name__ = name
    return method


class ShapeInt(int):
    """An ``int`` derived from a traced tensor's shape."""

    # ``src``: the (value id, dim) pairs this int was computed from, so a rule can
    # tell a size read from the tensor it reshapes from one read from another tensor.

    # ``attrs``: attribute factors multiplied in (``B * self.num_heads``), or None once the
    # int is anything but a product of shape sizes, literals and attributes.

    def __new__(cls, value: int, src: frozenset = frozenset(), attrs: tuple | None = ()) -> ShapeInt:
        obj = super().__new__(cls, value)
        obj.src = src
        obj.attrs = attrs
        return obj

    def _wrap(self, v: Any, o: Any = None, product: bool = False) -> Any:
        if isinstance(v, int) and not isinstance(v, bool):
            return ShapeInt(v, self.src | getattr(o, "src", frozenset()), self._attrs_with(o) if product else None)
        return v

    def _attrs_with(self, o: Any) -> tuple | None:
        """The attribute factors of ``self * o``: a single-term attribute product joins them."""
        mine = self.attrs
        if mine is None:
            return None
        if isinstance(o, ShapeInt):
            return None if o.attrs is None else mine + o.attrs
        if isinstance(o, AttrExpr):
            if len(o.terms) != 1 or o.terms[0][0] != 1:
                return None
            return mine + tuple(o.terms[0][1])
        return mine

    @property
    def shape_part(self) -> int:
        """The value without its attribute factors (the part read from shapes and literals)."""
        n = int(self)
        for _, _, v in self.attrs or ():
            n //= max(int(v), 1)
        return n

    def __add__(self, o): return self._wrap(int.__add__(self, o), o)
    def __radd__(self, o): return self._wrap(int.__radd__(self, o), o)
    def __sub__(self, o): return self._wrap(int.__sub__(self, o), o)
    def __rsub__(self, o): return self._wrap(int.__rsub__(self, o), o)
    def __mul__(self, o): return self._wrap(int.__mul__(self, o), o, product=True)
    def __rmul__(self, o): return self._wrap(int.__rmul__(self, o), o, product=True)
    def __floordiv__(self, o): return self._wrap(int.__floordiv__(self, o), o)
    def __rfloordiv__(self, o): return self._wrap(int.__rfloordiv__(self, o), o)
    def __mod__(self, o): return self._wrap(int.__mod__(self, o), o)
    def __rmod__(self, o): return self._wrap(int.__rmod__(self, o), o)
    def __pow__(self, o, mod=None): return self._wrap(int.__pow__(self, o, mod))
    def __neg__(self): return self._wrap(int.__neg__(self))
    def __pos__(self): return self
    def __abs__(self): return self._wrap(int.__abs__(self))

    # Comparisons and truth tests: Python decides with the size, so its dim is recorded as read.
    __eq__ = _read_then("__eq__")
    __ne__ = _read_then("__ne__")
    __lt__ = _read_then("__lt__")
    __le__ = _read_then("__le__")
    __gt__ = _read_then("__gt__")
    __ge__ = _read_then("__ge__")
    __bool__ = _read_then("__bool__")
    __hash__ = int.__hash__  # defining __eq__ would otherwise make ShapeInts unhashable

    def __repr__(self) -> str:
        return int.__repr__(self)


Factor = tuple  # (owner, attribute name, value at trace time)
Term = tuple  # (coefficient, (Factor, ...)): coefficient * product of the factors


class AttrExpr(int):
    """An ``int`` computed from attributes by ``+``, ``-`` and ``*``: a sum of products of them.

    Phi-3 slices its fused projection at ``config.num_attention_heads * self.head_dim``:
    the bound is the term ``1 * (num_attention_heads, head_dim)``. A rule that
    knows the terms can tell how many positions before the bound a prune may
    remove (each term a block of ``coefficient x factor sizes``) and keep the
    bound right by updating the attributes. ``//``, ``%`` and anything else
    give plain ints (not invertible); with a :class:`ShapeInt` the ShapeInt wins.
    Terms keep the order they were written in.
    """

    terms: tuple[Term, ...]

    def __new__(cls, value: int, terms: tuple[Term, ...]) -> AttrExpr:
        obj = super().__new__(cls, value)
        obj.terms = terms
        return obj

    @staticmethod
    def _terms_of(o: Any) -> tuple[Term, ...] | None:
        if isinstance(o, AttrExpr):
            return o.terms
        if isinstance(o, int) and not isinstance(o, (bool, ShapeInt)):
            return ((int(o), ()),) if o else ()
        return None

    def _sum(self, o: Any, sign: int, reverse: bool = False) -> Any:
        theirs = self._terms_of(o)
        if theirs is None:
            return NotImplemented
        mine = self.terms if sign > 0 or not reverse else tuple((-c, f) for c, f in self.terms)
        other = theirs if sign > 0 or reverse else tuple((-c, f) for c, f in theirs)
        value = int(o) + sign * int(self) if reverse else int(self) + sign * int(o)
        return AttrExpr(value, other + mine if reverse else mine + other)

    def __add__(self, o): return self._sum(o, 1)
    def __radd__(self, o): return self._sum(o, 1, reverse=True)
    def __sub__(self, o): return self._sum(o, -1)
    def __rsub__(self, o): return self._sum(o, -1, reverse=True)

    def __mul__(self, o):
        theirs = self._terms_of(o)
        if theirs is None:
            return NotImplemented
        terms = tuple((a * b, fa + fb) for a, fa in self.terms for b, fb in theirs)
        return AttrExpr(int(self) * int(o), terms)

    def __rmul__(self, o):
        theirs = self._terms_of(o)
        if theirs is None:
            return NotImplemented
        return AttrExpr(int(o) * int(self), tuple((b * a, fb + fa) for b, fb in theirs for a, fa in self.terms))

    def __neg__(self): return AttrExpr(-int(self), tuple((-c, f) for c, f in self.terms))
    def __pos__(self): return self

    def __reduce__(self):  # a copy (``copy.deepcopy(config)`` in a forward) or a pickle is a plain int
        return (int, (int(self),))

    def __repr__(self) -> str:
        return int.__repr__(self)


class AttrInt(AttrExpr):
    """An ``int`` read from an attribute (``self.num_heads``, ``config.num_attention_heads``) during the trace.

    A size argument that is exactly such an attribute can follow a prune: the
    graph sets the attribute to the new size afterwards. Arithmetic on it gives
    an :class:`AttrExpr`.
    """

    def __new__(cls, value: int, owner: Any, attr: str) -> AttrInt:
        obj = super().__new__(cls, value, ((1, ((owner, attr, int(value)),)),) if value else ())
        obj.owner, obj.attr = owner, attr
        return obj


def _size_holders(modules: Iterable[Any]) -> list[Any]:
    """The modules, then plain objects they hold (a Hugging Face ``config``), each once.

    Configs are not modules, but attention layers read sizes from them
    (``self.config.num_attention_heads``); tagging them lets a rule see that.
    """
    out: list[Any] = []
    seen: set[int] = set()
    extra: list[Any] = []
    for m in modules:
        if id(m) in seen:
            continue
        seen.add(id(m))
        out.append(m)
        for v in vars(m).values():
            if (id(v) not in seen and hasattr(v, "__dict__") and not callable(v)
                    and not isinstance(v, (torch.nn.Module, torch.Tensor, type, types.ModuleType))):
                seen.add(id(v))
                extra.append(v)
    return out + extra


@contextlib.contextmanager
def attributes_tagged(modules: Iterable[Any]) -> Iterator[None]:
    """Replace int attributes of ``modules`` (and of configs they hold) by :class:`AttrInt` during a trace."""
    changed: list[tuple[Any, str, int]] = []
    holders = _size_holders(modules)
    try:
        for m in holders:
            for k, v in list(vars(m).items()):
                if type(v) is int and not k.startswith("_"):
                    m.__dict__[k] = AttrInt(v, m, k)
                    changed.append((m, k, v))
        yield
    finally:
        for m, k, v in changed:
            if isinstance(m.__dict__.get(k), AttrInt):
                m.__dict__[k] = v
        for m in holders:
            _untag_stored(m)


_TRACED_INTS = (ShapeInt, AttrExpr)


def _untag_stored(holder: Any) -> None:
    """Make plain ints of the traced ints the forward stored on ``holder`` (``self.window_size = x.shape[1]``).

    Left there, they would outlive the trace: a whole-model pickle would need depgraph
    to load, and the next trace would read a ShapeInt where the model holds an int.
    """
    d = vars(holder)
    for k, v in list(d.items()):
        if isinstance(v, _TRACED_INTS):
            d[k] = int(v)
        elif type(v) in (tuple, list, torch.Size) and any(isinstance(e, _TRACED_INTS) for e in v):
            plain = [int(e) if isinstance(e, _TRACED_INTS) else e for e in v]
            if type(v) is list:
                v[:] = plain  # the same list: whoever else holds it sees plain ints too
            else:
                d[k] = type(v)(plain)


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
