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

from .._lazy import resolve as _resolve_lazy
from ..errors import UnknownModuleError
from ..trace.graph import OpNode, Value
from .indexmap import IndexMap
from .slots import SlotGraph

__all__ = ["RuleContext", "register_dim_rule", "get_dim_rule", "registered_dim_rules", "DimRule"]

DimRule = Callable[[OpNode, "RuleContext"], None]
_RULES: dict[object, DimRule] = {}


def register_dim_rule(*targets: object) -> Callable[[DimRule], DimRule]:
    """Register ``rule`` for each torch callable / module type in ``targets``."""

    def deco(rule: DimRule) -> DimRule:
        for t in targets:
            if t is None:
                continue
            if t in _RULES and _RULES[t] is not rule:
                warnings.warn(f"replacing the dimension rule for {t!r}", stacklevel=2)
            _RULES[t] = rule
        return rule

    return deco


def get_dim_rule(target: object) -> DimRule | None:
    """The rule for a callable (or, for modules, the nearest registered base type)."""
    if isinstance(target, type):
        _resolve_lazy()  # module rules of optional packages (GPT-2's Conv1D) register on first use
    rule = _RULES.get(target)
    if rule is not None or not isinstance(target, type):
        return rule
    for cls in target.__mro__:
        if cls in _RULES:
            return _RULES[cls]
    return None


def require_dim_rule(target: object) -> DimRule:
    rule = get_dim_rule(target)
    if rule is None:
        raise UnknownModuleError(f"no dimension rule for {target!r}; {len(_RULES)} rules are registered")
    return rule


def registered_dim_rules() -> dict[object, DimRule]:
    return dict(_RULES)


class RuleContext:
    """What a rule may say about an op. Dims may be negative (counted from the end)."""

    def __init__(
        self,
        graph: SlotGraph,
        value_slots: dict[tuple[int, int], int],
        endpoint_of: Callable[[object, bool], int | None],
    ):
        self.graph = graph
        self.value_slots = value_slots
        self.covered: set[tuple[int, int]] = set()
        self._endpoint_of = endpoint_of

    def module_endpoint(self, module: object, is_out: bool) -> int | None:
        """The slot of a module's output (``is_out``) or input channels, if it has a handler."""
        return self._endpoint_of(module, is_out)

    # -- slots --------------------------------------------------------------
    def slot(self, v: Value, dim: int) -> int:
        d = dim % v.ndim
        key = (v.id, d)
        s = self.value_slots.get(key)
        if s is None:
            s = self.value_slots[key] = self.graph.new_slot(v.shape[d], f"{v!r}.dim{d}")
        self.covered.add(key)
        return s

    def new_axis(self, size: int, label: str) -> int:
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
        self.graph.freeze(self.slot(v, dim), reason)

    def inexact(self, v: Value, dim: int, reason: str) -> None:
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
