"""Linear maps: matmul/bmm/addmm/einsum and the functional ``linear`` and ``conv``.

A contracted dim couples its two operands position by position: removing
position ``k`` from both drops the term ``a[..., k] * b[k, ...]``, exactly what
zeroing it would do. Output dims follow the operand they come from.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..trace.graph import OpNode, Value
from ..trace.shape_int import AttrInt, ShapeInt, is_computed
from ._args import arg, lookup
from .modules import couple_conv
from .registry import RuleContext, register_dim_rule


def _couple_batch(ctx: RuleContext, operands: list[tuple[Value, int]], out: Value, n_out_batch: int) -> None:
    """Broadcast the leading (batch) dims of each operand against the output's."""
    for v, n_batch in operands:
        off = n_out_batch - n_batch
        for d in range(n_batch):
            if v.shape[d] == out.shape[d + off] and v.shape[d] > 1:
                ctx.identity(v, d, out, d + off)
            elif v.shape[d] == 1:
                ctx.cover(v, d)


@register_dim_rule(*lookup("matmul mm bmm __matmul__ __rmatmul__", torch, torch.Tensor))
def matmul_rule(op: OpNode, ctx: RuleContext) -> None:
    """``a @ b``: batch dims broadcast, the contracted dims of ``a`` and ``b`` must lose the same positions."""
    a, b = op.inputs[0], op.inputs[1]
    if getattr(op.target, "__name__", "") == "__rmatmul__":
        a, b = b, a
    out = op.outputs[0]
    if a.ndim == 1 and b.ndim == 1:
        ctx.identity(a, 0, b, 0)
        return
    if a.ndim == 1:  # (k) @ (..., k, m) -> (..., m)
        ctx.identity(a, 0, b, -2)
        ctx.identity(b, -1, out, -1)
        _couple_batch(ctx, [(b, b.ndim - 2)], out, out.ndim - 1)
        return
    if b.ndim == 1:  # (..., n, k) @ (k) -> (..., n)
        ctx.identity(a, -1, b, 0)
        ctx.identity(a, -2, out, -1)
        _couple_batch(ctx, [(a, a.ndim - 2)], out, out.ndim - 1)
        return
    ctx.identity(a, -1, b, -2)  # contraction
    ctx.identity(a, -2, out, -2)
    ctx.identity(b, -1, out, -1)
    _couple_batch(ctx, [(a, a.ndim - 2), (b, b.ndim - 2)], out, out.ndim - 2)
    # (B, H, L, D) @ (B, H, D, S): a batch dim shared by both operands may be attention
    # heads (q @ k^T, probs @ v); the pruner keeps those whose removal is a whole head.
    for d in range(1, min(a.ndim, b.ndim) - 1):
        if a.shape[-d - 2] == b.shape[-d - 2] > 1:
            ctx.heads(a, -d - 2, b, -d - 2, op.where())


@register_dim_rule(torch.baddbmm, torch.Tensor.baddbmm, torch.addmm, torch.Tensor.addmm, torch.addbmm)
def addmm_rule(op: OpNode, ctx: RuleContext) -> None:
    """``beta * input + alpha * (m1 @ m2)``."""
    bias, a, b = op.inputs[0], op.inputs[1], op.inputs[2]
    out = op.outputs[0]
    ctx.identity(a, -1, b, -2)
    ctx.identity(a, -2, out, -2)
    ctx.identity(b, -1, out, -1)
    _couple_batch(ctx, [(a, a.ndim - 2), (b, b.ndim - 2)], out, out.ndim - 2)
    ctx.broadcast([bias], out)


