"""Small helpers kept under their Torch-Pruning names: ``flatten_as_list``, ``module2type``, ``OPTYPE``."""

from __future__ import annotations

from enum import IntEnum
from typing import Any

import torch
import torch.nn as nn

__all__ = [
    "OPTYPE",
    "module2type",
    "flatten_as_list",
    "TORCH_CONV",
    "TORCH_BATCHNORM",
    "TORCH_LINEAR",
    "TORCH_PRELU",
]

TORCH_CONV = nn.modules.conv._ConvNd
TORCH_BATCHNORM = nn.modules.batchnorm._BatchNorm
TORCH_LINEAR = nn.Linear
TORCH_PRELU = nn.PReLU


class OPTYPE(IntEnum):
    """Layer and op kinds, numbered as Torch-Pruning numbers them."""

    CONV = 0
    BN = 1
    LINEAR = 2
    PRELU = 3
    DEPTHWISE_CONV = 4
    CONCAT = 5
    SPLIT = 6
    CUSTOMIZED = 7
    ELEMENTWISE = 8
    LN = 9
    EMBED = 10
    PARAMETER = 11
    MHA = 12
    LSTM = 13
    RESHAPE = 14
    GN = 15
    IN = 16
    UNBIND = 17
    EXPAND = 18
    SLICE = 19
    OUTPUT = 20


# Checked in order: the first matching type wins (a depthwise conv is decided before).
_LAYER_KINDS: tuple[tuple[type, OPTYPE], ...] = (
    (TORCH_BATCHNORM, OPTYPE.BN),
    (nn.PReLU, OPTYPE.PRELU),
    (nn.Linear, OPTYPE.LINEAR),
    (nn.LayerNorm, OPTYPE.LN),
    (nn.Embedding, OPTYPE.EMBED),
    (nn.Parameter, OPTYPE.PARAMETER),
    (nn.MultiheadAttention, OPTYPE.MHA),
    (nn.LSTM, OPTYPE.LSTM),
    (nn.GroupNorm, OPTYPE.GN),
    (nn.modules.instancenorm._InstanceNorm, OPTYPE.IN),
)


def module2type(module: Any) -> OPTYPE:
    """The Torch-Pruning kind of a layer (``OPTYPE.ELEMENTWISE`` for layers without channels to prune).

    A convolution whose every output channel is its own group (and has more
    than one) is ``DEPTHWISE_CONV``.
    """
    if isinstance(module, TORCH_CONV):
        depthwise = module.groups == module.out_channels and module.out_channels > 1
        return OPTYPE.DEPTHWISE_CONV if depthwise else OPTYPE.CONV
    for kind_type, kind in _LAYER_KINDS:
        if isinstance(module, kind_type):
            return kind
    return OPTYPE.ELEMENTWISE


def flatten_as_list(obj: Any) -> Any:
    """Every tensor in nested lists, tuples and dicts, in order, as one flat list.

    A tensor gives ``[tensor]``; anything else that is not a container is
    returned as it is (as in Torch-Pruning, where detection scripts flatten
    model outputs of mixed structure).
    """
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        flat: list = []
        for item in obj:
            sub = flatten_as_list(item)
            flat.extend(sub if isinstance(sub, list) else [sub])
        return flat
    return obj
