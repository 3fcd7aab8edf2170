"""Pruning handlers for convolutions, grouped and transposed ones included.

Weight layouts (``g = groups``)::

    ConvNd           weight (out, in/g, *k)   bias (out,)
    ConvTransposeNd  weight (in, out/g, *k)   bias (out,)

Both sides of a grouped conv are ``g`` contiguous blocks, and block ``k`` of the
input feeds only block ``k`` of the output. One side indexes weight dim 0 (the
*row* side: ``out`` for ConvNd, ``in`` for ConvTransposeNd); the other indexes
a local position inside every block through weight dim 1 (the *local* side).

* Row side: each row belongs to one block, so surviving blocks need only lose
  the same *number* of rows. Every block removed whole decreases ``groups``.
* Local side: dim 1 is shared by all blocks, so surviving blocks must lose the
  same local *positions*; a block removed whole changes no weight (its rows go
  with the row-side call) and leaves ``groups`` alone.

Removing whole groups therefore takes both calls, one per side. They may come
in either order: the row side reads its block size from ``groups`` (which only
it changes) and the local side from ``weight.shape[1]`` (which only it
changes). In between, the layer is half-pruned and must not be run. Each call
checks that the two sides agree on how many groups were removed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from .._types import Indices
from ..errors import HandlerMismatchError, InvalidIndicesError
from ._blocks import split_blocks
from .base import BasePruningFunc, describe_layer, keep_index, prune_tensor

__all__ = ["ConvPruner", "DepthwiseConvPruner"]


@dataclass(frozen=True)
class _ConvEdit:
    """What one pruning call changes, computed and checked before anything changes."""

    side: str  # "out" or "in"
    channels: int  # the new out_channels / in_channels
    groups: int
    weight_dim: int
    weight_keep: torch.Tensor | None  # None: this call leaves the weight alone
    bias_keep: torch.Tensor | None


def _row_side(layer: nn.Module) -> str:
    return "in" if getattr(layer, "transposed", False) else "out"


def _channels(layer: nn.Module, side: str) -> int:
    return layer.out_channels if side == "out" else layer.in_channels


def _plan(layer: nn.Module, idxs: torch.Tensor, side: str) -> _ConvEdit:
    n = _channels(layer, side)
    bias_keep = keep_index(n, idxs) if side == "out" and layer.bias is not None else None
    if side == _row_side(layer):
        return _plan_rows(layer, idxs, side, n, bias_keep)
    return _plan_local(layer, idxs, side, n, bias_keep)


def _plan_rows(layer: nn.Module, idxs: torch.Tensor, side: str, n: int, bias_keep) -> _ConvEdit:
    owner, g = describe_layer(layer), layer.groups
    if n % g:
        raise InvalidIndicesError(
            f"{owner}: its {n} {side} channels do not split into {g} groups; "
            "it looks pruned on one side only, so finish that first"
        )
    split = split_blocks(idxs, n // g, g)
    split.equal_counts(owner, "group")
    new_groups = g - len(split.full)
    local = "out" if side == "in" else "in"
    local_groups = _channels(layer, local) // layer.weight.shape[1]
    if local_groups not in (g, new_groups):  # local side: not yet pruned / already pruned
        raise InvalidIndicesError(
            f"{owner}: these {side} indices remove {len(split.full)} of its {g} groups whole, but its "
            f"{local} channels were already pruned to {local_groups} groups; both sides must remove "
            "the same groups"
        )
    keep = bias_keep if bias_keep is not None else keep_index(n, idxs)  # the bias is on this side: same keep
    return _ConvEdit(side, n - idxs.numel(), new_groups, 0, keep, bias_keep)


def _plan_local(layer: nn.Module, idxs: torch.Tensor, side: str, n: int, bias_keep) -> _ConvEdit:
    owner, b = describe_layer(layer), layer.weight.shape[1]
    if n % b:
        raise InvalidIndicesError(
            f"{owner}: its {n} {side} channels do not split into groups of {b}; "
            "it looks pruned on one side only, so finish that first"
        )
    split = split_blocks(idxs, b, n // b)
    positions = split.equal_positions(owner, "group")
    new_blocks = split.num_blocks - len(split.full)
    if layer.groups not in (split.num_blocks, new_blocks):  # row side: not yet / already pruned
        raise InvalidIndicesError(
            f"{owner}: these {side} indices remove {len(split.full)} of its {split.num_blocks} groups "
            f"whole, but it has {layer.groups} groups now; both sides must remove the same groups"
        )
    if not positions:
        keep = None
    elif split.num_blocks == 1:  # the positions are the indices themselves (sorted, unique)
        keep = keep_index(b, idxs)
    else:
        keep = keep_index(b, torch.as_tensor(positions, dtype=torch.long))
    return _ConvEdit(side, n - idxs.numel(), layer.groups, 1, keep, bias_keep)


def _apply(layer: nn.Module, edit: _ConvEdit) -> None:
    if edit.weight_keep is not None:
        prune_tensor(layer.weight, edit.weight_dim, edit.weight_keep)
    if edit.bias_keep is not None:
        prune_tensor(layer.bias, 0, edit.bias_keep)
    layer.groups = edit.groups
    setattr(layer, f"{edit.side}_channels", edit.channels)


class ConvPruner(BasePruningFunc):
    """Prunes ``nn.Conv{1,2,3}d`` and ``nn.ConvTranspose{1,2,3}d`` (see the module docstring).

    Example:
        >>> conv = nn.Conv2d(8, 12, 3, groups=4)
        >>> _ = ConvPruner.INSTANCE.prune_out_channels(conv, [3, 4, 5])  # group 1, row side
        >>> _ = ConvPruner.INSTANCE.prune_in_channels(conv, [2, 3])      # group 1, local side
        >>> conv
        Conv2d(6, 9, kernel_size=(3, 3), stride=(1, 1), groups=3)
    """

    names = ("conv",)

    TARGET_MODULES = nn.modules.conv._ConvNd
    #: The original's spelling on its conv handlers (where it left ``TARGET_MODULES`` unset).
    TARGET_MODULE = nn.modules.conv._ConvNd

    def prune_out_channels(self, layer: nn.Module, idxs: Indices) -> nn.Module:
        """Remove output channels (and their bias entries).

        Args:
            layer: The module to prune in place.
            idxs: Channel indices to remove, in any order; duplicates are ignored.

        Returns:
            ``layer`` itself, so calls can be chained.

        Raises:
            InvalidIndicesError: the indices are invalid, or would leave the groups
                of a grouped conv unequal (see the module docstring).
            OverPruningError: every output channel would be removed.
            HandlerMismatchError: ``layer`` is not a convolution.
        """
        return self._prune(layer, idxs, "out")

    def prune_in_channels(self, layer: nn.Module, idxs: Indices) -> nn.Module:
        """Remove input channels; same rules and errors as :meth:`prune_out_channels`."""
        return self._prune(layer, idxs, "in")

    def _prune(self, layer: nn.Module, idxs: Indices, side: str) -> nn.Module:
        idxs = self.check_idxs(layer, idxs, side)
        if idxs.numel():
            _apply(layer, _plan(layer, idxs, side))
        return layer

    def get_out_channels(self, layer: nn.Module) -> int:
        return layer.out_channels

    def get_in_channels(self, layer: nn.Module) -> int:
        return layer.in_channels

    def get_in_channel_groups(self, layer: nn.Module) -> int:
        return layer.groups

    def get_out_channel_groups(self, layer: nn.Module) -> int:
        return layer.groups

    def in_channel_dim(self, layer: nn.Module, ndim: int) -> int:
        # Unbatched input (C, *spatial) has one dim more than the kernel.
        return 0 if ndim == len(layer.kernel_size) + 1 else 1

    def weight_layout(self, layer: nn.Module) -> tuple[int, int] | None:
        # weight (O, I/g, *k); a transposed conv scatters its inputs instead: not measured
        return None if layer.transposed else (0, 1)

    out_channel_dim = in_channel_dim


class DepthwiseConvPruner(ConvPruner):
    """Prunes a depthwise conv (``groups == in_channels``) on both sides at once.

    Input channel ``c`` owns output block ``c`` (``out_channels // groups``
    channels, the depth multiplier). Removing an input channel removes its output
    block and one group; removing output channels removes the groups they empty
    and, from the other groups, equal numbers of outputs. This is for standalone
    use; the dependency graph uses :class:`ConvPruner` and calls each side itself.
    """

    names = ("depthwise_conv",)

    def prune_out_channels(self, layer: nn.Module, idxs: Indices) -> nn.Module:
        """Remove output channels, and the input channels (groups) left with no output.

        Raises:
            HandlerMismatchError: ``layer`` is not a depthwise convolution.
            InvalidIndicesError: as for :meth:`ConvPruner.prune_out_channels`.
        """
        idxs = self.check_idxs(layer, idxs, "out")
        self._check_depthwise(layer)
        if idxs.numel() == 0:
            return layer
        g = layer.groups
        gone = split_blocks(idxs, layer.out_channels // g, g).full
        _apply(layer, _plan(layer, idxs, "out"))
        # Cannot fail once the out side passed: each input channel is a group of
        # one, so the in side only removes the groups the out side emptied.
        _apply(layer, _plan(layer, torch.as_tensor(gone, dtype=torch.long), "in"))
        return layer

    def prune_in_channels(self, layer: nn.Module, idxs: Indices) -> nn.Module:
        """Remove input channels together with their output blocks and groups."""
        idxs = self.check_idxs(layer, idxs, "in")
        self._check_depthwise(layer)
        m = layer.out_channels // layer.groups
        # in channel c -> out channels c*m .. c*m + m-1
        out_idxs = (idxs[:, None] * m + torch.arange(m)).flatten()
        return self.prune_out_channels(layer, out_idxs)

    def _check_depthwise(self, layer: nn.Module) -> None:
        if layer.groups != layer.in_channels:
            raise HandlerMismatchError(
                f"{describe_layer(layer)} has groups={layer.groups} and in_channels={layer.in_channels}, "
                "so it is not depthwise; use prune_conv_out_channels / prune_conv_in_channels"
            )


DepthwiseConvPruner.INSTANCE = DepthwiseConvPruner()  # not registered: ConvPruner owns the types

ConvPruner.INSTANCE = ConvPruner()  # one stateless instance; its spec is in depgraph/layers/builtin.py
