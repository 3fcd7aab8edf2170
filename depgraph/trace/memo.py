"""Reuse a recorded trace when the same model is traced again on the same inputs, unchanged.

A Torch-Pruning script usually builds a ``DependencyGraph`` on ``(model,
example_inputs)`` and then constructs a pruner on the same pair, which traces
again: a second forward pass (a third of ResNet-50's analysis). This module
remembers the last trace of each model and hands it back when - and only when -
tracing again would record the very same thing.

**The key** (:func:`fingerprint`), taken just before a trace and compared just
before the next: the model object; every module (by qualified name, identity,
class, its class's ``forward``); every entry of every module's ``__dict__`` - its training flag,
parameters and buffers (identity, shape, dtype, device, ``requires_grad`` and
``_version``, the counter every in-place write bumps), sub-modules, hooks,
int/float/str/bool attributes by value, containers by content, other objects
by identity, and the attributes of plain objects the modules hold (a Hugging
Face ``config``); which modules are leaves (customized pruners change that);
the example inputs (structure, scalars by value, tensors by identity and
``_version``); the ``forward_fn`` / ``output_transform`` objects (a function
with what its closure cells and defaults hold); grad and inference mode, the
default dtype. Anything the key cannot describe safely (an inference-mode
tensor has no version counter, an object that is neither a plain value nor
weak-referenceable) means no reuse. A model whose forward leaves state
behind (a cache it fills, a counter, a kept activation) changes its own key,
so it is traced afresh every time. What the key cannot see: global variables
or class attributes the forward reads, and writes through ``tensor.data`` (which
bypass the version counter); call :func:`forget` after changing those.

**What is kept, and why it never keeps a model alive**: the trace is stored
pickled (a few tens of kB), with every object that is not the trace's own -
modules, parameters, configs, functions - replaced by a *weak* reference
(builtins and descriptors, which cannot reference a model, are held as they
are). The store maps ``id(model)`` to that record and forgets it when the
model is collected. Nothing is attached to the model, so ``torch.save``,
``copy.deepcopy``, ``state_dict`` and ``repr`` see exactly the model they saw
before, and dropping the last reference frees it at once (no reference cycle).
Each reuse unpickles a fresh :class:`~depgraph.trace.Trace`, so what a graph
builder writes into its trace (``Kept.slots``) never reaches another graph.
Traces holding tensors the model keeps between calls (``trace.kept``) are not
stored: the call that recorded them changed the model, so their key never
matches again anyway.
"""

from __future__ import annotations

import io
import pickle
import threading
import types
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

from .graph import OpNode, Trace, Value
from .shape_int import AttrExpr, AttrInt, ShapeInt

__all__ = ["fingerprint", "recall", "remember", "forget", "clear", "tensor_version"]

_MAX_MODELS = 4  # models remembered at once (the most recently traced)


class _UnkeyableError(Exception):
    """The model or its inputs hold something the key cannot describe: no reuse."""


# ---------------------------------------------------------------- the key

_SCALARS = frozenset({type(None), bool, int, float, complex, str, bytes, type(Ellipsis), torch.dtype, torch.device,
                      torch.layout, torch.memory_format})
# Objects of these types reference no model (module-level builtins and descriptors): safe to hold.
_GLOBAL_KINDS = (types.BuiltinFunctionType, types.MethodDescriptorType, types.WrapperDescriptorType,
                 types.GetSetDescriptorType, types.MemberDescriptorType, types.ClassMethodDescriptorType,
                 types.ModuleType)
_MODULE_SKIP = frozenset({"_depgraph_pending"})
_EMPTY = {dict: (dict, ()), OrderedDict: (OrderedDict, ())}


def tensor_version(t: torch.Tensor) -> int | None:
    """``t``'s version counter (every in-place write bumps it); None for an inference-mode tensor, which has none."""
    try:
        return t._version
    except RuntimeError:
        return None


def _cell(c: Any) -> Any:
    try:
        return c.cell_contents
    except ValueError:  # a cell not yet filled
        return _EMPTY_CELL


_EMPTY_CELL = "<empty cell>"


def _is_global(obj: Any) -> bool:
    if not isinstance(obj, _GLOBAL_KINDS):
        return False
    owner = getattr(obj, "__self__", None)  # a builtin bound to an object could hold a model
    return owner is None or isinstance(owner, (type, types.ModuleType))


