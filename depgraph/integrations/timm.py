"""Keep timm attention modules' size attributes and attention scale consistent with their pruned layers.

The sizes timm's forward passes to reshapes (``num_heads``, ``head_dim``,
``attn_dim`` of ``timm.layers.Attention``) are updated by the graph itself: the
trace saw them used as sizes. What the forward does *not* read along the traced
path goes stale, most visibly ``scale = head_dim ** -0.5``: the fused path
(``F.scaled_dot_product_attention`` with its default scale, ``1/sqrt(new
head_dim)``) and the explicit path (``q * self.scale``, the old value) then
compute different things after a head-dim prune. This hook, run inside every
prune's transaction, folds ``old scale / new scale`` into the query rows of the
projection and stores the new scale, so ``scale == head_dim ** -0.5`` again and
both paths compute the unpruned network with those dims removed, exactly. It
also sets the head-count and width attributes (``num_heads``, ``num_kv_heads``,
``attn_dim``) that no traced reshape read, from the measured weights.

``DependencyGraph.build_dependency`` attaches it to models holding timm modules;
nothing here imports timm.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch.nn as nn

from ._hf_layers import AttentionLayer, LayerIndex
from ._hf_numerics import ScaleFolder
from ._undo import UndoLog

__all__ = ["uses_timm", "attach", "AttentionSync"]


def uses_timm(model: nn.Module) -> bool:
    """True when any module of ``model`` is a timm class."""
    return any(type(m).__module__.startswith("timm.") for m in model.modules())


class AttentionSync:
    """The after-prune hook: ``hook(graph, plan)`` syncs; ``hook(graph, None)`` undoes the last sync."""

    def __init__(self, model: nn.Module) -> None:
        self._model = weakref.ref(model)
        self._layers = LayerIndex(model)
        self._folder = ScaleFolder()
        for a in self._attention():  # before any prune: which scales are 1/sqrt(head_dim)
            self._folder.prime(a)
        self._last = UndoLog()

    def _attention(self) -> list[AttentionLayer]:
        return [a for a in self._layers.measure()[0] if type(a.module).__module__.startswith("timm.")]

    def __call__(self, graph: Any, plan: Any) -> None:
        if plan is None:
            self._last.undo()
            return
        self._last = UndoLog()
        for a in self._attention():
            self._folder.fold(a, self._last)
            _sync_sizes(a, self._last)


def _sync_sizes(a: AttentionLayer, log: UndoLog) -> None:
    """Size attributes equal, before the prune, to what the weights now measure; only ints are touched."""
    sizes = {"num_heads": a.heads, "num_kv_heads": a.kv_heads, "attn_dim": a.q_width}
    for attr, value in sizes.items():
        old = vars(a.module).get(attr)
        if value and isinstance(old, int) and not isinstance(old, bool) and old != value:
            log.setattr(a.module, attr, int(value))


def attach(graph: Any) -> AttentionSync | None:
    """Register :class:`AttentionSync` on a built graph of a model holding timm attention (once)."""
    model = graph.model
    if model is None or not uses_timm(model):
        return None
    for hook in graph._after_prune_hooks:
        if isinstance(hook, AttentionSync) and hook._model() is model:
            return hook
    hook = AttentionSync(model)
    if not hook._attention():
        return None
    graph._after_prune_hooks.append(hook)
    return hook
