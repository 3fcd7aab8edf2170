"""Reductions and normalisations along a dim.

A ``sum`` over a pruned dim stays exact (a removed channel contributed what a
zeroed one would: nothing). ``mean``, ``max``, softmax and norms over a pruned
dim are valid after pruning but compute over fewer channels, so the dim is
marked inexact and ``depgraph.verify`` reports it. Reductions whose *result*
depends on positions (``argmax``) freeze the reduced dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..trace.graph import OpNode
from ._args import arg, int_list, lookup
from .registry import RuleContext, register_dim_rule

_EXACT = lookup("sum nansum", torch, torch.Tensor)
_INEXACT = lookup(
    "mean nanmean amax amin max min std var norm logsumexp prod median nanmedian all any "
    "var_mean std_mean count_nonzero",
    torch, torch.Tensor,
)
_POSITIONAL = lookup("argmax argmin", torch, torch.Tensor)


def _reduced_dims(op: OpNode, ndim: int) -> tuple[set[int], bool]:
    dims = arg(op, 1, "dim", None)
    if isinstance(dims, (int, list, tuple)):
        ds = {d % ndim for d in int_list(dims)} if ndim else set()
        return ds, bool(arg(op, 2, "keepdim", False))
    return set(range(ndim)), bool(arg(op, 2, "keepdim", False)) if dims is not None else False


@register_dim_rule(*_EXACT, *_INEXACT, *_POSITIONAL)
def reduce_rule(op: OpNode, ctx: RuleContext) -> None:
    """Reductions (``sum``, ``mean``, ``amax``...): kept dims pass through; a reduced channel dim is covered (inexact where it is not a sum)."""
    x = op.inputs[0]
    name = getattr(op.target, "__name__", "")
    if name in ("max", "min") and len(op.inputs) > 1:  # binary max/min is elementwise
        for out in op.outputs:
            ctx.broadcast(op.inputs, out)
        return
    dims, keepdim = _reduced_dims(op, x.ndim)
    for out in op.outputs:
        od = 0
        for d in range(x.ndim):
            if d in dims:
                if keepdim:
                    ctx.cover(out, od)
                    od += 1
                continue
            if od < out.ndim:
                ctx.identity(x, d, out, od)
            od += 1
    for d in dims:
        if op.target in _POSITIONAL:
            ctx.freeze(x, d, f"{op.where()}: the result depends on positions along dim {d}")
        elif op.target in _INEXACT:
            ctx.inexact(x, d, f"{op.where()} over dim {d}")
        else:
            ctx.cover(x, d)


@register_dim_rule(*lookup("softmax log_softmax softmin cumsum cumprod logcumsumexp normalize", F, torch, torch.Tensor))
def along_dim_rule(op: OpNode, ctx: RuleContext) -> None:
    """Same-shape ops that mix positions along one dim: every dim follows, that dim is inexact."""
    x, out = op.inputs[0], op.outputs[0]
    name = getattr(op.target, "__name__", "")
    default = 1 if name == "normalize" else None
    dim = arg(op, 1 if name != "normalize" else 2, "dim", default)
    for d in range(x.ndim):
        ctx.identity(x, d, out, d)
    if dim is not None and name not in ("cumsum",):
        ctx.inexact(x, dim, f"{op.where()} along dim {dim % x.ndim}")


def _owner_endpoint(ctx: RuleContext, v, kind: type | tuple) -> int | None:
    """The out endpoint of the module owning parameter ``v`` when it is of ``kind``."""
    if v is None or v.kind != "param" or not isinstance(v.owner, kind):
        return None
    return ctx.module_endpoint(v.owner, True)


@register_dim_rule(F.layer_norm, torch.layer_norm, getattr(F, "rms_norm", None), getattr(torch, "rms_norm", None))
def layer_norm_rule(op: OpNode, ctx: RuleContext) -> None:
    """``layer_norm(x, normalized_shape, w, b)``: normalised over the last dims (inexact).

    The shape argument is baked into the call, so the last dim is prunable only
    when the weight belongs to a norm module whose handler updates that shape.
    """
    x, out = op.inputs[0], op.outputs[0]
    shape = int_list(arg(op, 1, "normalized_shape"))
    w = arg(op, 2, "weight")
    b = arg(op, 3, "bias")
    for d in range(x.ndim):
        ctx.identity(x, d, out, d)
    ctx.inexact(x, -1, f"{op.where()} normalises over the last dim")
    ep = _owner_endpoint(ctx, w, (torch.nn.LayerNorm, getattr(torch.nn, "RMSNorm", torch.nn.LayerNorm)))
    if ep is not None and len(shape) == 1:
        ctx.graph.pair(ep, ctx.slot(x, -1))
        for t in (w, b):
            if t is not None:
                ctx.cover(t, 0)
    else:
        ctx.freeze(x, -1, f"{op.where()}: normalized_shape is fixed in the call")


@register_dim_rule(F.batch_norm, torch.batch_norm, F.instance_norm, torch.instance_norm)
def batch_norm_rule(op: OpNode, ctx: RuleContext) -> None:
    """Per-channel normalisation on dim 1: exact, the stats and affine tensors follow the channel.

    With statistics of the input itself (``training=True``, ``instance_norm``) every other
    dim is averaged over: removing positions there changes the statistics (inexact). That is
    how weight standardisation (timm's ``StdConv2d``: ``batch_norm(w.reshape(1, out, -1),
    training=True)``) normalises each output channel over its fan-in.
    """
    x, out = op.inputs[0], op.outputs[0]
    for d in range(x.ndim):
        ctx.identity(x, d, out, d)
    instance = op.target in (F.instance_norm, torch.instance_norm)
    if arg(op, 5, "use_input_stats" if instance else "training", instance):
        for d in range(x.ndim):
            if d != 1 and x.shape[d] > 1:
                ctx.inexact(x, d, f"{op.where()} normalises with statistics over dim {d}")
    tensors = [v for v in op.inputs[1:] if v.ndim == 1]
    owner = next((v for v in tensors if v.kind == "param" and v.owner is not None), None)
    norms = (torch.nn.modules.batchnorm._NormBase,)
    ep = _owner_endpoint(ctx, owner, norms)
    if ep is not None:
        ctx.graph.pair(ep, ctx.slot(x, 1))
        for v in tensors:
            ctx.cover(v, 0)
        return
    for v in tensors:
        ctx.identity(v, 0, x, 1)


@register_dim_rule(F.group_norm, torch.group_norm)
def group_norm_rule(op: OpNode, ctx: RuleContext) -> None:
    """``F.group_norm``: every dim passes through; the channels factor into (groups, per group) and are normalised together."""
    x, out = op.inputs[0], op.outputs[0]
    for d in range(x.ndim):
        ctx.identity(x, d, out, d)
    w = arg(op, 2, "weight")
    ep = _owner_endpoint(ctx, w, torch.nn.GroupNorm)
    if ep is not None:
        g = int(arg(op, 1, "num_groups"))
        ctx.factor(ep, [ctx.new_axis(g, "group_norm.groups"), ctx.new_axis(x.shape[1] // g, "group_norm.per_group")])
        ctx.graph.pair(ep, ctx.slot(x, 1))
        ctx.inexact(x, 1, f"{op.where()} normalises over channel groups")
        for v in op.inputs[1:]:
            ctx.cover(v, 0)
    else:
        ctx.freeze(x, 1, f"{op.where()}: num_groups is fixed in the call")


@register_dim_rule(getattr(torch, "_weight_norm", None))
def weight_norm_rule(op: OpNode, ctx: RuleContext) -> None:
    """The older ``nn.utils.weight_norm`` computes a layer's weight from its ``weight_g`` and
    ``weight_v`` in a pre-hook: the layer's handler prunes all three (functional/parametrized.py),
    so the parameters belong to the layer and no dim of the op couples anything."""
    for v in op.inputs:
        if v.kind == "param":
            ctx.own_param(v)
    for v in [*op.inputs, *op.outputs]:
        for d in range(v.ndim):
            ctx.cover(v, d)
