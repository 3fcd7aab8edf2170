"""Pruning handlers for per-channel normalisations: BatchNorm and InstanceNorm.

Each channel has its own affine ``weight`` / ``bias`` entry and its own running
statistics, so removing a channel removes its entry from each of them. The
channels are not mixed, so the in and out sides are the same channels.
"""

from __future__ import annotations

import torch.nn as nn

from .._types import Indices
from .base import BasePruningFunc, keep_index, prune_tensor

__all__ = ["BatchNormPruner", "BatchnormPruner", "InstanceNormPruner"]

#: The per-channel tensors of ``_NormBase`` modules; absent ones are ``None``.
_PER_CHANNEL = ("weight", "bias", "running_mean", "running_var")


class _PerChannelNormPruner(BasePruningFunc):
    """Shared logic: prune every per-channel tensor and ``num_features``."""

    def prune_out_channels(self, layer: nn.Module, idxs: Indices) -> nn.Module:
        """Remove channels from every per-channel tensor; in and out are the same.

        Args:
            layer: The module to prune in place.
            idxs: Channel indices to remove, in any order; duplicates are ignored.

        Returns:
            ``layer`` itself, so calls can be chained.

        Raises:
            InvalidIndicesError: an index is negative or ``>= num_features``.
            OverPruningError: every channel would be removed.
            HandlerMismatchError: ``layer`` belongs to another handler.
        """
        idxs = self.check_idxs(layer, idxs, "out")
        if idxs.numel():
            keep = keep_index(self.get_out_channels(layer), idxs)
            for name in _PER_CHANNEL:
                prune_tensor(getattr(layer, name, None), 0, keep)
            if hasattr(layer, "num_features"):
                layer.num_features = len(keep)
        return layer

    def prune_in_channels(self, layer: nn.Module, idxs: Indices) -> nn.Module:
        """Same as :meth:`prune_out_channels`: the layer maps channel c to channel c."""
        return self.prune_out_channels(layer, idxs)

    def get_out_channels(self, layer: nn.Module) -> int:
        # Modules without ``num_features`` (torchvision's FrozenBatchNorm2d) still
        # carry one running-mean entry per channel.
        n = getattr(layer, "num_features", None)
        return n if n is not None else layer.running_mean.shape[0]

    def get_in_channels(self, layer: nn.Module) -> int:
        return self.get_out_channels(layer)


class BatchNormPruner(_PerChannelNormPruner):
    """Prunes BatchNorm{1,2,3}d and SyncBatchNorm; channels are dim 1 of ``(N, C, *)``.

    Example:
        >>> bn = nn.BatchNorm2d(4)
        >>> BatchNormPruner.INSTANCE.prune_out_channels(bn, [1, 2]).running_mean.shape
        torch.Size([2])
    """

    names = ("batchnorm",)

    TARGET_MODULES = nn.modules.batchnorm._BatchNorm  # BatchNorm{1,2,3}d, SyncBatchNorm


class InstanceNormPruner(_PerChannelNormPruner):
    """Prunes InstanceNorm{1,2,3}d; ``num_features`` changes even without affine params.

    Example:
        >>> norm = nn.InstanceNorm1d(3, affine=True)
        >>> InstanceNormPruner.INSTANCE.prune_out_channels(norm, [0]).weight.shape
        torch.Size([2])
    """

    names = ("instancenorm",)

    TARGET_MODULES = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)

    def in_channel_dim(self, layer: nn.Module, ndim: int) -> int:
        # Unbatched input (C, *spatial) is accepted too; there channels are dim 0.
        return 0 if ndim == layer._get_no_batch_dim() else 1

    out_channel_dim = in_channel_dim


BatchnormPruner = BatchNormPruner  # spelling of the original API

BatchNormPruner.INSTANCE = BatchNormPruner()  # one stateless instance; its spec is in depgraph/layers/builtin.py
InstanceNormPruner.INSTANCE = InstanceNormPruner()  # one stateless instance; its spec is in depgraph/layers/builtin.py
