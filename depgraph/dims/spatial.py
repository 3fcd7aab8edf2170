"""Spatial ops: pooling, interpolation, padding and pixel (un)shuffle.

They keep the leading batch and channel dims position by position and resize,
pad or fold only the trailing spatial dims, which therefore freeze. Padding the
channel dim freezes it too: the pad widths are written into the code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..trace.graph import OpNode
from ._args import arg, lookup
from .registry import RuleContext, register_dim_rule

_SPATIAL = {
    **{f: 1 for f in lookup("avg_pool1d max_pool1d adaptive_avg_pool1d adaptive_max_pool1d lp_pool1d "
                             "max_pool1d_with_indices adaptive_max_pool1d_with_indices", F, torch)},
    **{f: 2 for f in lookup("avg_pool2d max_pool2d adaptive_avg_pool2d adaptive_max_pool2d lp_pool2d "
                             "max_pool2d_with_indices adaptive_max_pool2d_with_indices "
                             "fractional_max_pool2d", F, torch)},
    **{f: 3 for f in lookup("avg_pool3d max_pool3d adaptive_avg_pool3d adaptive_max_pool3d lp_pool3d "
                             "max_pool3d_with_indices adaptive_max_pool3d_with_indices", F, torch)},
}


@register_dim_rule(*_SPATIAL)
def pooling_rule(op: OpNode, ctx: RuleContext) -> None:
    """Pooling keeps every dim before the pooled spatial dims."""
    k = _SPATIAL[op.target]
    _keep_leading(op, ctx, op.inputs[0].ndim - k)


@register_dim_rule(F.interpolate, F.upsample, F.upsample_nearest, F.upsample_bilinear)
def interpolate_rule(op: OpNode, ctx: RuleContext) -> None:
    """Interpolation resizes only the trailing spatial dims (all dims after the channel dim)."""
    _keep_leading(op, ctx, 2)


@register_dim_rule(F.pad, torch.constant_pad_nd)
def pad_rule(op: OpNode, ctx: RuleContext) -> None:
    """``pad`` lists (left, right) pairs from the last dim backwards; padded dims freeze."""
    pad = arg(op, 1, "pad", ())
    x = op.inputs[0]
    n_padded = len(pad) // 2
    for d in range(x.ndim - n_padded, x.ndim):
        i = x.ndim - 1 - d
        if pad[2 * i] == 0 and pad[2 * i + 1] == 0:
            ctx.identity(x, d, op.outputs[0], d)
    _keep_leading(op, ctx, x.ndim - n_padded)


@register_dim_rule(F.pixel_shuffle, torch.pixel_shuffle, F.pixel_unshuffle, torch.pixel_unshuffle)
def pixel_shuffle_rule(op: OpNode, ctx: RuleContext) -> None:
    """``(C*r*r, H, W) <-> (C, H*r, W*r)``: channel ``c*r*r + i*r + j`` moves to sub-pixel (i, j).

    The channel axis factors into (C, r, r); the two r axes belong to space and
    freeze, so pruning removes whole blocks of r*r input channels.
    """
    x, out = op.inputs[0], op.outputs[0]
    shuffle = op.target in (F.pixel_shuffle, torch.pixel_shuffle)
    big, small = (x, out) if shuffle else (out, x)
    r = int(round((big.shape[-3] // small.shape[-3]) ** 0.5))
    c = ctx.slot(small, -3)
    ri, rj = ctx.new_axis(r, "pixel_shuffle.r_i"), ctx.new_axis(r, "pixel_shuffle.r_j")
    ctx.graph.freeze(ri, f"{op.where()}: sub-pixel axis")
    ctx.graph.freeze(rj, f"{op.where()}: sub-pixel axis")
    ctx.factor(ctx.slot(big, -3), [c, ri, rj])
    for d in range(x.ndim - 3):
        ctx.identity(x, d, out, d)


def _keep_leading(op: OpNode, ctx: RuleContext, n: int) -> None:
    x = op.inputs[0]
    for out in op.outputs:
        for d in range(min(n, x.ndim, out.ndim)):
            ctx.identity(x, d, out, d)
    # Further inputs (e.g. the indices of max_unpool) are not coupled: they freeze by default.
