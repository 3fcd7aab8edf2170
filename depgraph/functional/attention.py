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
from .base import BasePruningFunc, describe_layer, keep_index, normalize_idxs, prune_tensor
from .pruned_mha import PrunedMultiheadAttention, set_kept_heads
from .pruned_mha import kept_heads as kept_heads_of

__all__ = ["MultiheadAttentionPruner"]


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

    names = ("multihead_attention",)

    TARGET_MODULES = nn.MultiheadAttention
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
        if isinstance(layer, PrunedMultiheadAttention):  # heads removed: inner width is its own
            return self._prune_embed_only(layer, keep_index(layer.embed_dim, idxs))
        self._check_heads(layer, idxs)
        e = layer.embed_dim
        keep = keep_index(e, idxs)
        _record_inner(layer, e, keep)
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

    def prune_heads(self, layer: nn.Module, heads: Indices) -> nn.Module:
        """Remove whole heads; ``embed_dim`` and ``head_dim`` stay, ``num_heads`` shrinks.

        The module becomes a :class:`PrunedMultiheadAttention` (its inner width
        ``num_heads * head_dim`` is then below ``embed_dim``). Exact: the result
        equals the original with those heads' q/k/v rows and output columns zeroed.

        Raises:
            InvalidIndicesError: a head index is out of range.
            OverPruningError: every head would be removed.
        """
        self.check_layer(layer)
        heads = normalize_idxs(heads, layer.num_heads, layer, "head")
        if heads.numel() == 0:
            return layer
        h, d = layer.num_heads, layer.head_dim
        inner = h * d
        kept_heads = keep_index(h, heads)
        keep = (kept_heads[:, None] * d + torch.arange(d)).flatten()  # inner positions of kept heads
        if layer.in_proj_weight is not None:
            prune_tensor(layer.in_proj_weight, 0, torch.cat([keep, keep + inner, keep + 2 * inner]))
        else:
            for w in (layer.q_proj_weight, layer.k_proj_weight, layer.v_proj_weight):
                prune_tensor(w, 0, keep)
        if layer.in_proj_bias is not None:
            prune_tensor(layer.in_proj_bias, 0, torch.cat([keep, keep + inner, keep + 2 * inner]))
        prune_tensor(layer.bias_k, 2, keep)
        prune_tensor(layer.bias_v, 2, keep)
        prune_tensor(layer.out_proj.weight, 1, keep)
        layer.out_proj.in_features = keep.numel()
        _record_inner(layer, inner, keep)
        set_kept_heads(layer, kept_heads_of(layer)[kept_heads])
        if not isinstance(layer, PrunedMultiheadAttention):
            layer.__class__ = PrunedMultiheadAttention
        layer.num_heads = int(kept_heads.numel())
        return layer

    @staticmethod
    def zero_removed(layer: nn.Module, kept: dict) -> None:
        """Zero, in an unpruned ``layer``, every entry a pruned copy lost; what ``tp.verify`` compares with.

        ``kept``: original positions still present, ``"out"``/``"in"`` (embedding dims) and
        ``"inner"`` (q/k/v rows and output columns; head dims and whole heads alike).
        """
        e = layer.embed_dim
        inner = layer.out_proj.in_features
        embed = kept.get("out", kept.get("in"))
        gone_e = keep_index(e, torch.as_tensor(embed, dtype=torch.long)) if embed is not None else None
        gone = keep_index(inner, torch.as_tensor(kept["inner"], dtype=torch.long)) if "inner" in kept else None
        with torch.no_grad():
            weights = ([layer.in_proj_weight] if layer.in_proj_weight is not None else
                       [layer.q_proj_weight, layer.k_proj_weight, layer.v_proj_weight])
            if gone_e is not None:
                for w in weights:
                    if w.shape[1] == e:
                        w[:, gone_e] = 0
                layer.out_proj.weight[gone_e] = 0
                if layer.out_proj.bias is not None:
                    layer.out_proj.bias[gone_e] = 0
            if gone is not None:
                rows = torch.cat([gone, gone + inner, gone + 2 * inner])
                if layer.in_proj_weight is not None:
                    layer.in_proj_weight[rows] = 0
                else:
                    for w in weights:
                        w[gone] = 0
                if layer.in_proj_bias is not None:
                    layer.in_proj_bias[rows] = 0
                for t in (layer.bias_k, layer.bias_v):
                    if t is not None:
                        t[..., gone] = 0
                layer.out_proj.weight[:, gone] = 0

    @staticmethod
    def _prune_embed_only(layer: nn.Module, keep: torch.Tensor) -> nn.Module:
        """A head-pruned module: embedding dims are input columns and output rows only."""
        e = layer.embed_dim
        if layer.in_proj_weight is not None:
            prune_tensor(layer.in_proj_weight, 1, keep)
        else:
            for w, in_dim in ((layer.q_proj_weight, e), (layer.k_proj_weight, layer.kdim),
                              (layer.v_proj_weight, layer.vdim)):
                if in_dim == e:
                    prune_tensor(w, 1, keep)
        out = layer.out_proj
        prune_tensor(out.weight, 0, keep)
        prune_tensor(out.bias, 0, keep)
        out.out_features = len(keep)
        layer.kdim = len(keep) if layer.kdim == e else layer.kdim
        layer.vdim = len(keep) if layer.vdim == e else layer.vdim
        layer.embed_dim = len(keep)
        return layer

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
        owner, e, h = describe_layer(layer), layer.embed_dim, layer.num_heads
        if idxs.numel() % h:
            raise InvalidIndicesError(
                f"{owner}: removing {idxs.numel()} of embed_dim={e} leaves {e - idxs.numel()}, "
                f"which num_heads={h} does not divide; remove a multiple of {h} dims"
            )
        split_blocks(idxs, layer.head_dim, h).equal_counts(owner, "head", allow_full=False)


def _record_inner(layer: nn.Module, width: int, keep: torch.Tensor) -> None:
    """Original inner (q/k/v row, out_proj column) positions still present, for ``tp.verify``."""
    kept = layer.__dict__.get("_depgraph_kept", {})
    base = kept.get("inner")
    if base is None or base.numel() != width:
        base = torch.arange(width)
    # a new dict: a prune rolled back restores the old one (snapshots copy __dict__ shallowly);
    # Transient: deep-copied with the layer, never pickled with it (see dependency/records.py)
    from ..dependency.records import Transient  # lazy: the dependency package imports the handlers

    layer.__dict__["_depgraph_kept"] = Transient({**kept, "inner": base[keep.cpu()]})


MultiheadAttentionPruner.INSTANCE = MultiheadAttentionPruner()  # one stateless instance; its spec is in depgraph/layers/builtin.py