class _Key:
    """Builds the plain tuple describing a model, its inputs and the call; weak references check identity."""

    def __init__(self) -> None:
        self.parts: list[Any] = []
        self.refs: list[weakref.ref] = []
        self.seen: set[int] = set()  # plain objects whose attributes are already in the key

    def ident(self, obj: Any) -> int:
        """``id(obj)``, valid as long as the weak reference taken here is alive."""
        try:
            self.refs.append(weakref.ref(obj))
        except TypeError:
            raise _UnkeyableError(type(obj).__name__) from None
        return id(obj)

    def snap(self, v: Any, depth: int = 0) -> Any:
        """A hashable description of ``v``: equal descriptions mean an equal (or the same) object."""
        t = type(v)
        if t in _SCALARS:
            return (t, v)  # a NaN is unequal to itself: such a key never matches (no reuse, never a wrong one)
        if (t is dict or t is OrderedDict) and not v:  # most of a module's __dict__: its empty hook tables
            return _EMPTY[t]
        if depth > 8:
            raise _UnkeyableError("nested too deep")
        if isinstance(v, torch.Tensor):
            version = tensor_version(v)
            if version is None:
                raise _UnkeyableError("inference tensor")
            return ("T", self.ident(v), version, tuple(v.shape), v.dtype, v.device, v.requires_grad, t)
        if isinstance(v, nn.Module):
            return ("M", self.ident(v))
        if isinstance(v, (tuple, list)):
            return (t, tuple(self.snap(x, depth + 1) for x in v))
        if isinstance(v, dict):
            return (t, tuple((self.snap(k, depth + 1), self.snap(x, depth + 1)) for k, x in v.items()))
        if isinstance(v, (set, frozenset)):
            return (t, frozenset(self.snap(x, depth + 1) for x in v))
        if isinstance(v, (int, float, str)):  # an enum member, a str subclass: type and value
            return (t, self.ident(v) if hasattr(v, "__weakref__") else None, v)
        if isinstance(v, slice):
            return (t, self.snap((v.start, v.stop, v.step), depth + 1))
        if isinstance(v, types.MethodType):  # a fresh object at each attribute read: its parts
            return ("B", self.snap(v.__self__, depth + 1), self.snap(v.__func__, depth + 1))
        if isinstance(v, types.FunctionType):  # a forward_fn, a hook: what its closure and defaults hold
            if id(v) in self.seen:
                return ("F", self.ident(v))
            self.seen.add(id(v))
            cells = tuple(self.snap(_cell(c), depth + 1) for c in v.__closure__ or ())
            return ("F", self.ident(v), cells, self.snap(v.__defaults__, depth + 1),
                    self.snap(v.__kwdefaults__, depth + 1))
        if _is_global(v):
            return ("G", v)
        out = ("O", t, self.ident(v))
        if (not callable(v) and not isinstance(v, type) and hasattr(v, "__dict__") and id(v) not in self.seen):
            self.seen.add(id(v))  # a config: its attributes are sizes and switches the forward reads
            self.parts.append(("attrs", id(v), self.snap(vars(v), depth + 1)))
        return out


def fingerprint(model: nn.Module, example_inputs: Any, leaves: dict[nn.Module, bool],
                forward_fn: Callable | None, output_transform: Callable | None) -> tuple | None:
    """What a trace of ``model`` on ``example_inputs`` depends on, or None where it cannot be told.

    ``leaves`` is the recorder's leaf decision per module. The result is
    ``(parts, weak references)``: the parts hold no model object (ids stand in
    for them, kept valid by the weak references).
    """
    key = _Key()
    try:
        key.parts += [key.ident(model), torch.is_grad_enabled(), torch.is_inference_mode_enabled(),
                      torch.get_default_dtype()]
        for name, m in model.named_modules(remove_duplicate=False):
            attrs = tuple((k, key.snap(v)) for k, v in vars(m).items() if k not in _MODULE_SKIP)
            forward = key.snap(type(m).forward)  # a class whose forward was replaced since
            key.parts.append((name, key.ident(m), type(m), forward, leaves.get(m, False), attrs))
        flat, spec = torch.utils._pytree.tree_flatten(example_inputs)
        key.parts += [type(example_inputs), str(spec), tuple(key.snap(x) for x in flat)]
        key.parts += [key.snap(forward_fn), key.snap(output_transform)]
    except _UnkeyableError:
        return None
    return tuple(key.parts), key.refs


