"""Pruning handler for ``nn.MultiheadAttention``: embedding dims and head dims.

Shapes (``E = embed_dim``, ``h = num_heads``, ``d = head_dim = E / h``)::

    in_proj_weight (3E, E)   rows [q | k | v], each E = h blocks of d; cols: input E
    in_proj_bias   (3E,)
    out_proj       Linear(E -> E): cols are the inner (head) dims, rows the output E
    bias_k, bias_v (1, 1, E): inner k / v dims

The module is pruned as one unit, the way the original API does it: removing
embedding position ``i`` removes input column ``i`` and output row ``i`` *and*
the inner dim ``i`` of q, k and v (rows ``i``, ``E + i``, ``2E + i``) together
with out_proj column ``i``. Inner dim ``i`` belongs to head ``i // d``, so every
head must lose the same number of dims; ``num_heads`` never changes.

Removing inner q/k dims changes the attention scores and the ``1/sqrt(d)``
scale, so the pruned layer is a valid, smaller layer, not an exact restriction
of the original output.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .._types import Indices
from ..errors import InvalidIndicesError
from ._blocks import split_blocks
from .base import BasePruningFunc, _describe, keep_index, prune_tensor, register_handler

__all__ = ["MultiheadAttentionPruner"]


@register_handler(nn.MultiheadAttention)
class MultiheadAttentionPruner(BasePruningFunc):
    """Prunes ``embed_dim`` of ``nn.MultiheadAttention`` (and its ``out_proj``).

    The in side is the query's last dim (and the key's / value's when
    ``kdim`` / ``vdim`` equal ``embed_dim``); the out side is the output's last
    dim. Both are the same ``embed_dim`` channels, so the two calls are equal.
    Treat the module as a leaf: ``out_proj`` is pruned here, not on its own.

    Example:
        >>> mha = nn.MultiheadAttention(8, 2)
        >>> MultiheadAttentionPruner.INSTANCE.prune_out_channels(mha, [0, 4]).head_dim
        3
    """

    TARGET_MODULES = (nn.MultiheadAttention,)
    mixes_channels = True  # scores and 1/sqrt(d) change: not the same as zeroing the dims

    def prune_out_channels(self, layer: nn.Module, idxs: Indices) -> nn.Module:
        """Remove embedding dims and the matching inner dims of every projection.

        Args:
            layer: The module to prune in place.
            idxs: Channel indices to remove, in any order; duplicates are ignored.

        Returns:
            ``layer`` itself, so calls can be chained.

        Raises:
            InvalidIndicesError: an index is out of range, the number removed is
                not a multiple of ``num_heads``, or the heads would lose different
                numbers of dims.
            OverPruningError: every embedding dim would be removed.
            HandlerMismatchError: ``layer`` belongs to another handler.
        """
        idxs = self.check_idxs(layer, idxs, "out")
        if idxs.numel() == 0:
            return layer
        self._check_heads(layer, idxs)
        e = layer.embed_dim
        keep = keep_index(e, idxs)
        qkv_keep = torch.cat([keep, keep + e, keep + 2 * e])  # rows of [q | k | v]
        if layer.in_proj_weight is not None:
            prune_tensor(layer.in_proj_weight, 0, qkv_keep)
            prune_tensor(layer.in_proj_weight, 1, keep)
        else:  # separate projections; key / value inputs keep their own widths
            for w, in_dim in ((layer.q_proj_weight, e), (layer.k_proj_weight, layer.kdim),
                              (layer.v_proj_weight, layer.vdim)):
                prune_tensor(w, 0, keep)
                if in_dim == e:
                    prune_tensor(w, 1, keep)
        prune_tensor(layer.in_proj_bias, 0, qkv_keep)
        prune_tensor(layer.bias_k, 2, keep)
        prune_tensor(layer.bias_v, 2, keep)
        out = layer.out_proj
        prune_tensor(out.weight, 0, keep)
        prune_tensor(out.weight, 1, keep)
        prune_tensor(out.bias, 0, keep)
        out.in_features = out.out_features = len(keep)
        layer.kdim = len(keep) if layer.kdim == e else layer.kdim
        layer.vdim = len(keep) if layer.vdim == e else layer.vdim
        layer.embed_dim = len(keep)
        layer.head_dim = len(keep) // layer.num_heads
        return layer

    def prune_in_channels(self, layer: nn.Module, idxs: Indices) -> nn.Module:
        """Same as :meth:`prune_out_channels`."""
        return self.prune_out_channels(layer, idxs)

    def get_out_channels(self, layer: nn.Module) -> int:
        return layer.embed_dim

    def get_in_channels(self, layer: nn.Module) -> int:
        return layer.embed_dim

    def in_channel_dim(self, layer: nn.Module, ndim: int) -> int:
        return ndim - 1

    def out_channel_dim(self, layer: nn.Module, ndim: int) -> int:
        return ndim - 1

    @staticmethod
    def _check_heads(layer: nn.Module, idxs: torch.Tensor) -> None:
        owner, e, h = _describe(layer), layer.embed_dim, layer.num_heads
        if idxs.numel() % h:
            raise InvalidIndicesError(
                f"{owner}: removing {idxs.numel()} of embed_dim={e} leaves {e - idxs.numel()}, "
                f"which num_heads={h} does not divide; remove a multiple of {h} dims"
            )
        split_blocks(idxs, layer.head_dim, h).equal_counts(owner, "head", allow_full=False)
