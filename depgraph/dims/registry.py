"""Registry of dimension rules, keyed by the exact torch callable or module type.

A rule is ``rule(op, ctx)``: it reads the op's exact arguments and tells the
:class:`RuleContext` how input and output dimensions relate. Any dimension of
size > 1 that a rule leaves unmentioned is frozen afterwards, so a rule can
only be too strict, never silently wrong.

Example:
    >>> @register_dim_rule(torch.Tensor.relu)
    ... def relu_rule(op, ctx):
    ...     ctx.elementwise(op)
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

from ..layers.spec import find_layer_part, registered_layers, set_layer_part
from ..trace.graph import OpNode, Value
from .indexmap import IndexMap
from .slots import SlotGraph

__all__ = ["RuleContext", "register_dim_rule", "get_dim_rule", "registered_dim_rules", "DimRule"]

DimRule = Callable[[OpNode, "RuleContext"], None]
_RULES: dict[object, DimRule] = {}


def register_dim_rule(*targets: object) -> Callable[[DimRule], DimRule]:
    """Register ``rule`` for each torch callable / module type in ``targets``; returns ``rule``.

    A module type's rule is the ``dim_rule`` part of its layer spec
    (:mod:`depgraph.layers`); ``None`` targets (a type missing from this torch) are skipped.
    Warns (``stacklevel=2``) when a registration is replaced.
    """

    def deco(rule: DimRule) -> DimRule:
        for t in targets:
            if t is None:
                continue
            if isinstance(t, type):
                set_layer_part(t, "dim_rule", rule, "dimension rule")
                continue
            if t in _RULES and _RULES[t] is not rule:
                warnings.warn(f"replacing the dimension rule for {t!r}", stacklevel=2)
            _RULES[t] = rule
        return rule

    return deco


def get_dim_rule(target: object) -> DimRule | None:
    """The rule for a callable, or for a module type the nearest ``dim_rule`` along its MRO."""
    if isinstance(target, type):
        return find_layer_part(target, "dim_rule")
    return _RULES.get(target)


def registered_dim_rules() -> dict[object, DimRule]:
    """A copy of the registry: torch callables and module types -> rule."""
    rules: dict[object, DimRule] = dict(_RULES)
    rules.update({t: s.dim_rule for t, s in registered_layers().items() if s.dim_rule is not None})
    return rules


class RuleContext:
    """What a rule may say about an op. Dims may be negative (counted from the end)."""

    def __init__(
        self,
        graph: SlotGraph,
        value_slots: dict[tuple[int, int], int],
        endpoint_of: Callable[[object, bool, int | None], int | None],
    ):
        self.graph = graph
        self.value_slots = value_slots
        self.covered: set[tuple[int, int]] = set()
        self._endpoint_of = endpoint_of

    def module_endpoint(self, module: object, is_out: bool, width: int | None = None) -> int | None:
        """The slot of a module's output (``is_out``) or input channels, if it has a handler.

        ``width`` is the traced size of that dim: used when a user's handler cannot
        report it (its ``get_out_channels`` raises).
        """
        return self._endpoint_of(module, is_out, width)

    # -- slots --------------------------------------------------------------
    def slot(self, v: Value, dim: int) -> int:
        """The slot of dim ``dim`` of ``v`` (created on first use); marks the dim as covered."""
        d = dim % v.ndim
        key = (v.id, d)
        s = self.value_slots.get(key)
        if s is None:
            s = self.value_slots[key] = self.graph.new_slot(v.shape[d], f"{v!r}.dim{d}")
        self.covered.add(key)
        return s

    def new_axis(self, size: int, label: str) -> int:
        """A fresh slot not tied to any value: a factor of a reshaped dim (heads, groups)."""
        return self.graph.new_slot(size, label)

    # -- couplings ------------------------------------------------------------
    def cover(self, v: Value, dim: int) -> None:
        """Say that ``dim`` of ``v`` needs no coupling (e.g. a reduced or broadcast dim)."""
        self.covered.add((v.id, dim % v.ndim))

    def identity(self, a: Value, da: int, b: Value, db: int) -> None:
        """Couple two dims position by position; a size mismatch freezes both."""
        sa, sb = self.slot(a, da), self.slot(b, db)
        if self.graph.sizes[sa] != self.graph.sizes[sb]:
            self.freeze(a, da, f"size mismatch {a.shape} vs {b.shape}")
            self.freeze(b, db, f"size mismatch {a.shape} vs {b.shape}")
            return
        self.graph.pair(sa, sb)

    def map(self, a: Value, da: int, b: Value, db: int, fwd: IndexMap) -> None:
        """Couple dim ``da`` of ``a`` to dim ``db`` of ``b`` through ``fwd`` (a position of a -> positions of b)."""
        self.graph.pair(self.slot(a, da), self.slot(b, db), fwd)

    def factor(self, merged: int, parts: list[int]) -> None:
        """``merged`` is the row-major product of ``parts``; size-1 parts are dropped."""
        parts = [p for p in parts if self.graph.sizes[p] > 1]
        if len(parts) == 1:
            self.graph.pair(merged, parts[0])
        elif parts:
            self.graph.factor(merged, parts)

    def bind(self, v: Value, dim: int, owner: object, attr: str) -> None:
        """``owner.attr`` is the size of ``dim`` of ``v``: update it when that dim is pruned."""
        self.graph.bind(self.slot(v, dim), owner, attr)

    def heads(self, q: Value, dq: int, k: Value, dk: int, where: str) -> None:
        """Dim ``dq`` of ``q`` and ``dk`` of ``k`` are the head axes of an attention op (see ``HeadAxis``)."""
        self.graph.mark_heads(self.slot(q, dq), self.slot(k, dk), where)

    def own_param(self, v: Value) -> None:
        """Parameter ``v`` is pruned by its layer's handler, and the rule tied its dims to the
        layer's endpoints (a weight standardised before use): it is no bare parameter."""
        self.graph.layer_params.add(v.id)

    def freeze(self, v: Value, dim: int, reason: str) -> None:
        """Forbid pruning dim ``dim`` of ``v``; ``reason`` is shown to the user."""
        self.graph.freeze(self.slot(v, dim), reason)

    def inexact(self, v: Value, dim: int, reason: str) -> None:
        """Pruning dim ``dim`` of ``v`` is valid but not equal to zeroing it (``verify`` reports ``reason``)."""
        self.graph.mark_inexact(self.slot(v, dim), reason)

    # -- common patterns ------------------------------------------------------
    def broadcast(self, inputs: list[Value], out: Value) -> None:
        """Elementwise with numpy broadcasting: align dims from the right.

        An input dim of size 1 broadcast against a larger output dim is *not*
        coupled: a 1-channel mask times a C-channel tensor leaves C free.
        """
        for v in inputs:
            off = out.ndim - v.ndim
            if off < 0:
                continue
            for d in range(v.ndim):
                if v.shape[d] == out.shape[d + off]:
                    if v.shape[d] > 1:
                        self.identity(v, d, out, d + off)
                    else:
                        self.cover(v, d)
                elif v.shape[d] == 1:
                    self.cover(v, d)
