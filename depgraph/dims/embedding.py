"""``F.embedding``: a table lookup, ``out[*i, :] = weight[indices[*i], :]``.

Output dim ``-1`` is the table's dim 1 (the embedding width); the leading
output dims are the dims of the index tensor. The table's dim 0 (one row per
token) is addressed by data, so it cannot shrink and stays frozen.

When the table is the ``weight`` of a layer with a handler that is not a leaf
- an ``nn.Embedding`` subclass with its own ``forward`` (OPT's learned
positions, Gemma's scaled word embedding) - the width is that layer's output
endpoint, so ``prune_embedding_out_channels`` on the layer, and a tied
``lm_head``, stay in step. A bare table (an ``nn.Parameter`` of a custom
module) is coupled through its own dim and becomes a parameter endpoint.
"""

from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from ..trace.graph import OpNode, Value
from ._args import arg
from .registry import RuleContext, register_dim_rule

# Layer type -> whether dim 1 of its ``weight`` is the layer's output (True) or input channels.
_TABLE_DIM1_IS_OUT: tuple[tuple[type, bool], ...] = ((nn.Embedding, True), (nn.Linear, False))


def _layer_endpoint(ctx: RuleContext, weight: Value) -> int | None:
    """The endpoint of the layer whose ``weight`` is this table along its dim 1, if any."""
    owner = weight.owner
    if weight.kind != "param" or owner is None or weight.attr != "weight":
        return None
    is_out = next((side for t, side in _TABLE_DIM1_IS_OUT if isinstance(owner, t)), None)
    if is_out is None:
        return None
    return ctx.module_endpoint(owner, is_out)


@register_dim_rule(F.embedding)
def embedding_rule(op: OpNode, ctx: RuleContext) -> None:
    """``F.embedding``: the table's width (dim 1) is the output's last dim; index dims pass through."""
    idx, weight = arg(op, 0, "input"), arg(op, 1, "weight")
    out = op.outputs[0]
    if not isinstance(idx, Value) or not isinstance(weight, Value) or weight.ndim != 2:
        return
    # (*I) indices, (V, D) table -> (*I, D); out[*i, d] = weight[idx[*i], d]
    if out.ndim == idx.ndim + 1:
        for d in range(idx.ndim):
            ctx.identity(idx, d, out, d)
    ep = _layer_endpoint(ctx, weight)
    if ep is not None and ctx.graph.sizes[ep] == out.shape[-1]:
        ctx.graph.pair(ep, ctx.slot(out, -1))
        ctx.cover(weight, 1)
        ctx.cover(weight, 0)  # rows belong to the layer, whose handler never removes them
    else:
        ctx.identity(weight, 1, out, -1)
    if arg(op, 3, "max_norm") is not None:
        # Rows are renormalised over dim 1: removing a column changes every kept one.
        ctx.inexact(out, -1, f"{op.where()}: max_norm renormalises each row over the embedding width")
