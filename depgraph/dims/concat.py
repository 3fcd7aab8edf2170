"""Joining and splitting along one dim: cat/stack, split/chunk/tensor_split/unbind.

Only the dim being joined or split shifts indices (an :class:`Offset` per
piece); every other dim is coupled position by position. ``split`` with piece
sizes written into the call freezes the split dim; ``chunk`` (and
``tensor_split`` into equal sections) recompute sizes from the tensor, so they
stay prunable as long as every piece loses the same positions. Indexing
(``x[...]``, ``narrow``, ``index_select``) is in :mod:`depgraph.dims.indexing`.
"""

from __future__ import annotations

import torch

from ..trace.graph import OpNode
from ..trace.shape_int import AttrExpr, AttrInt, ShapeInt, is_computed
from ._args import arg, lookup
from .bounds import cut_prefix, valid_terms
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


@register_dim_rule(torch.stack)
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
