"""Pruning handler for ``nn.Linear``: weight (out, in), bias (out,)."""

from __future__ import annotations

import torch.nn as nn

from .._types import Indices
from .base import BasePruningFunc, keep_index, prune_tensor

__all__ = ["LinearPruner"]


class LinearPruner(BasePruningFunc):
    """Prunes ``nn.Linear`` and any layer laid out like it.

    Only ``weight`` (out, in), an optional ``bias`` (out,), ``in_features`` and
    ``out_features`` are used, so a custom layer with those attributes can reuse
    this handler (register an instance, or subclass it and set ``TARGET_MODULES``).
    Channels live in the last dim of the input and the output: ``(*, in) -> (*, out)``.
    A layer whose own handler ``acts_as`` ``nn.Linear`` (GPT-2's ``Conv1D``) is
    handed on to that handler, so ``prune_linear_*_channels`` work on it too.

    Example:
        >>> fc = nn.Linear(4, 3)
        >>> LinearPruner.INSTANCE.prune_out_channels(fc, [0])
        Linear(in_features=4, out_features=2, bias=True)
    """

    names = ("linear",)

    TARGET_MODULES = nn.Linear

    def prune_out_channels(self, layer: nn.Module, idxs: Indices) -> nn.Module:
        """Remove output features: weight rows and bias entries.

        Args:
            layer: The module to prune in place.
            idxs: Channel indices to remove, in any order; duplicates are ignored.

        Returns:
            ``layer`` itself, so calls can be chained.

        Raises:
            InvalidIndicesError: an index is negative or ``>= out_features``.
            OverPruningError: every output feature would be removed.
            HandlerMismatchError: ``layer`` belongs to another handler.
        """
        other = self.stand_in(layer)  # GPT-2's Conv1D: a Linear with its weight transposed
        if other is not None:
            return other.prune_out_channels(layer, idxs)
        idxs = self.check_idxs(layer, idxs, "out")
        if idxs.numel():
            keep = keep_index(layer.out_features, idxs)
            prune_tensor(layer.weight, 0, keep)
            prune_tensor(getattr(layer, "bias", None), 0, keep)
            layer.out_features = len(keep)
        return layer

    def prune_in_channels(self, layer: nn.Module, idxs: Indices) -> nn.Module:
        """Remove input features: weight columns. Errors as for :meth:`prune_out_channels`."""
        other = self.stand_in(layer)
        if other is not None:
            return other.prune_in_channels(layer, idxs)
        idxs = self.check_idxs(layer, idxs, "in")
        if idxs.numel():
            keep = keep_index(layer.in_features, idxs)
            prune_tensor(layer.weight, 1, keep)
            layer.in_features = len(keep)
        return layer

    def get_out_channels(self, layer: nn.Module) -> int:
        other = self.stand_in(layer)
        return other.get_out_channels(layer) if other is not None else layer.out_features

    def get_in_channels(self, layer: nn.Module) -> int:
        other = self.stand_in(layer)
        return other.get_in_channels(layer) if other is not None else layer.in_features

    def in_channel_dim(self, layer: nn.Module, ndim: int) -> int:
        return ndim - 1

    def out_channel_dim(self, layer: nn.Module, ndim: int) -> int:
        return ndim - 1

    def weight_layout(self, layer: nn.Module) -> tuple[int, int] | None:
        other = self.stand_in(layer)
        return other.weight_layout(layer) if other is not None else (0, 1)

LinearPruner.INSTANCE = LinearPruner()  # one stateless instance; its spec is in depgraph/layers/builtin.py
