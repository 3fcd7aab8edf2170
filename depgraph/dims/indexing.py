"""Indexing: ``x[...]`` (getitem/setitem), narrow/select/index_select/gather, roll/flip.

Kept dims are coupled position by position. A slice written into the code
(``x[:, :16]``, ``narrow``) cannot follow a prune, so the sliced dim freezes;
a slice whose bounds are computed from the shape (RoPE's rotate-half) or
strided over the whole dim (interleaved RoPE) stays prunable in whole pieces.
"""

from __future__ import annotations

import torch

from ..trace.graph import OpNode, Value
from ..trace.shape_int import is_computed
from ._args import arg, lookup
from .bounds import attr_bounded_slice, empty_tail
from .indexmap import Offset
from .registry import RuleContext, register_dim_rule


def index_layout(x: Value, index) -> list[tuple[str, int | None, object]] | None:
    """How ``x[index]`` lays out its output: one entry per input dim, plus inserted dims.

    Returns ``[(kind, out_dim, detail)]`` per input dim with kind "keep" (full
    slice), "slice" (partial), "int" (dim removed) or "adv" (tensor index), or
    None when the index is too exotic (several tensor indices).
    """
    if not isinstance(index, tuple):
        index = (index,)
    n_specified = sum(1 for i in index if i is not None and i is not Ellipsis)
    expanded: list = []
    for i in index:
        if i is Ellipsis:
            expanded.extend([slice(None)] * (x.ndim - n_specified))
        else:
            expanded.append(i)
    real = [i for i in expanded if i is not None]
    expanded.extend([slice(None)] * (x.ndim - len(real)))
    if sum(isinstance(i, (Value, list)) for i in expanded) > 1:
        return None
    layout, out_dim, d = [], 0, 0
    for i in expanded:
        if i is None:
            out_dim += 1
            continue
        if isinstance(i, bool):
            return None
        if isinstance(i, int):
            layout.append(("int", None, i))
        elif isinstance(i, slice):
            n = x.shape[d]
            start, stop, step = i.indices(n)
            full = start == 0 and stop >= n and step == 1
            layout.append(("keep" if full else "slice", out_dim, i))
            out_dim += 1
        else:
            layout.append(("adv", out_dim, i))
            out_dim += i.ndim if isinstance(i, Value) else 1
        d += 1
    return layout


@register_dim_rule(torch.Tensor.__getitem__)
def getitem_rule(op: OpNode, ctx: RuleContext) -> None:
    """``x[...]``: kept dims are identical, sliced dims map through the slice (see :func:`index_layout`)."""
    x, out = op.inputs[0], op.outputs[0]
    layout = index_layout(x, op.args[1])
    if layout is None:
        return
    for d, (kind, od, detail) in enumerate(layout):
        if kind == "keep" and od is not None and od < out.ndim and out.shape[od] == x.shape[d]:
            ctx.identity(x, d, out, od)
        elif kind == "slice" and od is not None and od < out.ndim:
            if out.shape[od] == 0:
                empty_tail(op, ctx, x, d, detail)
            elif not attr_bounded_slice(op, ctx, x, d, out, od, detail) and not _strided(op, ctx, x, d, out, od, detail):
                _computed_piece(op, ctx, x, d, out, od, detail)
    for v in op.inputs[1:]:  # index tensors: the selected positions are data, not channels
        for d in range(v.ndim):
            ctx.cover(v, d) if v.shape[d] == 1 else None


