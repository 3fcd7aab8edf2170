"""Tensors the traced forward computed and the model kept between calls.

LeViT stores ``attention_biases[:, idxs]`` in ``self.attention_bias_cache[device]``
and reuses it on the next call. After a prune that tensor is stale (it still
has the old number of heads): nothing in the graph reaches it. Found after the
trace, such tensors are handled by where they are kept:

* an entry of a ``dict`` attribute is taken for a cache filled on a miss: the
  entry is dropped after every prune that reaches it;
* any other place (a plain attribute, a list) is left alone: it may be a
  record for inspection that the next call overwrites.

Entries an earlier call left in such dicts are taken out before the trace
(:func:`pop_cached`), so that the traced call computes them where the graph
sees it; they go back if the model fails without them.

A prune that reaches a dict entry, or a plain attribute the model reads back
on a later call (filled on a miss), runs the forward check: a stale tensor has
the old size, so a model that reads it fails and the prune is rolled back. A
plain attribute the model overwrites on every call (an activation kept for a
decoder or for inspection) cannot be stale: :func:`mark_rewritten` finds those
with one extra call at build time, so they do not make every prune reaching
them run a forward pass.

:func:`attributes_as_found` puts every tensor a call left on the modules back
as it was (``count_ops_and_params`` uses it, so a model that caches
activations is not left holding them).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from .graph import Value

__all__ = [
    "Kept",
    "CacheDropper",
    "find_kept",
    "drop_cached",
    "pop_cached",
    "restore_cached",
    "mark_rewritten",
    "attributes_as_found",
]


@dataclass(eq=False)
class Kept:
    """``holder[key]`` (a dict entry) or ``getattr(holder, key)`` / ``holder[key]`` of a list."""

    holder: Any = field(repr=False)
    key: Any
    value: Value
    where: str  # e.g. "blocks.0.attn.attention_bias_cache['cpu']"
    slots: frozenset = frozenset()  # the value's slots in the graph, filled when the graph is built
    rewritten: bool = False  # a plain attribute every call overwrites (see mark_rewritten)

    @property
    def is_cache(self) -> bool:
        """Whether the tensor sits in a dict (a cache keyed e.g. by device) rather than an attribute."""
        return isinstance(self.holder, dict)

    @property
    def may_be_stale(self) -> bool:
        """Whether a later call may read this tensor as it is now (then a prune reaching it is checked)."""
        return not self.rewritten

    def current(self) -> Any:
        """The tensor the holder keeps now (None once it was removed), to check after a prune
        whether the model would read a stale one.
        """
        if isinstance(self.holder, (dict, list)):
            try:
                return self.holder[self.key]
            except (KeyError, IndexError):
                return None
        return vars(self.holder).get(self.key)


def find_kept(model: nn.Module, live: dict[int, tuple[torch.Tensor, Value]]) -> list[Kept]:
    """Tensors produced by traced ops that module attributes (or dicts/lists in them) still hold."""
    out: list[Kept] = []

    def produced(t: Any) -> Value | None:
        hit = live.get(id(t)) if isinstance(t, torch.Tensor) else None
        return hit[1] if hit is not None and hit[0] is t and hit[1].kind == "op" else None

    for name, m in model.named_modules():
        for attr, obj in vars(m).items():
            if attr.startswith("_"):
                continue  # nn.Module's own registries (_parameters, _buffers, hooks) are private
            base = f"{name}.{attr}" if name else attr
            v = produced(obj)
            if v is not None:
                out.append(Kept(m, attr, v, base))
            elif isinstance(obj, dict):
                out += [Kept(obj, k, v, f"{base}[{k!r}]") for k, t in obj.items() if (v := produced(t)) is not None]
            elif isinstance(obj, list):
                out += [Kept(obj, i, v, f"{base}[{i}]") for i, t in enumerate(obj) if (v := produced(t)) is not None]
    return out


class CacheDropper:
    """An after-prune hook of ``DependencyGraph``: drops the cached entries a prune reached.

    Called with ``plan=None`` when a prune is rolled back: nothing to restore,
    the model refills its cache on the next call.
    """

    def __init__(self, kept: list[Kept]) -> None:
        self.kept = [k for k in kept if k.is_cache]

    def __call__(self, graph: Any, plan: Any) -> None:
        if plan is not None:
            drop_cached([k for k in self.kept if not k.slots.isdisjoint(plan.state)])


def drop_cached(kept: list[Kept]) -> None:
    """Drop the dict entries among ``kept`` (the model recomputes them on its next call)."""
    for k in kept:
        if k.is_cache:
            k.holder.pop(k.key, None)


def pop_cached(model: nn.Module) -> list[tuple[dict, Any, torch.Tensor]]:
    """Take every non-parameter tensor out of the public ``dict`` attributes of ``model``'s modules."""
    owned = {id(t) for t in model.parameters()} | {id(t) for t in model.buffers()}
    popped: list[tuple[dict, Any, torch.Tensor]] = []
    for m in model.modules():
        for attr, obj in vars(m).items():
            if attr.startswith("_") or not isinstance(obj, dict):
                continue  # nn.Module's own registries (_parameters, _buffers, hooks) are private
            for k in [k for k, t in obj.items() if isinstance(t, torch.Tensor) and id(t) not in owned]:
                popped.append((obj, k, obj.pop(k)))
    return popped


