"""Tensor factories filled with one value: ``zeros``, ``ones``, ``empty``, ``full`` and ``new_*``.

Every position holds the same value, so removing positions is exact; what
matters is whether the *size* follows a prune. A size read from an attribute
(T5's ``torch.zeros(1, self.n_heads, T, K)``) is bound to it: the dim may
shrink and the attribute takes the new size. A size read from a tensor's
shape follows if that tensor's dim shrinks with it (checked once the graph is
built). A literal size freezes its dim. ``arange``, ``rand`` and friends
hold position-dependent values and have no rule.
"""

from __future__ import annotations

import torch

from ..trace.graph import OpNode, Value
from ._args import lookup
from .registry import RuleContext, register_dim_rule
from .reshape import freeze_written_sizes

_CONSTRUCTORS = lookup("zeros ones empty full", torch)
_METHODS = lookup("new_zeros new_ones new_empty new_full", torch.Tensor)


def _sizes(op: OpNode, first: int) -> list | None:
    """The size argument as given: ``f(2, 3)``, ``f((2, 3))``, ``f(size=(2, 3))``; None if unreadable."""
    name = getattr(op.target, "__name__", "")
    rest = list(op.args[first:])
    if name.endswith("full"):
        rest = rest[:1]  # (size, fill_value)
    if not rest:
        rest = [op.kwargs.get("size", ())]
    if len(rest) == 1 and isinstance(rest[0], (list, tuple, torch.Size)):
        rest = list(rest[0])
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in rest):
        return None
    return rest


@register_dim_rule(*_CONSTRUCTORS, *_METHODS)
def factory_rule(op: OpNode, ctx: RuleContext) -> None:
    """``zeros`` / ``ones`` / ``full`` / ``new_*``: a size read from an attribute follows a prune of that dim."""
    if not op.outputs:
        return
    out = op.outputs[0]
    is_method = op.target in _METHODS
    sizes = _sizes(op, 1 if is_method else 0)
    if sizes is not None:
        freeze_written_sizes(op, ctx, out, sizes)
    if is_method and isinstance(op.args[0], Value):  # ``x.new_zeros(...)``: x only lends dtype and device
        for d in range(op.args[0].ndim):
            ctx.cover(op.args[0], d)
