"""Pruning handler for ``nn.GroupNorm``.

Channels form ``num_groups`` contiguous groups of ``C / G``; statistics are
computed per group. A group removed whole decreases ``num_groups``. The other
groups must keep equal sizes, and since the module stores only ``num_groups``
(not which channel went where) we also require them to lose the same local
positions, so that channel ``i`` of a surviving group keeps its place.
"""

from __future__ import annotations

import torch.nn as nn

from .._types import Indices
from ._blocks import split_blocks
from .base import BasePruningFunc, describe_layer, keep_index, prune_tensor

__all__ = ["GroupNormPruner"]


class GroupNormPruner(BasePruningFunc):
    """Prunes ``nn.GroupNorm``: whole groups, or the same positions in every group.

    Example:
        >>> gn = nn.GroupNorm(3, 6)
        >>> gn = GroupNormPruner.INSTANCE.prune_out_channels(gn, [2, 3])  # group 1
        >>> gn.num_groups, gn.num_channels
        (2, 4)
    """

    names = ("groupnorm",)

    TARGET_MODULES = (nn.GroupNorm,)
    mixes_channels = True

    def prune_out_channels(self, layer: nn.Module, idxs: Indices) -> nn.Module:
        """Remove channels; in and out are the same.

        Args:
            layer: The module to prune in place.
            idxs: Channel indices to remove, in any order; duplicates are ignored.

        Returns:
            ``layer`` itself, so calls can be chained.

        Raises:
            InvalidIndicesError: an index is out of range, or the surviving groups
                would lose different local positions.
            OverPruningError: every channel would be removed.
            HandlerMismatchError: ``layer`` belongs to another handler.
        """
        idxs = self.check_idxs(layer, idxs, "out")
        if idxs.numel() == 0:
            return layer
        c, g = layer.num_channels, layer.num_groups
        split = split_blocks(idxs, c // g, g)
        split.equal_positions(describe_layer(layer), "group")
        keep = keep_index(c, idxs)
        prune_tensor(layer.weight, 0, keep)
        prune_tensor(layer.bias, 0, keep)
        layer.num_channels = len(keep)
        layer.num_groups = g - len(split.full)
        return layer

    def prune_in_channels(self, layer: nn.Module, idxs: Indices) -> nn.Module:
        """Same as :meth:`prune_out_channels`."""
        return self.prune_out_channels(layer, idxs)

    def get_out_channels(self, layer: nn.Module) -> int:
        return layer.num_channels

    def get_in_channels(self, layer: nn.Module) -> int:
        return layer.num_channels

    def get_in_channel_groups(self, layer: nn.Module) -> int:
        return layer.num_groups

    def get_out_channel_groups(self, layer: nn.Module) -> int:
        return layer.num_groups

GroupNormPruner.INSTANCE = GroupNormPruner()  # one stateless instance; its spec is in depgraph/layers/builtin.py
