"""Pruning handler for LayerNorm and RMSNorm: the last normalised dim.

``normalized_shape`` may span several trailing dims, e.g. ``(C, H, W)``; only
the last one is treated as channels, since that is the one a following Linear
reads. The statistics are computed across those channels, so pruning changes
them (``mixes_channels``): the result is a valid layer, not an exact copy.
"""

from __future__ import annotations

import torch.nn as nn

from .._types import Indices
from .base import BasePruningFunc, keep_index, prune_tensor

__all__ = ["LayerNormPruner", "LayernormPruner"]

_TYPES: tuple[type[nn.Module], ...] = (nn.LayerNorm,)
if hasattr(nn, "RMSNorm"):  # torch >= 2.4
    _TYPES += (nn.RMSNorm,)


class LayerNormPruner(BasePruningFunc):
    """Prunes the last dim of ``normalized_shape``, with weight/bias when present.

    Example:
        >>> ln = nn.LayerNorm(6)
        >>> LayerNormPruner.INSTANCE.prune_out_channels(ln, [0, 5]).normalized_shape
        (4,)
    """

    names = ("layernorm", "rmsnorm",)

    TARGET_MODULES = _TYPES
    mixes_channels = True

    def prune_out_channels(self, layer: nn.Module, idxs: Indices) -> nn.Module:
        """Remove channels of the last normalised dim; in and out are the same.

        Args:
            layer: The module to prune in place.
            idxs: Channel indices to remove, in any order; duplicates are ignored.

        Returns:
            ``layer`` itself, so calls can be chained.

        Raises:
            InvalidIndicesError: an index is negative or ``>= normalized_shape[-1]``.
            OverPruningError: every channel would be removed.
            HandlerMismatchError: ``layer`` belongs to another handler.
        """
        idxs = self.check_idxs(layer, idxs, "out")
        if idxs.numel():
            shape = tuple(layer.normalized_shape)
            keep = keep_index(shape[-1], idxs)
            dim = len(shape) - 1  # weight / bias have shape normalized_shape
            prune_tensor(getattr(layer, "weight", None), dim, keep)
            prune_tensor(getattr(layer, "bias", None), dim, keep)
            layer.normalized_shape = (*shape[:-1], len(keep))
        return layer

    def prune_in_channels(self, layer: nn.Module, idxs: Indices) -> nn.Module:
        """Same as :meth:`prune_out_channels`: the layer maps channel c to channel c."""
        return self.prune_out_channels(layer, idxs)

    def get_out_channels(self, layer: nn.Module) -> int:
        return layer.normalized_shape[-1]

    def get_in_channels(self, layer: nn.Module) -> int:
        return layer.normalized_shape[-1]

    def in_channel_dim(self, layer: nn.Module, ndim: int) -> int:
        return ndim - 1

    def out_channel_dim(self, layer: nn.Module, ndim: int) -> int:
        return ndim - 1


LayernormPruner = LayerNormPruner  # spelling of the original API

LayerNormPruner.INSTANCE = LayerNormPruner()  # one stateless instance; its spec is in depgraph/layers/builtin.py
