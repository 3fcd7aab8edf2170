"""Joining and slicing: cat/stack, split/chunk/unbind, getitem/setitem, narrow/select.

Only the dim being joined or split shifts indices (an :class:`Offset` per
piece); every other dim is coupled position by position. A slice written into
the code (``x[:, :16]``, ``narrow``) cannot follow a prune, so the sliced dim
freezes, and so does ``split``, whose piece sizes are written into the call;
``chunk`` (and ``tensor_split`` into equal sections) recompute sizes from the
tensor, so they stay prunable as long as every piece loses the same positions.
"""

from __future__ import annotations

import torch

from ..trace.graph import OpNode, Value
from ..trace.shape_int import AttrExpr, AttrInt, ShapeInt, is_computed
from ._args import arg
from .bounds import attr_bounded_slice, cut_prefix, empty_tail, valid_terms
from .elementwise import lookup
from .indexmap import Offset
from .registry import RuleContext, register_dim_rule


@register_dim_rule(*lookup("cat concat concatenate", torch))
def cat_rule(op: OpNode, ctx: RuleContext) -> None:
    """``torch.cat``: each input's cat dim maps to its offset range of the output; other dims are identical."""
    out = op.outputs[0]
    dim = arg(op, 1, "dim", 0) % out.ndim
    parts = [v for v in op.inputs if v.ndim == out.ndim or v.shape != (0,)]
    offset = 0
    for v in parts:
        if v.ndim != out.ndim:  # legacy: empty 1-D tensors are skipped by cat
            continue
        for d in range(out.ndim):
            if d == dim:
                ctx.map(v, d, out, d, Offset(offset, v.shape[d], out.shape[d]))
            else:
                ctx.identity(v, d, out, d)
        offset += v.shape[dim]


@register_dim_rule(*lookup("stack hstack_dummy", torch))
def stack_rule(op: OpNode, ctx: RuleContext) -> None:
    """Inputs keep their dims; the new stacked dim is not prunable (it counts inputs)."""
    out = op.outputs[0]
    dim = arg(op, 1, "dim", 0) % out.ndim
    for v in op.inputs:
        for d in range(v.ndim):
            ctx.identity(v, d, out, d if d < dim else d + 1)


def _pieces(op: OpNode, ctx: RuleContext, dim: int, equalize: bool) -> None:
    x = op.inputs[0]
    dim %= x.ndim
    offset = 0
    for out in op.outputs:
        for d in range(x.ndim):
            if d == dim:
                ctx.map(out, d, x, d, Offset(offset, out.shape[d], x.shape[d]))
            else:
                ctx.identity(x, d, out, d)
        offset += out.shape[dim]
    if equalize:
        # Sizes are recomputed from the tensor, so every piece must lose the same
        # count: removing the same positions in each piece guarantees it.
        for out in op.outputs[1:]:
            ctx.identity(op.outputs[0], dim, out, dim)


@register_dim_rule(torch.chunk, torch.Tensor.chunk)
def chunk_rule(op: OpNode, ctx: RuleContext) -> None:
    """``chunk``: each piece is an offset range of the input; unequal pieces fix the chunked dim."""
    dim = arg(op, 2, "dim", 0)
    sizes = {o.shape[dim] for o in op.outputs}
    _pieces(op, ctx, dim, equalize=True)
    if len(sizes) > 1:
        ctx.freeze(op.inputs[0], dim, f"{op.where()}: uneven chunks")


@register_dim_rule(*lookup("split split_with_sizes unsafe_split unsafe_split_with_sizes", torch, torch.Tensor))
def split_rule(op: OpNode, ctx: RuleContext) -> None:
    """``split`` with sizes written in the code fixes every piece, so the split dim cannot shrink.

    ``x.split(4, dim=1)`` of 8 channels gives two pieces of 4; pruned to 6 channels
    the same call gives pieces of 4 and 2. Only a split into one piece follows a
    prune. ``chunk`` (a number of pieces) is the prunable way to split in equal parts,
    and so is a split into equal pieces whose size is computed from the tensor
    (``x.split(x.shape[1] // 2, dim=1)``): every piece then loses the same positions.
    """
    dim = arg(op, 2, "dim", 0)
    size = arg(op, 1, "split_size_or_sections", arg(op, 1, "split_size", arg(op, 1, "split_sizes")))
    sizes = list(size) if isinstance(size, (list, tuple)) else [size]
    if isinstance(size, (list, tuple)) and _sized_pieces(op, ctx, dim, sizes):
        return
    computed = all(is_computed(v) or isinstance(v, AttrInt) for v in sizes)
    equal = len({o.shape[dim] for o in op.outputs}) == 1
    _pieces(op, ctx, dim, equalize=computed and equal)
    if computed and equal:
        for v in sizes:
            if isinstance(v, AttrInt):  # GPT-2's ``split(self.split_size)``: the attribute follows
                ctx.bind(op.outputs[0], dim, v.owner, v.attr)
    if len(op.outputs) > 1 and not (computed and equal):
        ctx.freeze(op.inputs[0], dim, f"{op.where()}: split sizes are fixed in the code "
                                      "(chunk splits into parts that follow a prune)")


