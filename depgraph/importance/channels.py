"""Which weights belong to each channel of a layer: the view every criterion scores.

A criterion asks, for a group member ``(layer, side)``, for its
:class:`ChannelSlice` list: each names a parameter and a function that
reshapes any tensor of that parameter's shape into ``(channels, -1)`` rows,
row ``c`` holding exactly the entries removed with channel ``c``. Because the
function applies to any same-shaped tensor, magnitude (``weight``), Taylor
(``weight * grad``) and Hessian (``weight**2 * h``) criteria share one view.

Layouts (``g = groups``, ``K = prod(kernel)``)::

    ConvNd           weight (O, I/g, *k): out rows = weight[o]
                     in rows: (g, O/g, I/g, K) -> (g, I/g, O/g, K) -> (I, O/g*K)
    ConvTransposeNd  weight (I, O/g, *k): the same with the sides swapped
    Linear           weight (O, I): out rows = weight, in rows = weight.T
    norms, PReLU     one affine entry per channel (both sides)
    Embedding        weight (V, D): channels are D, rows = weight.T

Register a layout for a custom layer with :func:`register_channel_slices`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn

__all__ = ["ChannelSlice", "register_channel_slices", "channel_slices", "handler_side"]

Rows = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class ChannelSlice:
    """A parameter and how to cut any tensor shaped like it into per-channel rows."""

    param: torch.Tensor
    rows: Rows
    is_bias: bool = False

    def element_index(self) -> torch.Tensor:
        """``(channels, k)`` flat positions in ``param`` of each channel's entries.

        The inverse of :attr:`rows`: writing through these positions touches
        exactly the entries a channel owns (used to zero channels and to add
        per-channel regularisation gradients).
        """
        flat = torch.arange(self.param.numel(), device=self.param.device).reshape(self.param.shape)
        return self.rows(flat)


SliceFn = Callable[[nn.Module, str], list[ChannelSlice]]
_SLICES: dict[type, SliceFn] = {}


def register_channel_slices(*types: type) -> Callable[[SliceFn], SliceFn]:
    """Decorator: ``fn(layer, side) -> list[ChannelSlice]`` for ``types``; returns ``fn``."""

    def deco(fn: SliceFn) -> SliceFn:
        for t in types:
            _SLICES[t] = fn
        return fn

    return deco


def channel_slices(target: object, side: str, pruning_dim: int | None = None) -> list[ChannelSlice]:
    """Per-channel views of ``target``'s parameters on ``side`` (``"out"``/``"in"``).

    ``target`` is a module, or a bare parameter with the ``pruning_dim`` the
    graph couples. Unknown types give ``[]``: they add nothing to a score.
    """
    if isinstance(target, torch.Tensor):
        dim = pruning_dim or 0
        return [ChannelSlice(target, lambda t: t.movedim(dim, 0).reshape(t.shape[dim], -1))]
    for cls in type(target).__mro__:
        fn = _SLICES.get(cls)
        if fn is not None:
            return [s for s in fn(target, side) if s.param is not None]
    return []


def handler_side(fn: object) -> str | None:
    """``"out"`` or ``"in"`` for a handler's bound pruning method, else None.

    The graph stores the handler's bound method; comparing it with the
    owner's own methods tells the side without looking at names.
    """
    owner = getattr(fn, "__self__", None)
    if owner is None:
        return None
    if fn == getattr(owner, "prune_out_channels", None):
        return "out"
    if fn == getattr(owner, "prune_in_channels", None):
        return "in"
    return None


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1)


def _block_transpose(t: torch.Tensor, groups: int) -> torch.Tensor:
    # (A, B/g... ) layout (A, b, *k) with A = g * a: (g, a, b, K) -> (g, b, a, K) -> (g*b, a*K)
    a, b = t.shape[0] // groups, t.shape[1]
    k = math.prod(t.shape[2:])
    return t.reshape(groups, a, b, k).permute(0, 2, 1, 3).reshape(groups * b, a * k)


@register_channel_slices(
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d
)
def _conv_slices(layer: nn.Module, side: str) -> list[ChannelSlice]:
    row_side = "in" if layer.transposed else "out"  # the side indexing weight dim 0
    g = layer.groups
    rows = _flat if side == row_side else (lambda t: _block_transpose(t, g))
    out = [ChannelSlice(layer.weight, rows)]
    if side == "out" and layer.bias is not None:
        out.append(ChannelSlice(layer.bias, _flat, is_bias=True))
    return out


@register_channel_slices(nn.Linear)
def _linear_slices(layer: nn.Linear, side: str) -> list[ChannelSlice]:
    if side == "in":
        return [ChannelSlice(layer.weight, lambda t: t.t())]
    out = [ChannelSlice(layer.weight, _flat)]
    if layer.bias is not None:
        out.append(ChannelSlice(layer.bias, _flat, is_bias=True))
    return out


@register_channel_slices(nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.PReLU)
def _per_channel_slices(layer: nn.Module, side: str) -> list[ChannelSlice]:
    weight = getattr(layer, "weight", None)
    if isinstance(layer, nn.PReLU) and weight is not None and weight.numel() == 1:
        return []  # one shared slope: not per channel
    return [ChannelSlice(weight, _flat), ChannelSlice(getattr(layer, "bias", None), _flat, is_bias=True)]


@register_channel_slices(nn.LayerNorm, *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()))
def _layer_norm_slices(layer: nn.Module, side: str) -> list[ChannelSlice]:
    # channels are the last normalised dim
    def rows(t: torch.Tensor) -> torch.Tensor:
        return t.movedim(-1, 0).reshape(t.shape[-1], -1)

    return [ChannelSlice(layer.weight, rows), ChannelSlice(getattr(layer, "bias", None), rows, is_bias=True)]


@register_channel_slices(nn.Embedding)
def _embedding_slices(layer: nn.Embedding, side: str) -> list[ChannelSlice]:
    return [ChannelSlice(layer.weight, lambda t: t.t())]
