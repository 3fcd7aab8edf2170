"""Shape ops: view/reshape/flatten/squeeze, permutes and transposes, expand/repeat, channel shuffle.

Reshapes are aligned group by group: the smallest runs of input and output
dims with equal products. Inside a run, the dims are the row-major factors of
one merged axis, e.g. ``(B, T, H*D) -> (B, T, H, D)``: out index ``h*D + d``.
The head axis and the head-dim axis then become separate prunable axes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..trace.graph import OpNode
from ..trace.shape_int import AttrInt, ShapeInt, is_computed
from ._args import arg, int_list, lookup
from .indexmap import Gather
from .registry import RuleContext, register_dim_rule

_RESHAPES = lookup(
    "view reshape flatten unflatten squeeze unsqueeze view_as reshape_as ravel atleast_1d atleast_2d "
    "atleast_3d squeeze_ unsqueeze_",
    torch.Tensor, torch,
)


def _runs(a: tuple[int, ...], b: tuple[int, ...]) -> list[tuple[list[int], list[int]]]:
    """Pair up runs of dims of ``a`` and ``b`` with equal products (size-1 dims attach anywhere)."""
    runs: list[tuple[list[int], list[int]]] = []
    i = j = 0
    while i < len(a) or j < len(b):
        ia, jb = [], []
        pa = pb = 1
        while True:
            if i < len(a) and (pa < pb or (pa == pb and not ia) or (j >= len(b))):
                pa *= a[i]
                ia.append(i)
                i += 1
            elif j < len(b) and (pb < pa or not jb):
                pb *= b[j]
                jb.append(j)
                j += 1
            else:
                break
            if pa == pb and ia and jb:
                # absorb trailing size-1 dims into this run
                while i < len(a) and a[i] == 1 and (j >= len(b) or b[j] != 1):
                    ia.append(i)
                    i += 1
                while j < len(b) and b[j] == 1 and (i >= len(a) or a[i] != 1):
                    jb.append(j)
                    j += 1
                break
        if pa != pb:
            return []
        runs.append((ia, jb))
    return runs


def couple_reshape(ctx: RuleContext, x, out) -> None:
    """Couple ``x`` and ``out`` whose shapes hold the same elements in row-major order."""
    if x.shape == out.shape:
        for d in range(x.ndim):
            ctx.identity(x, d, out, d)
        return
    for ia, jb in _runs(x.shape, out.shape):
        na = [d for d in ia if x.shape[d] > 1]
        nb = [d for d in jb if out.shape[d] > 1]
        for d in ia:
            if x.shape[d] == 1:
                ctx.cover(x, d)
        for d in jb:
            if out.shape[d] == 1:
                ctx.cover(out, d)
        if not na and not nb:
            continue
        if len(na) == 1 and len(nb) == 1:
            ctx.identity(x, na[0], out, nb[0])
            continue
        size = 1
        for d in na:
            size *= x.shape[d]
        merged = ctx.new_axis(size, "reshape.merged")
        ctx.factor(merged, [ctx.slot(x, d) for d in na])
        ctx.factor(merged, [ctx.slot(out, d) for d in nb])


def target_sizes(op: OpNode) -> list | None:
    """The size arguments of ``view``/``reshape``/``expand`` as given (ShapeInts kept), else None."""
    rest = [a for a in op.args[1:]]
    if not rest:
        rest = [op.kwargs[k] for k in ("size", "shape", "sizes") if k in op.kwargs]
    if len(rest) == 1 and isinstance(rest[0], (list, tuple)):
        rest = list(rest[0])
    if not rest or not all(isinstance(v, int) for v in rest):
        return None
    return rest


def freeze_written_sizes(op: OpNode, ctx: RuleContext, out, sizes: list) -> None:
    """Output dims whose size is an int written into the code cannot change size."""
    if len(sizes) != out.ndim:
        return
    for d, v in enumerate(sizes):
        if out.shape[d] <= 1:
            continue
        if isinstance(v, ShapeInt) and v.src:
            if v.shape_part == 1 and v.attrs and len(v.attrs) == 1:
                # ``B * self.num_heads`` with a batch of one (SAM's ``reshape(3, B * heads, N, -1)``):
                # the size is the attribute, which follows the prune as in ``view(B, self.num_heads)``.
                owner, attr, _ = v.attrs[0]
                ctx.bind(out, d, owner, attr)
                continue
            # Computed, but maybe from another tensor's shape: checked once the graph is built.
            ctx.graph.derived.append((ctx.slot(out, d), v.src, op.where()))
            continue
        if is_computed(v):
            continue
        if isinstance(v, AttrInt):
            ctx.bind(out, d, v.owner, v.attr)
        else:
            ctx.freeze(out, d, f"{op.where()}: size {int(v)} of dim {d} is written into the code")


@register_dim_rule(*_RESHAPES)
def reshape_rule(op: OpNode, ctx: RuleContext) -> None:
    """``view`` / ``reshape`` / ``flatten`` ...: dims couple through the row-major factorisation of the shapes."""
    couple_reshape(ctx, op.inputs[0], op.outputs[0])
    name = getattr(op.target, "__name__", "")
    if name in ("view", "reshape"):
        sizes = target_sizes(op)
        if sizes is not None:
            freeze_written_sizes(op, ctx, op.outputs[0], sizes)
    elif name in ("reshape_as", "view_as") and len(op.inputs) > 1:
        # ``x.reshape_as(other)``: other lends its shape, so each size is read from other's dims.
        other, out = op.inputs[1], op.outputs[0]
        for d in range(other.ndim):
            ctx.cover(other, d)
        if other.ndim == out.ndim:
            freeze_written_sizes(op, ctx, out, [ShapeInt(n, frozenset({(other.id, d)})) for d, n in enumerate(other.shape)])
    elif name == "unflatten":
        sizes = arg(op, 2, "sizes")
        dim = arg(op, 1, "dim") % op.inputs[0].ndim
        freeze_written_sizes(op, ctx, op.outputs[0], [-1] * dim + list(sizes or ()) + [-1] * (
            op.outputs[0].ndim - dim - len(sizes or ())))


def _perm(op: OpNode, ndim: int) -> list[int] | None:
    name = getattr(op.target, "__name__", "")
    if name == "permute":
        return [d % ndim for d in int_list(op.args[1:] or op.kwargs.get("dims"))]
    if name in ("transpose", "swapaxes", "swapdims", "transpose_", "swapaxes_", "swapdims_"):
        a, b = (op.args[1:3] if len(op.args) >= 3 else (arg(op, 1, "dim0"), arg(op, 2, "dim1")))
        p = list(range(ndim))
        p[a % ndim], p[b % ndim] = p[b % ndim], p[a % ndim]
        return p
    if name in ("t", "t_", "T"):
        return list(reversed(range(ndim)))
    if name == "H" and ndim == 2:
        return [1, 0]
    if name in ("mT", "mH", "H", "adjoint"):
        p = list(range(ndim))
        p[-1], p[-2] = p[-2], p[-1]
        return p
    if name in ("movedim", "moveaxis"):
        src = [d % ndim for d in int_list(arg(op, 1, "source"))]
        dst = [d % ndim for d in int_list(arg(op, 2, "destination"))]
        rest = [d for d in range(ndim) if d not in src]
        p = [-1] * ndim
        for s, d in zip(src, dst, strict=True):
            p[d] = s
        it = iter(rest)
        return [next(it) if v < 0 else v for v in p]
    return None


_PERMUTES = lookup("permute transpose swapaxes swapdims t movedim moveaxis adjoint transpose_ t_", torch.Tensor, torch)
# Properties: the recorder reports them by their descriptor (``torch.Tensor.T``).
_PERMUTES += [getattr(torch.Tensor, n) for n in ("T", "mT", "mH", "H") if hasattr(torch.Tensor, n)]


@register_dim_rule(*_PERMUTES)
def permute_rule(op: OpNode, ctx: RuleContext) -> None:
    """Output dim ``k`` is input dim ``perm[k]``."""
    x, out = op.inputs[0], op.outputs[0]
    perm = _perm(op, x.ndim)
    if perm is None:
        return
    for k, d in enumerate(perm):
        ctx.identity(x, d, out, k)


@register_dim_rule(*lookup("expand expand_as broadcast_to", torch.Tensor, torch))
def expand_rule(op: OpNode, ctx: RuleContext) -> None:
    """Expanded size-1 dims are not coupled; new leading dims and expanded dims freeze."""
    x, out = op.inputs[0], op.outputs[0]
    ctx.broadcast([x], out)
    sizes = target_sizes(op) if getattr(op.target, "__name__", "") != "expand_as" else None
    if sizes is not None:
        freeze_written_sizes(op, ctx, out, sizes)
    if len(op.inputs) > 1:  # expand_as(other): other only lends its shape
        for d in range(op.inputs[1].ndim):
            ctx.cover(op.inputs[1], d)


@register_dim_rule(torch.Tensor.repeat, torch.tile, torch.Tensor.tile)
def repeat_rule(op: OpNode, ctx: RuleContext) -> None:
    """``repeat`` tiles: output position ``j`` of a repeated dim copies input ``j % n``."""
    x, out = op.inputs[0], op.outputs[0]
    off = out.ndim - x.ndim
    for d in range(x.ndim):
        n, m = x.shape[d], out.shape[d + off]
        if n == m:
            ctx.identity(x, d, out, d + off)
        elif n > 1:
            ctx.map(x, d, out, d + off, Gather(torch.arange(m) % n, n))
        else:
            ctx.cover(x, d)


@register_dim_rule(torch.repeat_interleave, torch.Tensor.repeat_interleave)
def repeat_interleave_rule(op: OpNode, ctx: RuleContext) -> None:
    """With an int count along ``dim``, output ``j`` copies input ``j // r`` (GQA's key/value repeat)."""
    x, out = op.inputs[0], op.outputs[0]
    reps, dim = arg(op, 1, "repeats"), arg(op, 2, "dim")
    if dim is None or not isinstance(reps, int):
        return  # flattening or tensor counts: everything freezes
    dim %= x.ndim
    for d in range(x.ndim):
        if d == dim:
            ctx.map(x, d, out, d, Gather(torch.arange(out.shape[d]) // reps, x.shape[d]))
        else:
            ctx.identity(x, d, out, d)


@register_dim_rule(F.channel_shuffle, torch.channel_shuffle, getattr(torch, "native_channel_shuffle", None))
def channel_shuffle_rule(op: OpNode, ctx: RuleContext) -> None:
    """``(g, C/g) -> (C/g, g)`` on dim 1: the two factors swap places."""
    x, out = op.inputs[0], op.outputs[0]
    g = int(arg(op, 1, "groups"))
    c = x.shape[1]
    ga, ka = ctx.new_axis(g, "shuffle.groups"), ctx.new_axis(c // g, "shuffle.per_group")
    ctx.graph.freeze(ga, f"{op.where()}: the number of groups is an argument of the call")
    ctx.factor(ctx.slot(x, 1), [ga, ka])
    ctx.factor(ctx.slot(out, 1), [ka, ga])
    for d in range(x.ndim):
        if d != 1:
            ctx.identity(x, d, out, d)
