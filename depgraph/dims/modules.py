"""How a leaf module's call ties its inputs and outputs to its channel endpoints.

These are the ``dim_rule`` parts of the built-in layer specs
(:mod:`depgraph.layers.builtin` registers them). ``module_endpoint(m, True)`` is
the slot of the module's output channels (what
``prune_*_out_channels`` removes), ``module_endpoint(m, False)`` its input
channels. Grouped convolutions factor both into (groups, per-group): removing a
whole group removes its input and output block together, and any other set is
widened to the same local positions in every group.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch.nn as nn

from ..trace.graph import OpNode, Value
from .registry import RuleContext


def _first(op: OpNode, *names: str) -> Value | None:
    for n in names:
        v = op.kwargs.get(n)
        if isinstance(v, Value):
            return v
    for a in op.args:
        if isinstance(a, Value):
            return a
    return op.inputs[0] if op.inputs else None


def _batch(ctx: RuleContext, x: Value, out: Value, n: int) -> None:
    for d in range(min(n, x.ndim, out.ndim)):
        ctx.identity(x, d, out, d)


def couple_conv(ctx: RuleContext, m: nn.Module, x: Value, out: Value, cdim: int, where: str) -> int | None:
    """Tie ``x`` and ``out`` to conv ``m``'s channel endpoints, groups included.

    Shared by the module call and by a functional ``F.conv*`` on the module's own
    weight (a subclass that overrides ``forward``, like timm's ``Conv2dSame``): the
    coupling is the layer's, whatever code runs around the convolution. A grouped
    conv factors both sides into (groups, per-group), so a group removed on one side
    is removed on the other. Returns the per-group input axis (``in_channels //
    groups`` positions: what weight dim 1 indexes), or ``None`` without endpoints.
    """
    ep_in, ep_out = ctx.module_endpoint(m, False), ctx.module_endpoint(m, True)
    if ep_in is None or ep_out is None:
        return None
    ctx.graph.pair(ep_in, ctx.slot(x, cdim))
    ctx.graph.pair(ep_out, ctx.slot(out, cdim))
    if m.groups == 1:
        return ep_in
    g = m.groups
    ga = ctx.new_axis(g, f"{where}.groups")
    local_in = ctx.new_axis(m.in_channels // g, f"{where}.per_group_in")
    ctx.factor(ep_in, [ga, local_in])
    ctx.factor(ep_out, [ga, ctx.new_axis(m.out_channels // g, f"{where}.per_group_out")])
    return local_in


def conv_module_rule(op: OpNode, ctx: RuleContext) -> None:
    """``nn.Conv*d`` / ``nn.ConvTranspose*d``: dim 1 (0 unbatched) is the in / out endpoint; groups factor both."""
    m = op.target
    x, out = _first(op, "input"), op.outputs[0]
    cdim = x.ndim - len(m.kernel_size) - 1
    _batch(ctx, x, out, cdim)
    couple_conv(ctx, m, x, out, cdim, op.scope)


def linear_module_rule(op: OpNode, ctx: RuleContext) -> None:
    """``nn.Linear``: the last dim of the input / output is the in / out endpoint; other dims pass through."""
    m = op.target
    x, out = _first(op, "input"), op.outputs[0]
    _batch(ctx, x, out, x.ndim - 1)
    ctx.graph.pair(ctx.module_endpoint(m, False), ctx.slot(x, -1))
    ctx.graph.pair(ctx.module_endpoint(m, True), ctx.slot(out, -1))


def _channelwise(op: OpNode, ctx: RuleContext, cdim_from_end: int | None, inexact: str = "") -> None:
    """One endpoint on the channel dim; every other dim passes through unchanged."""
    m = op.target
    x, out = _first(op, "input"), op.outputs[0]
    cdim = (x.ndim - cdim_from_end) if cdim_from_end is not None else (1 if x.ndim > 1 else 0)
    for d in range(x.ndim):
        ctx.identity(x, d, out, d)
    ep = ctx.module_endpoint(m, True)
    if ep is not None:
        ctx.graph.pair(ep, ctx.slot(x, cdim))
    if inexact:
        ctx.inexact(x, cdim, f"{type(m).__name__} at {op.scope} {inexact}")
    return ep


def batchnorm_module_rule(op: OpNode, ctx: RuleContext) -> None:
    """``nn.BatchNorm*d``: one endpoint on the channel dim, which passes through."""
    _channelwise(op, ctx, None)


def instancenorm_module_rule(op: OpNode, ctx: RuleContext) -> None:
    """``nn.InstanceNorm*d``: one endpoint on the channel dim, counted from the spatial dims."""
    m = op.target
    spatial = {nn.InstanceNorm1d: 1, nn.InstanceNorm2d: 2, nn.InstanceNorm3d: 3}
    k = next((v for t, v in spatial.items() if isinstance(m, t)), 2)
    _channelwise(op, ctx, k + 1)


def prelu_module_rule(op: OpNode, ctx: RuleContext) -> None:
    """``nn.PReLU``: per-channel slopes make the channel dim an endpoint; one shared slope couples nothing."""
    x = _first(op, "input")
    if op.target.num_parameters > 1:
        _channelwise(op, ctx, None)
    else:
        for d in range(x.ndim):
            ctx.identity(x, d, op.outputs[0], d)


def layernorm_module_rule(op: OpNode, ctx: RuleContext) -> None:
    """``nn.LayerNorm`` / ``nn.RMSNorm`` over one dim: the last dim is the endpoint; inexact."""
    m = op.target
    x, out = _first(op, "input"), op.outputs[0]
    shape = tuple(getattr(m, "normalized_shape", (x.shape[-1],)))
    for d in range(x.ndim - len(shape)):
        ctx.identity(x, d, out, d)
    if len(shape) == 1:
        ctx.identity(x, -1, out, -1)
        ctx.graph.pair(ctx.module_endpoint(m, True), ctx.slot(x, -1))
        ctx.inexact(x, -1, f"{type(m).__name__} at {op.scope} normalises over it")



def groupnorm_module_rule(op: OpNode, ctx: RuleContext) -> None:
    """``nn.GroupNorm``: one endpoint on the channels, factored into (groups, per group); inexact."""
    m = op.target
    ep = _channelwise(op, ctx, None, inexact="normalises over channel groups")
    g = m.num_groups
    ctx.factor(ep, [ctx.new_axis(g, f"{op.scope}.groups"), ctx.new_axis(m.num_channels // g, f"{op.scope}.per_group")])


def embedding_module_rule(op: OpNode, ctx: RuleContext) -> None:
    """``nn.Embedding``: the output's last dim is the endpoint; the index dims pass through."""
    idx, out = _first(op, "input"), op.outputs[0]
    if idx.ndim == out.ndim - 1:
        for d in range(idx.ndim):
            ctx.identity(idx, d, out, d)
    ctx.graph.pair(ctx.module_endpoint(op.target, True), ctx.slot(out, -1))
    for v in op.inputs[1:]:
        for d in range(v.ndim):
            ctx.cover(v, d)


def mha_module_rule(op: OpNode, ctx: RuleContext) -> None:
    """The embed dim of query/key/value/output is one endpoint.

    nn.MultiheadAttention ties its inner q/k/v width to ``embed_dim`` and needs
    ``embed_dim % num_heads == 0``, so removals are widened to the same
    position in every head; the ``1/sqrt(head_dim)`` scale then changes
    (inexact).
    """
    m = op.target
    q = _first(op, "query")
    names = ["query", "key", "value"]
    tensors = [op.kwargs.get(n) for n in names]
    pos = [a for a in op.args if isinstance(a, Value)]
    for i in range(3):
        if tensors[i] is None and i < len(pos):
            tensors[i] = pos[i]
    ep = ctx.module_endpoint(m, True)
    out = op.outputs[0]
    if not (m._qkv_same_embed_dim and m.kdim == m.embed_dim and m.vdim == m.embed_dim):
        return
    for t in [*tensors, out]:
        if isinstance(t, Value):
            ctx.graph.pair(ep, ctx.slot(t, -1))
    for d in range(q.ndim - 1):
        ctx.identity(q, d, out, d)
    heads = ctx.new_axis(m.num_heads, f"{op.scope}.heads")
    ctx.graph.freeze(heads, f"{op.scope}: nn.MultiheadAttention keeps num_heads")
    ctx.factor(ep, [heads, ctx.new_axis(m.embed_dim // m.num_heads, f"{op.scope}.head_dim")])
    ctx.inexact(q, -1, f"MultiheadAttention at {op.scope}: the 1/sqrt(head_dim) scale changes")


def rnn_module_rule(op: OpNode, ctx: RuleContext) -> None:
    """Input features -> ``in``; hidden units -> ``out``, on the output (per direction) and the states."""
    m = op.target
    x = _first(op, "input")
    ep_in, ep_out = ctx.module_endpoint(m, False), ctx.module_endpoint(m, True)
    ctx.graph.pair(ep_in, ctx.slot(x, -1))
    out = op.outputs[0]
    for d in range(x.ndim - 1):
        ctx.identity(x, d, out, d)
    dirs = 2 if m.bidirectional else 1
    if dirs == 1:
        ctx.graph.pair(ep_out, ctx.slot(out, -1))
    else:
        axis = ctx.new_axis(2, f"{op.scope}.directions")
        ctx.graph.freeze(axis, f"{op.scope}: the number of directions is fixed")
        ctx.factor(ctx.slot(out, -1), [axis, ep_out])
    for v in list(op.outputs[1:]) + [t for t in op.inputs[1:] if t.ndim >= 2]:
        if v.shape[-1] == m.hidden_size:
            ctx.graph.pair(ep_out, ctx.slot(v, -1))


def _one_channel_set(handler) -> bool:
    """A handler that prunes both sides with one method has one set of channels (BatchNorm-like)."""
    cls = type(handler)
    fn = getattr(cls, "prune_out_channels", None)
    return fn is not None and getattr(cls, "prune_in_channels", None) is fn


def _channel_dim(v: Value, declared: int, get_channels: Callable[[nn.Module], Any], m: nn.Module) -> int:
    """The dim of ``v`` holding a custom layer's ``channels``: the handler's, else the one of that size.

    A handler written for Torch-Pruning only says how many channels a layer has, not
    where they are: a token layer (HF Swin's patch merging, (B, L, C)) keeps them
    last, where the default dim 1 holds the sequence. The declared dim wins when its
    size fits; otherwise the last dim of that size.
    """
    declared %= max(v.ndim, 1)
    if v.ndim == 0:
        return declared
    try:
        channels = get_channels(m)
    except Exception:  # noqa: BLE001 - a user's getter that fails here leaves the declared dim
        return declared
    if not isinstance(channels, int) or v.shape[declared] == channels:
        return declared
    fits = [d for d in range(v.ndim) if v.shape[d] == channels]
    return fits[-1] if fits else declared


def custom_module_rule(op: OpNode, ctx: RuleContext, handler) -> None:
    """Layers with a user-registered handler: the handler names the channel dims.

    A handler written as ``prune_in_channels = prune_out_channels`` declares that
    input channel ``i`` *is* output channel ``i`` (a per-channel scale, a norm):
    like a BatchNorm, the layer then has one endpoint and passes channels through.
    Otherwise, like a conv, its input and output channels are separate endpoints.
    Where the channels lie: see :func:`_channel_dim`.
    """
    m = op.target
    x, out = _first(op), op.outputs[0] if op.outputs else None
    if x is not None and out is not None and x.shape == out.shape and _one_channel_set(handler):
        for d in range(x.ndim):
            ctx.identity(x, d, out, d)
        cdim = _channel_dim(out, handler.out_channel_dim(m, out.ndim), handler.get_out_channels, m)
        ep = ctx.module_endpoint(m, True, out.shape[cdim])
        if ep is not None:
            ctx.graph.pair(ep, ctx.slot(out, cdim))
        return
    cin = _channel_dim(x, handler.in_channel_dim(m, x.ndim), handler.get_in_channels, m) if x is not None else 0
    cout = _channel_dim(out, handler.out_channel_dim(m, out.ndim), handler.get_out_channels, m) if out is not None else 0
    ep_in = ctx.module_endpoint(m, False, x.shape[cin]) if x is not None else None
    ep_out = ctx.module_endpoint(m, True, out.shape[cout]) if out is not None else None
    if x is not None and ep_in is not None:
        ctx.graph.pair(ep_in, ctx.slot(x, cin))
    if out is not None and ep_out is not None:
        ctx.graph.pair(ep_out, ctx.slot(out, cout))
    if x is not None and out is not None and x.ndim == out.ndim:
        for d in range(x.ndim):
            if d not in (cin, cout) and x.shape[d] == out.shape[d]:
                ctx.identity(x, d, out, d)