def _sized_pieces(op: OpNode, ctx: RuleContext, dim: int, sizes: list) -> bool:
    """``split([self.key_dim, self.key_dim, self.val_dim])`` (LeViT): each piece follows its own size.

    A piece sized by an attribute is bound to it (pieces sized by one attribute
    lose the same positions, the attribute takes the new size); one sized by an
    attribute expression is cut into the blocks of its terms; one sized from a
    shape is checked like a reshape size; a literal piece freezes. Only when no
    size is a literal does this apply; otherwise the split dim freezes whole.
    """
    if len(sizes) != len(op.outputs) or not all(isinstance(v, (AttrExpr, ShapeInt)) for v in sizes):
        return False
    rest = _rest_piece(op, ctx, dim, sizes)
    if rest is None and not all(valid_terms(v) for v in sizes if isinstance(v, AttrExpr) and not isinstance(v, AttrInt)):
        return False
    _pieces(op, ctx, dim, equalize=False)
    for i, (out, v) in enumerate(zip(op.outputs, sizes, strict=True)):
        if out.shape[dim] <= 1 or i == rest:
            continue
        if isinstance(v, AttrInt):
            ctx.bind(out, dim, v.owner, v.attr)
        elif isinstance(v, AttrExpr):
            cut_prefix(op, ctx, out, dim, v)
        elif v.src:
            ctx.graph.derived.append((ctx.slot(out, dim), v.src, op.where()))
        else:
            ctx.freeze(out, dim, f"{op.where()}: a split size is read from a shape of unknown origin")
    return True


def _rest_piece(op: OpNode, ctx: RuleContext, dim: int, sizes: list) -> int | None:
    """The piece written as "the whole minus the others" (SHViT's ``split(x, [self.pdim, self.dim - self.pdim])``).

    Its size has a negative term, so it cannot be cut into blocks; but when the
    sizes add up to an attribute expression equal to the split dim, that total is
    bound to the input (``self.dim`` follows the input's width) and the piece's size
    then follows from the total and the other pieces. Returns its index, or None.
    """
    bad = [i for i, v in enumerate(sizes) if isinstance(v, AttrExpr) and not valid_terms(v)]
    if len(bad) != 1 or not all(isinstance(v, AttrExpr) for v in sizes):
        return None
    coefs: dict[tuple, int] = {}
    factors: dict[tuple, tuple] = {}
    for v in sizes:
        for coef, fs in v.terms:
            key = tuple((id(owner), attr) for owner, attr, _ in fs)
            coefs[key] = coefs.get(key, 0) + coef
            factors.setdefault(key, fs)
    terms = tuple((c, factors[k]) for k, c in coefs.items() if c)
    x = op.inputs[0]
    total = AttrExpr(sum(int(v) for v in sizes), terms)
    if int(total) != x.shape[dim % x.ndim] or not terms or not valid_terms(total):
        return None
    cut_prefix(op, ctx, x, dim % x.ndim, total)
    return bad[0]


@register_dim_rule(torch.tensor_split, torch.Tensor.tensor_split)
def tensor_split_rule(op: OpNode, ctx: RuleContext) -> None:
    """A number of sections behaves like ``chunk`` when they are equal; split indices are code."""
    spec = arg(op, 1, "sections", op.kwargs.get("indices", op.kwargs.get("tensor_indices_or_sections")))
    dim = arg(op, 2, "dim", 0)
    sizes = {o.shape[dim] for o in op.outputs}
    _pieces(op, ctx, dim, equalize=True)
    if len(op.outputs) > 1 and (not isinstance(spec, int) or len(sizes) > 1):
        ctx.freeze(op.inputs[0], dim, f"{op.where()}: split positions are fixed in the code")


@register_dim_rule(torch.unbind, torch.Tensor.unbind)
def unbind_rule(op: OpNode, ctx: RuleContext) -> None:
    """Each output is one position of ``dim``; that dim cannot be pruned."""
    x = op.inputs[0]
    dim = arg(op, 1, "dim", 0) % x.ndim
    for out in op.outputs:
        for d in range(x.ndim):
            if d != dim:
                ctx.identity(x, d, out, d if d < dim else d - 1)


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
