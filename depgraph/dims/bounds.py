"""Slices whose bounds are computed from attributes: ``qkv[..., q : q + kv]`` with ``q = heads * head_dim``.

A bound ``b`` is right after a prune only if the positions removed before it
number ``b - b'``, where ``b'`` is the bound recomputed from the updated
attributes. The bound's terms (an :class:`~depgraph.trace.shape_int.AttrExpr`)
say how: ``[0, b)`` is cut into one block per term, in the order written, and
each block of ``c * A * B`` positions is factored into axes of sizes
``(c, A, B)``. Axes ``A`` and ``B`` are bound to their attributes (so every dim
they size loses the same positions, and the attributes take the new sizes);
the constant ``c`` and constant terms freeze. Any removal inside ``[0, b)`` is
then whole slabs of the blocks, which is exactly what the recomputed bound
expects. The slice itself is an :class:`Offset` of the sliced dim.

Example - Phi-3's fused ``qkv_proj`` of ``(H + 2 * KV) * D`` outputs::

    q = qkv[..., :H * D]                  # [0, HD): axes (H, D)
    k = qkv[..., H * D : H * D + KV * D]  # [0, HD) and [HD, HD + KV*D): (H, D), (KV, D)
    v = qkv[..., H * D + KV * D :]        # the rest, computed from the tensor's size

Pruning a key/value head removes one ``KV`` slab; ``self.num_key_value_heads``
is then updated and the bounds follow.
"""

from __future__ import annotations

from ..trace.graph import OpNode, Value
from ..trace.shape_int import AttrExpr, ShapeInt
from .indexmap import Offset
from .registry import RuleContext

__all__ = ["attr_bounded_slice", "empty_tail", "cut_prefix", "valid_terms"]


def valid_terms(expr: AttrExpr) -> bool:
    """Every term adds a non-negative block and the terms add up to the bound."""
    total = 0
    for coef, factors in expr.terms:
        size = coef
        for _, _, value in factors:
            size *= value
        if coef < 0 or size < 0:
            return False
        total += size
    return total == int(expr)


def attr_bounded_slice(op: OpNode, ctx: RuleContext, x: Value, d: int, out: Value, od: int, sl: slice) -> bool:
    """Couple ``out`` dim ``od`` with ``x[..., sl]`` along ``d`` if the bounds can follow a prune.

    Returns False (nothing coupled: the dim freezes) unless the step is 1, one
    bound at least is an attribute expression with non-negative terms, and the
    other is absent, such an expression, a literal start (a constant block) or
    a stop at the end of ``x`` read from its shape.
    """
    n = x.shape[d]
    start, stop, step = sl.indices(n)
    if step != 1 or stop <= start or out.shape[od] != stop - start:
        return False
    if not any(isinstance(b, AttrExpr) for b in (sl.start, sl.stop)):
        return False
    lo = sl.start
    if type(lo) is int and lo > 0:  # a literal start next to an attribute stop: a constant block
        lo = AttrExpr(lo, ((lo, ()),))
    exprs = [b for b in (lo, sl.stop) if isinstance(b, AttrExpr)]
    if not all(valid_terms(e) and int(e) <= n for e in exprs):
        return False
    if not (lo is None or isinstance(lo, AttrExpr) or lo == 0):
        return False
    if not (sl.stop is None or isinstance(sl.stop, AttrExpr) or (isinstance(sl.stop, ShapeInt) and sl.stop >= n)):
        return False
    for e in exprs:
        cut_prefix(op, ctx, x, d, e)
    ctx.map(out, od, x, d, Offset(start, stop - start, n))
    return True


def empty_tail(op: OpNode, ctx: RuleContext, x: Value, d: int, sl: slice) -> bool:
    """``x[..., s:]`` with ``s`` at the end of ``x``: an empty piece that must stay empty.

    Phi-3's partial rotary ``q[..., cos.shape[-1]:]`` is empty when RoPE covers
    the whole head. A literal ``s`` stays past the end as the dim shrinks; an
    ``s`` read from a shape stays at the end only if that dim shrinks with
    ``x``'s (checked once the graph is built, like a reshape size); an
    attribute bound is cut into blocks like any other bound.
    """
    n = x.shape[d]
    begin = sl.start
    if begin is None or sl.step not in (None, 1) or not (sl.stop is None or sl.stop >= n) or begin < n:
        return False
    if isinstance(begin, AttrExpr):
        if not valid_terms(begin) or int(begin) != n:
            return False
        cut_prefix(op, ctx, x, d, begin)
    elif isinstance(begin, ShapeInt):
        if not begin.src:
            return False
        ctx.graph.derived.append((ctx.slot(x, d), begin.src, op.where()))
    ctx.cover(x, d)
    return True


def cut_prefix(op: OpNode, ctx: RuleContext, x: Value, d: int, expr: AttrExpr) -> None:
    """Blocks of ``[0, expr)`` along ``d`` of ``x``, one per term, factored by the term's attributes."""
    n, where, offset = x.shape[d], op.where(), 0
    for coef, factors in expr.terms:
        size = coef
        for _, _, value in factors:
            size *= value
        if size == 0:
            continue
        block = ctx.new_axis(size, f"{where}.bound[{offset}:{offset + size}]")
        ctx.graph.pair(block, ctx.slot(x, d), Offset(offset, size, n))
        offset += size
        if not factors:
            ctx.graph.freeze(block, f"{where}: {size} positions before a slice bound are a constant")
            continue
        parts = []
        if coef > 1:
            copies = ctx.new_axis(coef, f"{where}.bound.copies")
            ctx.graph.freeze(copies, f"{where}: the factor {coef} of a slice bound is a constant")
            parts.append(copies)
        for owner, attr, value in factors:
            axis = ctx.new_axis(value, f"{where}.{attr}")
            if value > 1:
                ctx.graph.bind(axis, owner, attr)
            parts.append(axis)
        if all(ctx.graph.sizes[p] <= 1 for p in parts):  # a single position: the bound cannot move
            ctx.graph.freeze(block, f"{where}: a slice bound of 1 cannot shrink")
        ctx.factor(block, parts)