def restore_cached(popped: list[tuple[dict, Any, torch.Tensor]]) -> None:
    """Put back what :func:`pop_cached` took out."""
    for holder, key, t in popped:
        holder[key] = t


def mark_rewritten(kept: list[Kept], call: Callable[[], Any]) -> None:
    """Call the model once more and mark the plain attributes it overwrote (``Kept.rewritten``).

    Only when some kept tensor is a plain attribute (dict entries are caches by
    construction). The attributes are put back as they were after the trace, and
    a failing call marks nothing (every kept tensor stays checked).
    """
    plain = [k for k in kept if not k.is_cache]
    if not plain:
        return
    before = [k.current() for k in plain]
    try:
        call()
    except Exception:  # noqa: BLE001 - then nothing is known to be rewritten
        return
    finally:
        after = [k.current() for k in plain]
        for k, old in zip(plain, before, strict=True):
            _put(k, old)
    for k, old, new in zip(plain, before, after, strict=True):
        k.rewritten = isinstance(new, torch.Tensor) and new is not old


def _put(k: Kept, value: Any) -> None:
    if isinstance(k.holder, (dict, list)):
        with contextlib.suppress(KeyError, IndexError):
            k.holder[k.key] = value
    else:
        vars(k.holder)[k.key] = value


def _holds_tensor(v: Any) -> bool:
    if isinstance(v, torch.Tensor):
        return True
    if isinstance(v, dict):
        return any(isinstance(x, torch.Tensor) for x in v.values())
    if isinstance(v, (list, tuple)):
        return any(isinstance(x, torch.Tensor) for x in v)
    return False


@contextlib.contextmanager
def attributes_as_found(model: nn.Module) -> Iterator[None]:
    """Put back, on exit, every public module attribute holding tensors as it was on entry.

    A forward that keeps activations on ``self`` (a decoder's skip features, an
    attention map kept for inspection, a dict cache) would otherwise leave them on
    the model after a measurement, and a whole-model ``torch.save`` would carry them.
    Attributes the call added are removed; dicts and lists get their old contents back.
    """
    saved: list[tuple[nn.Module, dict[str, Any], dict[str, Any]]] = []
    for m in model.modules():
        values = {k: v for k, v in vars(m).items() if not k.startswith("_")}
        contents = {k: (dict(v) if isinstance(v, dict) else list(v)) for k, v in values.items()
                    if isinstance(v, (dict, list))}
        saved.append((m, values, contents))
    try:
        yield
    finally:
        for m, values, contents in saved:
            d = vars(m)
            for k in [k for k in d if not k.startswith("_") and k not in values and _holds_tensor(d[k])]:
                del d[k]
            for k, old in values.items():
                new = d.get(k)
                if new is not old and (_holds_tensor(new) or _holds_tensor(old)):
                    d[k] = old
                if k in contents and (_holds_tensor(old) or _holds_tensor(contents[k])):
                    if isinstance(old, list):
                        old[:] = contents[k]
                    else:
                        old.clear()
                        old.update(contents[k])
