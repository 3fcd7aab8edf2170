"""Pruning handler for ``nn.PReLU``.

A PReLU with one shared slope (``num_parameters == 1``) is element-wise: it
has no channels of its own, ``get_out_channels`` returns ``None`` and pruning
it is an accepted no-op. With one slope per channel (dim 1 of the input, as
for BatchNorm) the slope of each removed channel is removed.
"""

from __future__ import annotations

import sys

import torch.nn as nn

from .._types import Indices
from .base import BasePruningFunc, keep_index, normalize_idxs, prune_tensor

__all__ = ["PReLUPruner"]


class PReLUPruner(BasePruningFunc):
    """Prunes the per-channel slopes of ``nn.PReLU``.

    Example:
        >>> act = nn.PReLU(4)
        >>> PReLUPruner.INSTANCE.prune_out_channels(act, [0]).num_parameters
        3
    """

    names = ("prelu",)

    TARGET_MODULES = nn.PReLU

    def prune_out_channels(self, layer: nn.Module, idxs: Indices) -> nn.Module:
        """Remove the slopes of the given channels; a shared slope is left alone.

        Args:
            layer: The module to prune in place.
            idxs: Channel indices to remove, in any order; duplicates are ignored.

        Returns:
            ``layer`` itself, so calls can be chained.

        Raises:
            InvalidIndicesError: an index is negative, or ``>= num_parameters``
                for a per-channel PReLU.
            OverPruningError: every channel of a per-channel PReLU would be removed.
            HandlerMismatchError: ``layer`` belongs to another handler.
        """
        self.check_layer(layer)
        if getattr(layer, "num_parameters", None) == 1:
            normalize_idxs(idxs, sys.maxsize, layer, "out")  # still refuse malformed indices
            return layer
        idxs = self.check_idxs(layer, idxs, "out")
        if idxs.numel():
            keep = keep_index(layer.num_parameters, idxs)
            prune_tensor(layer.weight, 0, keep)
            layer.num_parameters = len(keep)
        return layer

    def prune_in_channels(self, layer: nn.Module, idxs: Indices) -> nn.Module:
        """Same as :meth:`prune_out_channels`."""
        return self.prune_out_channels(layer, idxs)

    def get_out_channels(self, layer: nn.Module) -> int | None:
        n = layer.num_parameters
        return None if n == 1 else n

    def get_in_channels(self, layer: nn.Module) -> int | None:
        return self.get_out_channels(layer)

PReLUPruner.INSTANCE = PReLUPruner()  # one stateless instance; its spec is in depgraph/layers/builtin.py
