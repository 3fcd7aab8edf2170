"""``F.scaled_dot_product_attention``: heads, head dims and grouped key/value heads.

Query and key share the head dim (contracted), value's head dim becomes the
output's, and with grouped-query attention a key/value head owns a block of
query heads, so it can only go with all of them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..trace.graph import OpNode, Value
from ._args import arg
from .indexmap import Gather
from .registry import RuleContext, register_dim_rule


@register_dim_rule(F.scaled_dot_product_attention)
def sdpa_rule(op: OpNode, ctx: RuleContext) -> None:
    """``q (.., Hq, L, E), k (.., Hk, S, E), v (.., Hk, S, Ev) -> (.., Hq, L, Ev)``.

    q and k share the head dims E (contracted); v's head dims become the output's.
    With ``enable_gqa``, query head ``h`` reads key/value head ``h // (Hq // Hk)``,
    so removing a key/value head removes its whole group of query heads. The
    default scale ``1/sqrt(E)`` changes when E is pruned: E is marked inexact.
    """
    q, k, v = op.inputs[0], op.inputs[1], op.inputs[2]
    out = op.outputs[0]
    mask = arg(op, 3, "attn_mask")
    ctx.identity(q, -1, k, -1)
    if arg(op, 6, "scale") is None:
        ctx.inexact(q, -1, f"{op.where()}: default scale 1/sqrt(head_dim)")
    ctx.identity(v, -1, out, -1)
    ctx.identity(q, -2, out, -2)
    ctx.identity(k, -2, v, -2)
    if q.ndim >= 3:
        hq, hk = q.shape[-3], k.shape[-3]
        ctx.identity(q, -3, out, -3)
        ctx.identity(k, -3, v, -3)
        if hq == hk:
            ctx.identity(q, -3, k, -3)
        elif hk == 1:
            ctx.cover(k, -3)
            ctx.cover(v, -3)
        elif hq % hk == 0:
            ctx.map(k, -3, q, -3, Gather(torch.arange(hq) // (hq // hk), hk))
        if hk > 1 and hq % hk == 0:
            ctx.heads(q, -3, k, -3, op.where())
        for d in range(q.ndim - 3):
            for t in (k, v, out):
                if t.shape[d] == q.shape[d] and q.shape[d] > 1:
                    ctx.identity(q, d, t, d)
                elif t.shape[d] == 1:
                    ctx.cover(t, d)
    if isinstance(mask, Value):
        score = list(q.shape[:-1]) + [k.shape[-2]]
        refs = [(q, d) for d in range(q.ndim - 1)] + [(k, k.ndim - 2)]
        off = len(score) - mask.ndim
        for d in range(mask.ndim):
            if mask.shape[d] == 1:
                ctx.cover(mask, d)
            elif mask.shape[d] == score[d + off]:
                ctx.identity(mask, d, *refs[d + off])
