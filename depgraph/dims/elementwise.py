"""Elementwise ops (with broadcasting), aliases and the functional ``prelu``.

Elementwise ops couple equal dims of all tensor operands position by position;
a size-1 dim broadcast against a larger one is not coupled. Ops that resize or
pad the spatial dims are in :mod:`depgraph.dims.spatial`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..trace.graph import OpNode
from ._args import lookup
from .registry import RuleContext, register_dim_rule

_BINARY = """add sub subtract mul multiply div divide true_divide floor_divide remainder fmod pow
 atan2 maximum minimum fmax fmin where clamp clip clamp_min clamp_max lerp addcmul addcdiv
 eq ne lt le gt ge greater less greater_equal less_equal equal logical_and logical_or logical_xor
 bitwise_and bitwise_or bitwise_xor hypot copysign xlogy masked_fill masked_scatter
 __add__ __radd__ __iadd__ __sub__ __rsub__ __isub__ __mul__ __rmul__ __imul__ __truediv__
 __rtruediv__ __itruediv__ __div__ __rdiv__ __idiv__ __floordiv__ __rfloordiv__ __ifloordiv__
 __mod__ __rmod__ __imod__ __pow__ __rpow__ __ipow__ __and__ __rand__ __iand__ __or__ __ror__
 __ior__ __xor__ __rxor__ __ixor__ __eq__ __ne__ __lt__ __le__ __gt__ __ge__ __neg__ __pos__
 __abs__ __invert__"""
_UNARY = """neg negative abs absolute exp exp2 expm1 log log2 log10 log1p sqrt rsqrt sigmoid tanh
 relu relu6 gelu silu mish hardswish hardsigmoid hardtanh leaky_relu elu selu celu softplus
 softsign tanhshrink hardshrink softshrink threshold logsigmoid erf erfc erfinv sin cos tan asin acos
 atan sinh cosh asinh acosh atanh reciprocal square sign sgn floor ceil round trunc frac
 nan_to_num isnan isinf isfinite logical_not bitwise_not logit sinc angle positive
 dropout dropout1d dropout2d dropout3d alpha_dropout feature_alpha_dropout
 rrelu contiguous clone detach to type type_as float double half bfloat16 int long
 bool cpu cuda requires_grad_ zeros_like ones_like full_like empty_like rand_like randn_like
 randint_like fill_ zero_ copy_ pin_memory resolve_conj resolve_neg"""


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
