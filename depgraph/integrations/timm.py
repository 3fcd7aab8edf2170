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
also sets the size attributes (``num_heads``, ``head_dim``, ``num_kv_heads``,
``attn_dim``) that no traced reshape read, from the measured weights and the
one size the forward did read (see :func:`_sync_sizes`).

Each prune syncs only the attention layers it reached: those with a projection
output or a bound size attribute among the slots of the prune's plan (an index
built once per graph, see :class:`_Reach`). A pruner step prunes a group per
layer; syncing every layer after each of them cost ``O(L)`` per group, ``O(L²)``
per step. The sync of a layer no prune reached would change nothing (it is
idempotent: sizes already agree, the scale already follows the head dim), so
the result is what syncing every layer gives, bit for bit, with the fold applied
once per head-dim change as before.

``DependencyGraph.build_dependency`` attaches it to models holding timm modules;
nothing here imports timm.
"""

from __future__ import annotations

import weakref
from dataclasses import replace
from typing import Any

import torch.nn as nn

from ._hf_layers import HEAD_DIM_ATTRS, AttentionLayer, LayerIndex
from ._hf_numerics import ScaleFolder
from ._hooks import attach_once
from ._undo import UndoLog

__all__ = ["uses_timm", "attach", "AttentionSync"]


def uses_timm(model: nn.Module) -> bool:
    """True when any module of ``model`` is a timm class."""
    return any(type(m).__module__.startswith("timm.") for m in model.modules())


class AttentionSync:
    """The after-prune hook: ``hook(graph, plan)`` syncs; ``hook(graph, None)`` undoes the last sync."""

    def __init__(self, model: nn.Module) -> None:
        self.model_ref = weakref.ref(model)
        self._layers = LayerIndex(model)
        # positions (in LayerIndex.attention_modules) of the timm attention modules: the ones synced
        self._timm = [i for i, (_, m) in enumerate(self._layers.attention_modules)
                      if type(m).__module__.startswith("timm.")]
        self._folder = ScaleFolder()
        for a in self.attention_layers():  # before any prune: which scales are 1/sqrt(head_dim)
            self._folder.prime(a)
        self._last = UndoLog()
        self._reach: _Reach | None = None  # built on the first prune, again when the graph is rebuilt

    def attention_layers(self) -> list[AttentionLayer]:
        """The model's timm attention blocks as measured now; an empty list means there is
        nothing for this hook to keep in step, so it is not attached."""
        return self._layers.measure_attention(self._timm)

    def __call__(self, graph: Any, plan: Any) -> None:
        if plan is None:
            self._last.undo()
            return
        self._last = UndoLog()
        reach = self._reach_of(graph)
        for a in self._layers.measure_attention(reach.touched(plan)):
            a = _sync_sizes(a, reach.bound, self._last)
            if a is not None:
                self._folder.fold(a, self._last)

    def _reach_of(self, graph: Any) -> _Reach:
        if self._reach is None or self._reach.slot_graph is not graph.slot_graph:
            layers = [(i, a) for i in self._timm for a in self._layers.measure_attention([i])]
            self._reach = _Reach(graph, layers)
        return self._reach


class _Reach:
    """Which timm attention layers a prune can change, looked up from the slots its plan reached.

    A layer's sync reads the widths of its query and key projections and its own size
    attributes; those change only when a prune reaches the projections' output slots or a
    slot one of the attributes is bound to. Built once per slot graph, ``O(layers + bindings)``;
    :meth:`touched` is then ``O(slots of the plan)``.
    """

    def __init__(self, graph: Any, layers: list[tuple[int, AttentionLayer]]) -> None:
        """``layers``: ``(position, layer)`` of each attention layer to watch (positions as the caller measures)."""
        self.slot_graph = graph.slot_graph
        self._all = sorted(i for i, _ in layers)
        self._by_slot: dict[int, set[int]] = {}
        self._always: set[int] = set()  # a projection that is no graph node: synced after every prune
        for i, a in layers:
            for proj in (a.q, a.k):
                node = graph.module2node.get(proj) if proj is not None else None
                if proj is not None and (node is None or node.out_slot is None):
                    self._always.add(i)
                elif node is not None:
                    self._by_slot.setdefault(node.out_slot, set()).add(i)
        # (id(module), attr) of the size attributes the graph keeps current (the forward read them)
        self.bound: set[tuple[int, str]] = set()
        position = {id(a.module): i for i, a in layers}
        for slot, pairs in self.slot_graph.bindings.items():
            for owner, attr in pairs:
                i = position.get(id(owner))
                if i is not None:
                    self.bound.add((id(owner), attr))
                    self._by_slot.setdefault(slot, set()).add(i)

    def touched(self, plan: Any) -> list[int]:
        """The layers ``plan`` may have changed, in model order (every layer for a plan without ``state``)."""
        state = getattr(plan, "state", None)
        if state is None:
            return self._all
        hit = set(self._always)
        for slot in state:
            hit.update(self._by_slot.get(slot, ()))
        return sorted(hit)


def _sync_sizes(a: AttentionLayer, bound: set[tuple[int, str]], log: UndoLog) -> AttentionLayer | None:
    """Set the head count and head dim the forward did not read, from the one it did; None if it read neither.

    After a prune exactly one of the two changed, and only an attribute the graph
    keeps current (a reshape read it) tells which: ``head_dim`` read -> the head
    count is ``q_width // head_dim``; ``num_heads`` read -> the head dim is
    ``q_width // num_heads``. With neither read nothing is touched (a stale value
    would be trusted otherwise).
    """
    m = vars(a.module)
    hd_attr = next((k for k in HEAD_DIM_ATTRS if _is_int(m.get(k))), None)
    if hd_attr is not None and (id(a.module), hd_attr) in bound:
        head_dim = m[hd_attr]
    elif _is_int(m.get("num_heads")) and (id(a.module), "num_heads") in bound and m["num_heads"]:
        head_dim = a.q_width // m["num_heads"]
    else:
        return None
    if not head_dim or a.q_width % head_dim or a.kv_width % head_dim:
        return None
    sizes = {"num_heads": a.q_width // head_dim, "num_kv_heads": a.kv_width // head_dim, "attn_dim": a.q_width}
    if hd_attr is not None:
        sizes[hd_attr] = head_dim
    for attr, value in sizes.items():
        if _is_int(m.get(attr)) and m[attr] != value:
            log.setattr(a.module, attr, int(value))
    return replace(a, head_dim=head_dim)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def attach(graph: Any) -> AttentionSync | None:
    """Register :class:`AttentionSync` on a built graph of a model holding timm attention (once)."""
    return attach_once(graph, AttentionSync, uses_timm, wanted=lambda hook: bool(hook.attention_layers()))
