"""Per-layer MAC formulas used by :func:`depgraph.utils.count_ops_and_params`.

A rule is ``rule(module, inputs, output) -> int``: the multiply-accumulates the
module performed in one forward call on the whole batch. Rules are registered
by module type with :func:`register_op_rule`; a subclass inherits its nearest
registered base's rule (``timm``'s ``Linear`` counts like ``nn.Linear``).

The conventions follow the classic ``ptflops`` counter that published pruning
tables (and the Torch-Pruning README) were produced with, so figures can be
compared with them:

* convolution: ``out_elements * (C_in / groups) * prod(kernel)`` plus one add
  per output element for the bias;
* linear: ``in_elements * out_features`` plus the bias adds;
* batch/instance/group/layer norm: one op per input element, two when affine;
* ReLU-like activations: one op per output element; pooling: one per input
  element; upsampling: one per output element;
* element-wise tensor arithmetic (residual adds, SiLU, ...) is free.

Two deliberate departures, both documented where they apply: the bias of a
linear layer is counted once per output *element* (the old counter counted it
once per batch, which under-counts token inputs), and a transposed convolution
is charged per *input* position (what it actually computes) instead of per
output position.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

from ..layers.spec import find_layer_part, registered_layers, set_layer_part

__all__ = [
    "OpRule",
    "register_op_rule",
    "find_op_rule",
    "registered_op_rules",
    "count_conv",
    "count_conv_transpose",
    "count_linear",
    "count_affine_norm",
    "count_layer_norm",
    "count_activation",
    "count_free",
]

#: ``rule(module, positional_inputs, output) -> MACs`` for one forward call.
OpRule = Callable[[nn.Module, tuple, Any], int]



def register_op_rule(*module_types: type) -> Callable[[OpRule], OpRule]:
    """Decorator registering a MAC rule for ``module_types``; returns the rule unchanged.

    Use it to teach the counter a custom layer. Warns (``stacklevel=2``) when a
    registration is replaced.

    Example:
        >>> @register_op_rule(MyScale)
        ... def _count_scale(module, inputs, output):
        ...     return output.numel()
    """

    def deco(rule: OpRule) -> OpRule:
        for t in module_types:
            set_layer_part(t, "count_macs", rule, "MAC rule")
        return rule

    return deco


def find_op_rule(module: nn.Module) -> OpRule | None:
    """The rule for ``module``'s type or its nearest registered base class, else None."""
    return find_layer_part(module, "count_macs")


def registered_op_rules() -> dict[type, OpRule]:
    """A copy of the type -> rule registry (the ``count_macs`` parts of the layer specs)."""
    return {t: s.count_macs for t, s in registered_layers().items() if s.count_macs is not None}


def _first_tensor(inputs: tuple) -> torch.Tensor | None:
    for x in inputs:
        if isinstance(x, torch.Tensor):
            return x
    return None


def _first_output(output: Any) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output:
        return _first_output(output[0])
    return None


# -- convolutions --------------------------------------------------------------


def count_conv(module: nn.Conv2d, inputs: tuple, output: torch.Tensor) -> int:
    """Convolutions: ``(C_in / groups) * prod(kernel)`` per output element, plus the bias."""
    # every output element is a dot product over (C_in / groups) * prod(kernel) taps
    taps = (module.in_channels // module.groups) * math.prod(module.kernel_size)
    macs = output.numel() * taps
    if module.bias is not None:
        macs += output.numel()
    return int(macs)


def count_conv_transpose(module: nn.ConvTranspose2d, inputs: tuple, output: torch.Tensor) -> int:
    """Transposed convolutions: charged per input element (what they compute), plus the bias."""
    # every *input* element is scattered into (C_out / groups) * prod(kernel) outputs
    x = _first_tensor(inputs)
    taps = (module.out_channels // module.groups) * math.prod(module.kernel_size)
    macs = (x.numel() if x is not None else 0) * taps
    if module.bias is not None:
        macs += output.numel()
    return int(macs)


# -- dense layers --------------------------------------------------------------


def count_linear(module: nn.Linear, inputs: tuple, output: torch.Tensor) -> int:
    """``nn.Linear``: ``out_features`` per input element, plus one bias add per output element."""
    x = _first_tensor(inputs)
    macs = (x.numel() if x is not None else 0) * module.out_features
    if module.bias is not None:
        macs += output.numel()
    return int(macs)


@register_op_rule(nn.Bilinear)
def _count_bilinear(module: nn.Bilinear, inputs: tuple, output: torch.Tensor) -> int:
    # y_o = x1^T W_o x2: in1*in2 products per output feature, per row
    rows = output.numel() // module.out_features
    macs = rows * module.out_features * module.in1_features * module.in2_features
    if module.bias is not None:
        macs += output.numel()
    return int(macs)


# -- normalisation, activations, pooling ---------------------------------------


def count_affine_norm(module: nn.Module, inputs: tuple, output: Any) -> int:
    """Batch / instance / group norm: one op per input element, two when affine."""
    x = _first_tensor(inputs)
    n = x.numel() if x is not None else 0
    return int(n * (2 if getattr(module, "affine", False) else 1))


def count_layer_norm(module: nn.Module, inputs: tuple, output: Any) -> int:
    """LayerNorm / RMSNorm: one op per input element, two with an elementwise affine."""
    x = _first_tensor(inputs)
    n = x.numel() if x is not None else 0
    return int(n * (2 if getattr(module, "elementwise_affine", False) else 1))


@register_op_rule(nn.ReLU, nn.ReLU6, nn.ELU, nn.LeakyReLU, nn.GELU)
def count_activation(module: nn.Module, inputs: tuple, output: Any) -> int:
    """ReLU-like activations (and PReLU): one op per output element."""
    out = _first_output(output)
    return int(out.numel()) if out is not None else 0


@register_op_rule(
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
)
def _count_pool(module: nn.Module, inputs: tuple, output: Any) -> int:
    x = _first_tensor(inputs)
    return int(x.numel()) if x is not None else 0


@register_op_rule(nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d)
def _count_upsample(module: nn.Module, inputs: tuple, output: Any) -> int:
    out = _first_output(output)
    return int(out.numel()) if out is not None else 0


@register_op_rule(nn.Identity, nn.Dropout, nn.Flatten)
def count_free(module: nn.Module, inputs: tuple, output: Any) -> int:
    """Table look-ups, identities and reshapes: no arithmetic."""
    # table look-ups and reshapes move data but do no arithmetic
    return 0
