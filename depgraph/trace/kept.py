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

Either way a prune that reaches such a tensor runs the forward check: a stale
tensor has the old size, so a model that reads it fails and the prune is
rolled back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from .graph import Value

__all__ = ["Kept", "CacheDropper", "find_kept", "drop_cached", "pop_cached", "restore_cached"]


@dataclass(eq=False)
class Kept:
    """``holder[key]`` (a dict entry) or ``getattr(holder, key)`` / ``holder[key]`` of a list."""

    holder: Any = field(repr=False)
    key: Any
    value: Value
    where: str  # e.g. "blocks.0.attn.attention_bias_cache['cpu']"
    slots: frozenset = frozenset()  # the value's slots in the graph, filled when the graph is built

    @property
    def is_cache(self) -> bool:
        return isinstance(self.holder, dict)


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