@register_dim_rule(torch.einsum)
def einsum_rule(op: OpNode, ctx: RuleContext) -> None:
    """Every operand dim labelled with the same letter is coupled (contracted or kept)."""
    eq = op.args[0].replace(" ", "")
    operands = list(op.inputs)
    lhs, _, rhs = eq.partition("->")
    terms = lhs.split(",")
    if "..." in eq or len(terms) != len(operands):
        return
    if not rhs and "->" not in eq:
        rhs = "".join(sorted(c for c in set(lhs.replace(",", "")) if lhs.count(c) == 1))
    by_letter: dict[str, list[tuple[Value, int]]] = {}
    for term, v in zip(terms, operands, strict=True):
        for d, c in enumerate(term):
            by_letter.setdefault(c, []).append((v, d))
    for d, c in enumerate(rhs):
        by_letter.setdefault(c, []).append((op.outputs[0], d))
    for dims in by_letter.values():
        big = [(v, d) for v, d in dims if v.shape[d] > 1]
        for v, d in dims:
            if v.shape[d] == 1:
                ctx.cover(v, d)
        for (v, d), (w, e) in zip(big, big[1:], strict=False):
            ctx.identity(v, d, w, e)


def layer_weight(w: Value, kind: type | tuple) -> Value | None:
    """The ``weight`` parameter of a ``kind`` layer that ``w`` is, or is computed from alone.

    A subclass that overrides ``forward`` runs the layer's functional op itself:
    ``F.conv2d(pad(x), self.weight, ...)`` (timm's ``Conv2dSame``), or on a
    standardised weight computed from ``self.weight`` and parameters only (timm's
    ``StdConv2d``/``ScaledStdConv2d``: ``batch_norm(self.weight.reshape(1, out, -1))``).
    Either way the op computes what the layer computes, and its channels are the
    layer's. A weight that depends on activations, or on two layer weights, is not.
    """
    if w.kind == "param":
        return w if isinstance(w.owner, kind) and w.attr == "weight" else None
    found: list[Value] = []
    stack, seen = [w], set()
    while stack:
        v = stack.pop()
        if v.id in seen:
            continue
        seen.add(v.id)
        if v.kind == "param":
            if isinstance(v.owner, kind) and v.attr == "weight":
                found.append(v)
            continue
        if v.kind == "const":
            continue
        if v.producer is None or v.producer.is_module or len(seen) > 64:
            return None  # a model input, a layer's output, or too long a chain to be a transform
        stack.extend(v.producer.inputs)
    if len(found) == 1 and found[0].shape == w.shape:
        return found[0]
    return None


def _couple_weight(ctx: RuleContext, w: Value, weight: Value, rows: int, cols: int | None) -> None:
    """The layer's handler prunes its weight: a weight used as is needs no coupling; one computed
    from it (standardised) has its rows and columns tied to the layer's endpoints, at both ends
    of the computation, so every op in between must carry them (or the endpoints freeze)."""
    for d in range(w.ndim):
        ctx.cover(w, d)
    if w is weight:
        return
    ctx.own_param(weight)
    for v in (w, weight):
        ctx.graph.pair(rows, ctx.slot(v, 0))
        if cols is not None and v.shape[1] > 1:
            ctx.graph.pair(cols, ctx.slot(v, 1))
        for d in range(2, v.ndim):
            if v.shape[d] > 1:
                ctx.freeze(v, d, f"{weight.qualname}: the kernel size is fixed")


def _couple_bias(ctx: RuleContext, b: Value | None, weight: Value, out: Value, cdim: int) -> None:
    """The layer's own bias is pruned by its handler; a bias from elsewhere (EVA/BEiT's
    ``cat(q_bias, k_bias, v_bias)``) follows the output channels."""
    if b is None:
        return
    if b.kind == "param" and b.owner is weight.owner and b.attr == "bias":
        ctx.cover(b, 0)
    else:
        ctx.identity(b, 0, out, cdim)


