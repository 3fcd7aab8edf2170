"""Pruning handler for LayerNorm and RMSNorm: the last normalised dim.

``normalized_shape`` may span several trailing dims, e.g. ``(C, H, W)``; only
the last one is treated as channels, since that is the one a following Linear
reads. The statistics are computed across those channels, so pruning changes
them (``mixes_channels``): the result is a valid layer, not an exact copy.
"""

from __future__ import annotations

import torch.nn as nn

from .._types import Indices
from ..errors import InvalidIndicesError
from .base import BasePruningFunc, describe_layer, keep_index, prune_tensor

__all__ = ["LayerNormPruner", "LayernormPruner"]


class LayerNormPruner(BasePruningFunc):
    """Prunes the last dim of ``normalized_shape``, with weight/bias when present.

    Example:
        >>> ln = nn.LayerNorm(6)
        >>> LayerNormPruner.INSTANCE.prune_out_channels(ln, [0, 5]).normalized_shape
        (4,)
    """

    names = ("layernorm", "rmsnorm",)

    TARGET_MODULES = nn.LayerNorm  # nn.RMSNorm is registered to this handler too (see accepts)
    mixes_channels = True

    def __init__(self, metrcis: object = None, pruning_dim: int = -1) -> None:
        # ``metrcis`` (sic) is the original's unused first parameter, kept for positional calls.
        super().__init__(pruning_dim=pruning_dim)

    def check(self, layer: nn.Module, idxs: Indices, *, to_output: bool = True) -> None:
        """Validate a prune of ``layer`` without changing it (the original's takes no ``to_output``).

        Raises:
            HandlerMismatchError: ``layer`` belongs to another handler.
            InvalidIndicesError: an index is out of range, or ``layer`` has no dim ``pruning_dim``.
            OverPruningError: every channel would be removed.
        """
        self.check_idxs(layer, idxs, "out")

    def prune_out_channels(self, layer: nn.Module, idxs: Indices) -> nn.Module:
        """Remove channels of normalised dim ``pruning_dim`` (the last one by default); in and out are the same.

        The graph always prunes the last dim, the one a following Linear reads; another
        ``pruning_dim`` is for direct calls, as in the original.

        Args:
            layer: The module to prune in place.
            idxs: Channel indices to remove, in any order; duplicates are ignored.

        Returns:
            ``layer`` itself, so calls can be chained.

        Raises:
            InvalidIndicesError: an index is negative or ``>= normalized_shape[pruning_dim]``.
            OverPruningError: every channel would be removed.
            HandlerMismatchError: ``layer`` belongs to another handler.
        """
        idxs = self.check_idxs(layer, idxs, "out")
        if idxs.numel():
            shape = tuple(layer.normalized_shape)
            dim = self._norm_dim(layer)  # weight / bias have shape normalized_shape
            keep = keep_index(shape[dim], idxs)
            prune_tensor(getattr(layer, "weight", None), dim, keep)
            prune_tensor(getattr(layer, "bias", None), dim, keep)
            layer.normalized_shape = (*shape[:dim], len(keep), *shape[dim + 1:])
        return layer

    def prune_in_channels(self, layer: nn.Module, idxs: Indices) -> nn.Module:
        """Same as :meth:`prune_out_channels`: the layer maps channel c to channel c."""
        return self.prune_out_channels(layer, idxs)

    def get_out_channels(self, layer: nn.Module) -> int:
        return layer.normalized_shape[self._norm_dim(layer)]

    def get_in_channels(self, layer: nn.Module) -> int:
        return self.get_out_channels(layer)

    def _norm_dim(self, layer: nn.Module) -> int:
        """``pruning_dim`` as a non-negative index into ``normalized_shape``."""
        n = len(layer.normalized_shape)
        if not -n <= self.pruning_dim < n:
            raise InvalidIndicesError(
                f"{describe_layer(layer)} normalises {n} dim(s) {tuple(layer.normalized_shape)}; "
                f"it has no dim {self.pruning_dim} to prune (pruning_dim must be in [{-n}, {n - 1}])"
            )
        return self.pruning_dim % n

    def in_channel_dim(self, layer: nn.Module, ndim: int) -> int:
        return ndim - 1

    def out_channel_dim(self, layer: nn.Module, ndim: int) -> int:
        return ndim - 1


LayernormPruner = LayerNormPruner  # spelling of the original API

LayerNormPruner.INSTANCE = LayerNormPruner()  # one stateless instance; its spec is in depgraph/layers/builtin.py
