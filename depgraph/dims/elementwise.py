"""Elementwise ops (with broadcasting) and per-channel ops that keep batch and channel dims.

Elementwise ops couple equal dims of all tensor operands position by position;
a size-1 dim broadcast against a larger one is not coupled. Spatial ops
(pooling, interpolation, padding of trailing dims) keep the leading batch and
channel dims and freeze the spatial ones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..trace.graph import OpNode
from ._args import arg
from .registry import RuleContext, register_dim_rule


def lookup(names: str, *spaces) -> list:
    """The callables named in ``names`` (space-separated) that exist in any of ``spaces``, each once.

    Shared by every dimension-rule module so a rule registers for ``torch.x``,
    ``torch.Tensor.x`` and ``F.x`` alike, and a name this torch build lacks is skipped.
    """
    found = []
    for name in names.split():
        for space in spaces:
            f = getattr(space, name, None)
            if f is not None and f not in found:
                found.append(f)
    return found


_BINARY = """add sub subtract mul multiply div divide true_divide floor_divide remainder fmod pow
 atan2 maximum minimum fmax fmin where clamp clip clamp_min clamp_max lerp addcmul addcdiv
 eq ne lt le gt ge greater less greater_equal less_equal equal logical_and logical_or logical_xor
 bitwise_and bitwise_or bitwise_xor hypot copysign xlogy masked_fill masked_scatter
 __add__ __radd__ __iadd__ __sub__ __rsub__ __isub__ __mul__ __rmul__ __imul__ __truediv__
 __rtruediv__ __itruediv__ __div__ __rdiv__ __idiv__ __floordiv__ __rfloordiv__ __ifloordiv__
 __mod__ __rmod__ __imod__ __pow__ __rpow__ __ipow__ __and__ __rand__ __iand__ __or__ __ror__
 __ior__ __xor__ __rxor__ __ixor__ __eq__ __ne__ __lt__ __le__ __gt__ __ge__ __neg__ __pos__
 __abs__ __invert__ __matmul_dummy__"""
_UNARY = """neg negative abs absolute exp exp2 expm1 log log2 log10 log1p sqrt rsqrt sigmoid tanh
 relu relu6 gelu silu mish hardswish hardsigmoid hardtanh leaky_relu elu selu celu softplus
 softsign tanhshrink hardshrink softshrink threshold logsigmoid erf erfc erfinv sin cos tan asin acos
 atan sinh cosh asinh acosh atanh reciprocal square sign sgn floor ceil round trunc frac
 nan_to_num isnan isinf isfinite logical_not bitwise_not logit sinc angle positive
 dropout dropout1d dropout2d dropout3d alpha_dropout feature_alpha_dropout
 rrelu glu_dummy contiguous clone detach to type type_as float double half bfloat16 int long
 bool cpu cuda requires_grad_ zeros_like ones_like full_like empty_like rand_like randn_like
 randint_like fill_ zero_ copy_ pin_memory resolve_conj resolve_neg as_strided_dummy"""


def _with_inplace(fs: list) -> list:
    extra = []
    for f in fs:
        name = getattr(f, "__name__", "")
        g = getattr(torch.Tensor, name + "_", None)
        if g is not None:
            extra.append(g)
        h = getattr(F, name + "_", None)
        if h is not None:
            extra.append(h)
    return fs + extra


_ELEMENTWISE = _with_inplace(
    lookup(_BINARY, torch, torch.Tensor, F) + lookup(_UNARY, torch, torch.Tensor, F, torch.special)
)


@register_dim_rule(*_ELEMENTWISE)
def elementwise_rule(op: OpNode, ctx: RuleContext) -> None:
    """Broadcast all tensor operands against each output."""
    if not op.outputs:
        return
    for out in op.outputs:
        ctx.broadcast(op.inputs, out)


@register_dim_rule(torch.Tensor.data, getattr(torch.Tensor, "real", None))
def alias_rule(op: OpNode, ctx: RuleContext) -> None:
    """``.data`` / ``.real``: the same tensor under another name; every dim is identical."""
    if op.inputs and op.outputs and op.inputs[0].shape == op.outputs[0].shape:
        for d in range(op.inputs[0].ndim):
            ctx.identity(op.inputs[0], d, op.outputs[0], d)


@register_dim_rule(F.prelu, torch.prelu)
def functional_prelu_rule(op: OpNode, ctx: RuleContext) -> None:
    """``prelu(x, weight)``: a 1-element weight broadcasts; a C-element one follows dim 1."""
    x, w = op.inputs[0], op.inputs[1]
    out = op.outputs[0]
    for d in range(x.ndim):
        ctx.identity(x, d, out, d)
    if w.shape[0] > 1:
        ctx.identity(w, 0, x, 1 if x.ndim > 1 else 0)
    else:
        ctx.cover(w, 0)


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


@register_dim_rule(F.interpolate, F.upsample, F.upsample_nearest, F.upsample_bilinear, F.grid_sample_dummy
                   if hasattr(F, "grid_sample_dummy") else None)
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