# ---------------------------------------------------------------- the stored trace

_local = threading.local()  # the table of the record being loaded


def _deref(i: int) -> Any:
    obj = _local.table[i]
    if isinstance(obj, weakref.ref):
        obj = obj()
        if obj is None:
            raise _UnkeyableError("an object of the trace was collected")
    return obj


def _attr_expr(cls: type, value: int, terms: tuple, owner: Any = None, attr: str = "") -> AttrExpr:
    if cls is AttrInt:
        return AttrInt(value, owner, attr)
    return AttrExpr(value, terms)


_OWN = frozenset({Trace, OpNode, Value, ShapeInt, slice, torch.Size})


class _Pickler(pickle.Pickler):
    """Pickles a trace by value and everything else by a (weak) reference into ``table``."""

    def __init__(self, file: io.BytesIO, table: list) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.table = table

    def reducer_override(self, obj: Any) -> Any:
        t = type(obj)
        if t in _OWN or t in _SCALARS or obj is _deref or obj is _attr_expr:
            return NotImplemented
        if isinstance(obj, AttrExpr):  # its own __reduce__ makes a plain int (right for a user's copy, not here)
            if isinstance(obj, AttrInt):
                return (_attr_expr, (AttrInt, int(obj), (), obj.owner, obj.attr))
            return (_attr_expr, (AttrExpr, int(obj), obj.terms))
        if isinstance(obj, types.MethodType):
            return (getattr, (obj.__self__, obj.__func__.__name__))
        try:
            ref: Any = weakref.ref(obj)
        except TypeError:
            if not _is_global(obj):
                raise _UnkeyableError(f"{t.__name__} in the trace") from None
            ref = obj
        self.table.append(ref)
        return (_deref, (len(self.table) - 1,))


class _Record:
    def __init__(self, model: nn.Module, key: tuple, data: bytes, table: list) -> None:
        mid = id(model)
        self.model = weakref.ref(model, lambda ref: _forget_ref(mid, ref))  # refers to no record: no cycle
        self.key, self.data, self.table = key, data, table


_store: dict[int, _Record] = {}
_store_lock = threading.Lock()


def _forget_ref(mid: int, ref: weakref.ref) -> None:
    """The model of a record was collected: drop the record (unless its id already holds a newer one)."""
    with _store_lock:
        rec = _store.get(mid)
        if rec is not None and rec.model is ref:
            del _store[mid]


def remember(model: nn.Module, key: tuple | None, trace: Trace) -> None:
    """Store ``trace`` of ``model`` under ``key`` (from :func:`fingerprint`, taken before the trace)."""
    if key is None or trace.kept:
        forget(model)
        return
    table: list = []
    buf = io.BytesIO()
    try:
        _Pickler(buf, table).dump(trace)
    except (_UnkeyableError, pickle.PicklingError, TypeError, AttributeError):
        forget(model)
        return
    rec = _Record(model, key, buf.getvalue(), table)
    with _store_lock:
        _store.pop(id(model), None)
        _store[id(model)] = rec
        while len(_store) > _MAX_MODELS:
            del _store[next(iter(_store))]


def recall(model: nn.Module, key: tuple | None) -> Trace | None:
    """A fresh copy of the trace stored for ``model`` if it was taken under an equal ``key``, else None."""
    if key is None:
        return None
    rec = _store.get(id(model))
    if rec is None or rec.model() is not model:
        return None
    parts, refs = rec.key
    if any(r() is None for r in refs) or parts != key[0]:
        return None
    _local.table = rec.table
    try:
        return pickle.loads(rec.data)
    except _UnkeyableError:
        return None
    finally:
        _local.table = None


def forget(model: nn.Module) -> None:
    """Drop the stored trace of ``model``: its next trace records afresh."""
    with _store_lock:
        _store.pop(id(model), None)


def clear() -> None:
    """Drop every stored trace."""
    with _store_lock:
        _store.clear()