def _size_follows(ctx: RuleContext, slot: int, size: object, where: str, what: str) -> None:
    """A call argument that is the size of ``slot`` must change with it.

    Read from an attribute (timm's ``BlurPool2d`` passes ``groups=self.channels``): the
    attribute is updated after a prune. Read from a tensor's shape (``x.shape[1]``): the call
    recomputes it, if that dim shrinks with ``slot``. Written into the code: ``slot`` is frozen.
    """
    if isinstance(size, AttrInt):
        ctx.graph.bind(slot, size.owner, size.attr)
    elif isinstance(size, ShapeInt) and size.src:
        ctx.graph.derived.append((slot, size.src, where))
    elif not is_computed(size):
        ctx.graph.freeze(slot, f"{where}: {what}={int(size)} is written into the code")


@register_dim_rule(F.linear)
def linear_rule(op: OpNode, ctx: RuleContext) -> None:
    """``linear(x, W, b)``: ``x[..., i] * W[o, i] (+ b[o]) -> out[..., o]``."""
    x, w = op.inputs[0], op.inputs[1]
    b = op.inputs[2] if len(op.inputs) > 2 else None
    out = op.outputs[0]
    for d in range(x.ndim - 1):
        ctx.identity(x, d, out, d)
    weight = layer_weight(w, torch.nn.Linear)
    ep_out = ctx.module_endpoint(weight.owner, True) if weight is not None else None
    if ep_out is not None:
        ep_in = ctx.module_endpoint(weight.owner, False)
        ctx.graph.pair(ep_out, ctx.slot(out, -1))
        ctx.graph.pair(ep_in, ctx.slot(x, -1))
        _couple_weight(ctx, w, weight, ep_out, ep_in)
        _couple_bias(ctx, b, weight, out, -1)
        return
    ctx.identity(x, -1, w, 1)
    ctx.identity(w, 0, out, -1)
    if b is not None:
        ctx.identity(b, 0, out, -1)


_CONVS = {F.conv1d: 1, F.conv2d: 2, F.conv3d: 3}


@register_dim_rule(*_CONVS)
def conv_rule(op: OpNode, ctx: RuleContext) -> None:
    """``conv(x, W, b, stride, padding, dilation, groups)`` with ``W`` of shape (out, in/groups, k...).

    On a conv layer's own weight (directly or standardised) the call couples exactly as
    the layer does, groups included (see :func:`~depgraph.dims.modules.couple_conv`).
    """
    x, w = op.inputs[0], op.inputs[1]
    b = op.inputs[2] if len(op.inputs) > 2 else None
    out = op.outputs[0]
    groups = int(arg(op, 6, "groups", 1))
    cdim = x.ndim - _CONVS[op.target] - 1
    if cdim == 1:
        ctx.identity(x, 0, out, 0)
    weight = layer_weight(w, torch.nn.modules.conv._ConvNd)
    layer = weight.owner if weight is not None else None
    if layer is not None and (layer.transposed or layer.groups != groups):
        reason = f"{op.where()} runs {weight.qualname} with groups={groups}, the layer has groups={layer.groups}"
        ctx.freeze(x, cdim, reason)
        ctx.freeze(out, cdim, reason)
        return
    if layer is not None:
        local_in = couple_conv(ctx, layer, x, out, cdim, op.where())
        if local_in is not None:
            _couple_weight(ctx, w, weight, ctx.module_endpoint(layer, True), local_in)
            _couple_bias(ctx, b, weight, out, cdim)
            return
    if groups == 1:
        ctx.identity(x, cdim, w, 1)
        ctx.identity(w, 0, out, cdim)
        if b is not None:
            ctx.identity(b, 0, out, cdim)
    else:
        ga = ctx.new_axis(groups, f"{op.where()}.groups")
        _size_follows(ctx, ga, arg(op, 6, "groups"), op.where(), "groups")
        ctx.factor(ctx.slot(x, cdim), [ga, ctx.slot(w, 1)])
        ctx.identity(w, 0, out, cdim)
        ctx.factor(ctx.slot(out, cdim), [ga, ctx.new_axis(out.shape[cdim] // groups, "conv.per_group_out")])
        if b is not None:
            ctx.identity(b, 0, out, cdim)
