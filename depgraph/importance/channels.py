"""Which weights belong to each channel of a layer: the view every criterion scores.

A criterion asks, for a group member ``(layer, side)``, for its
:class:`ChannelSlice` list. A slice names a parameter and where its channels
lie, and :meth:`ChannelSlice.select` cuts any tensor of that parameter's shape
down to the entries owned by some channels, channel first. Because it applies
to any same-shaped tensor, magnitude (``weight``), Taylor (``weight * grad``),
Hessian (``weight**2 * h``), the regularisers (gradients) and soft pruning
(flat positions) all share one view.

Layouts (``g = groups``)::

    ConvNd           weight (O, I/g, *k): out = dim 0; in = dim 1 in each of g blocks
    ConvTransposeNd  weight (I, O/g, *k): the same with the sides swapped
    Linear           weight (O, I): out = dim 0, in = dim 1
    HF Conv1D        weight (I, O): out = dim 1, in = dim 0 (its spec is in functional/hf_conv1d.py)
    norms, PReLU     one affine entry per channel (both sides)
    LayerNorm        the last normalised dim
    Embedding        weight (V, D): channels are D (dim 1)

On the block side of a grouped convolution channel ``c = b * (I/g) + j`` owns
``weight[b*O/g:(b+1)*O/g, j]``. The built-in layouts below are the
``channel_slices`` parts of the layer specs in :mod:`depgraph.layers.builtin`; a
custom layer gives its own in its :class:`~depgraph.layers.LayerSpec` (or with
:func:`register_channel_slices`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..layers.spec import find_layer_part, set_layer_part

__all__ = [
    "ChannelSlice",
    "register_channel_slices",
    "channel_slices",
    "conv_slices",
    "linear_slices",
    "per_channel_slices",
    "layer_norm_slices",
    "embedding_slices",
]


@dataclass(frozen=True)
class ChannelSlice:
    """A parameter and where its channels lie.

    Attributes:
        param: the parameter (or bare tensor).
        channel_dim: the dim indexed by channel.
        blocks: ``> 1`` on the block side of a grouped convolution (channel
            dim 1 holds one block's local positions; dim 0 has ``blocks`` rows blocks).
        is_bias: a bias (criteria score it only with ``bias=True``).
    """

    param: torch.Tensor
    channel_dim: int = 0
    blocks: int = 1
    is_bias: bool = False

    @property
    def num_channels(self) -> int:
        """How many channels the slice covers (``blocks`` times the channel dim on a grouped block side)."""
        return self.param.shape[self.channel_dim] * self.blocks

    def select(self, t: torch.Tensor, idxs: torch.Tensor) -> torch.Tensor:
        """Entries of ``t`` (shaped like ``param``) owned by channels ``idxs``: ``(len(idxs), ...)``."""
        idxs = idxs.to(t.device)
        if self.blocks == 1:
            full = idxs.numel() == t.shape[self.channel_dim] and bool(
                (idxs == torch.arange(idxs.numel(), device=t.device)).all()
            )
            picked = t if full else t.index_select(self.channel_dim, idxs)
            return picked.movedim(self.channel_dim, 0)
        # (g*a, b, *k) -> (g, a, b, *k) -> (g, b, a, *k) -> (g*b, a, *k): channel = block * b + j
        g, b = self.blocks, t.shape[1]
        a = t.shape[0] // g
        per_channel = t.reshape(g, a, b, *t.shape[2:]).transpose(1, 2).reshape(g * b, a, *t.shape[2:])
        return per_channel.index_select(0, idxs)

    def flat_positions(self, idxs: torch.Tensor) -> torch.Tensor:
        """Flat positions in ``param`` of the entries owned by ``idxs``: ``(len(idxs), k)``."""
        flat = torch.arange(self.param.numel(), device=self.param.device).reshape(self.param.shape)
        return self.select(flat, idxs).reshape(idxs.numel(), -1)


SliceFn = Callable[[nn.Module, str], list[ChannelSlice]]


def register_channel_slices(*types: type) -> Callable[[SliceFn], SliceFn]:
    """Decorator: ``fn(layer, side) -> list[ChannelSlice]`` for ``types``; returns ``fn``.

    The layout is the ``channel_slices`` part of each type's layer spec
    (:mod:`depgraph.layers`). Warns (``stacklevel=2``) when one is replaced.
    """

    def deco(fn: SliceFn) -> SliceFn:
        for t in types:
            set_layer_part(t, "channel_slices", fn, "channel layout")
        return fn

    return deco


def channel_slices(target: object, side: str, pruning_dim: int | None = None) -> list[ChannelSlice]:
    """Per-channel views of ``target``'s parameters on ``side`` (``"out"``/``"in"``).

    ``target`` is a module, or a bare parameter with the ``pruning_dim`` the
    graph couples. Unknown types give ``[]``: they add nothing to a score.
    """
    if isinstance(target, torch.Tensor):
        return [ChannelSlice(target, (pruning_dim or 0) % max(target.dim(), 1))]
    fn = find_layer_part(target, "channel_slices")
    return [] if fn is None else [s for s in fn(target, side) if s.param is not None]


def conv_slices(layer: nn.Module, side: str) -> list[ChannelSlice]:
    """Convolutions: the row side is weight dim 0, the other dim 1 in ``groups`` blocks; bias on out."""
    row_side = "in" if layer.transposed else "out"  # the side indexing weight dim 0
    if side == row_side:
        out = [ChannelSlice(layer.weight, 0)]
    else:
        out = [ChannelSlice(layer.weight, 1, blocks=layer.groups)]
    if side == "out" and layer.bias is not None:
        out.append(ChannelSlice(layer.bias, 0, is_bias=True))
    return out


def linear_slices(layer: nn.Linear, side: str) -> list[ChannelSlice]:
    """``nn.Linear``: weight rows (and bias) on out, weight columns on in."""
    if side == "in":
        return [ChannelSlice(layer.weight, 1)]
    return [ChannelSlice(layer.weight, 0), ChannelSlice(layer.bias, 0, is_bias=True)]


def per_channel_slices(layer: nn.Module, side: str) -> list[ChannelSlice]:
    """Norms and PReLU: one affine entry per channel, the same on both sides."""
    weight = getattr(layer, "weight", None)
    if isinstance(layer, nn.PReLU) and weight is not None and weight.numel() == 1:
        return []  # one shared slope: not per channel
    return [ChannelSlice(weight, 0), ChannelSlice(getattr(layer, "bias", None), 0, is_bias=True)]


def layer_norm_slices(layer: nn.Module, side: str) -> list[ChannelSlice]:
    """LayerNorm / RMSNorm: the last normalised dim of the affine weight and bias."""
    weight, bias = getattr(layer, "weight", None), getattr(layer, "bias", None)
    dim = weight.dim() - 1 if weight is not None else 0  # channels: the last normalised dim
    return [ChannelSlice(weight, dim), ChannelSlice(bias, dim, is_bias=True)]


def embedding_slices(layer: nn.Embedding, side: str) -> list[ChannelSlice]:
    """Embedding tables ``(V, D)``: channels are the columns."""
    return [ChannelSlice(layer.weight, 1)]