def _computed_piece(op: OpNode, ctx: RuleContext, x: Value, d: int, out: Value, od: int, sl: slice) -> None:
    """``x[..., a:b]`` with bounds computed from the shape, cutting dim ``d`` into equal pieces.

    ``x[..., : x.shape[-1] // 2]`` (RoPE's rotate-half) is piece 0 of 2. After a
    prune the bounds are recomputed, so the slice keeps selecting "piece i"
    only if every piece loses the same positions: the dim is factored into
    (pieces, piece size) with the piece axis frozen, which pairs position ``p``
    of one half with ``p`` of the other. Bounds written into the code freeze.
    """
    n = x.shape[d]
    start, stop, step = sl.indices(n)
    length = stop - start
    bounds = [v for v in (sl.start, sl.stop) if v is not None]
    if step != 1 or length <= 0 or n % length or start % length or not all(is_computed(v) for v in bounds):
        return
    pieces = ctx.new_axis(n // length, f"{op.where()}.pieces")
    ctx.graph.freeze(pieces, f"{op.where()}: the number of pieces is fixed")
    ctx.factor(ctx.slot(x, d), [pieces, ctx.new_axis(length, f"{op.where()}.piece")])
    ctx.map(out, od, x, d, Offset(start, length, n))


def _strided(op: OpNode, ctx: RuleContext, x: Value, d: int, out: Value, od: int, sl: slice) -> bool:
    """``x[..., s::k]`` over the whole dim: lane ``s`` of every block of ``k`` (interleaved RoPE's
    ``x[..., ::2]`` and ``x[..., 1::2]``).

    The dim factors into (blocks, k) with the lane axis frozen: a prune removes
    whole blocks (a rotary pair), so lane ``s`` of the blocks left is what the same
    slice selects afterwards. Output ``j`` is block ``j``.
    """
    n = x.shape[d]
    k = sl.step
    if not isinstance(k, int) or k <= 1 or n % k or sl.stop is not None and sl.stop < n:
        return False
    s = 0 if sl.start is None else sl.start
    if not isinstance(s, int) or not 0 <= s < k or out.shape[od] != n // k:
        return False
    lanes = ctx.new_axis(k, f"{op.where()}.lanes")
    ctx.graph.freeze(lanes, f"{op.where()}: the stride {k} is fixed")
    blocks = ctx.slot(out, od)
    ctx.factor(ctx.slot(x, d), [blocks, lanes])
    return True


@register_dim_rule(torch.Tensor.__setitem__)
def setitem_rule(op: OpNode, ctx: RuleContext) -> None:
    """``x[index] = y``: the new version of ``x`` follows ``x``; ``y`` follows the indexed region."""
    x, new = op.inputs[0], op.outputs[0]
    layout = index_layout(x, op.args[1])
    y = op.args[2] if len(op.args) > 2 and isinstance(op.args[2], Value) else None
    if layout is None:
        return
    view_dims = [(d, od) for d, (kind, od, _) in enumerate(layout) if od is not None]
    n_view = max((od for _, od in view_dims), default=-1) + 1
    for d, (kind, _, _) in enumerate(layout):
        if kind == "keep":
            ctx.identity(x, d, new, d)
    if y is None:
        return
    off = n_view - y.ndim
    for d, od in view_dims:
        yd = od - off
        if 0 <= yd < y.ndim:
            if y.shape[yd] == x.shape[d] and layout[d][0] == "keep":
                ctx.identity(y, yd, x, d)
            elif y.shape[yd] == 1:
                ctx.cover(y, yd)


@register_dim_rule(*lookup("narrow select index_select gather take_along_dim roll flip", torch, torch.Tensor))
def select_rule(op: OpNode, ctx: RuleContext) -> None:
    """Positions chosen by arguments baked into the code: the chosen dim freezes, others follow."""
    x, out = op.inputs[0], op.outputs[0]
    name = getattr(op.target, "__name__", "")
    if name in ("roll", "flip"):
        dims = arg(op, 2 if name == "roll" else 1, "dims")
        chosen = {d % x.ndim for d in ([dims] if isinstance(dims, int) else (dims or range(x.ndim)))}
    else:
        chosen = {arg(op, 1, "dim") % x.ndim}
    removed = name == "select"
    for d in range(x.ndim):
        if d in chosen:
            continue
        od = d - 1 if removed and d > min(chosen) else d
        if od < out.ndim and x.shape[d] == out.shape[od]:
            ctx.identity(x, d, out, od)
