"""Pruning handler for ``nn.Embedding`` and ``nn.EmbeddingBag``.

The weight is ``(num_embeddings, embedding_dim)``; the channels are the
embedding dims (weight dim 1, the last dim of the output). The vocabulary is
never pruned, so ``padding_idx`` and the input indices stay valid. The input
holds token ids, not channels, which is why in and out are the same channels.
"""

from __future__ import annotations

import torch.nn as nn

from .._types import Indices
from .base import BasePruningFunc, keep_index, prune_tensor

__all__ = ["EmbeddingPruner"]


class EmbeddingPruner(BasePruningFunc):
    """Prunes embedding dims of ``nn.Embedding`` / ``nn.EmbeddingBag``.

    Example:
        >>> emb = nn.Embedding(10, 4)
        >>> EmbeddingPruner.INSTANCE.prune_out_channels(emb, [3])
        Embedding(10, 3)
    """

    names = ("embedding",)

    TARGET_MODULES = nn.Embedding  # nn.EmbeddingBag is registered to this handler too (see accepts)

    def prune_out_channels(self, layer: nn.Module, idxs: Indices) -> nn.Module:
        """Remove embedding dims (weight columns).

        Args:
            layer: The module to prune in place.
            idxs: Channel indices to remove, in any order; duplicates are ignored.

        Returns:
            ``layer`` itself, so calls can be chained.

        Raises:
            InvalidIndicesError: an index is negative or ``>= embedding_dim``.
            OverPruningError: every embedding dim would be removed.
            HandlerMismatchError: ``layer`` belongs to another handler.
        """
        idxs = self.check_idxs(layer, idxs, "out")
        if idxs.numel():
            keep = keep_index(layer.embedding_dim, idxs)
            prune_tensor(layer.weight, 1, keep)
            layer.embedding_dim = len(keep)
        return layer

    def prune_in_channels(self, layer: nn.Module, idxs: Indices) -> nn.Module:
        """Same as :meth:`prune_out_channels` (the input has no channels)."""
        return self.prune_out_channels(layer, idxs)

    def get_out_channels(self, layer: nn.Module) -> int:
        return layer.embedding_dim

    def get_in_channels(self, layer: nn.Module) -> int:
        return layer.embedding_dim

    def in_channel_dim(self, layer: nn.Module, ndim: int) -> int:
        return ndim - 1

    def out_channel_dim(self, layer: nn.Module, ndim: int) -> int:
        return ndim - 1

EmbeddingPruner.INSTANCE = EmbeddingPruner()  # one stateless instance; its spec is in depgraph/layers/builtin.py
