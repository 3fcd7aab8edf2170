"""Pruning handler for bare tensors: parameters and buffers used directly by ops.

A model may use an ``nn.Parameter`` without a module around it (a class token,
a positional embedding, a learned scale). The graph finds which dim of it is
coupled to a channel dim and calls this handler with that ``dim``.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .._types import Indices
from ..errors import HandlerMismatchError, InvalidIndicesError
from .base import BasePruningFunc, describe_layer, keep_index, normalize_idxs, prune_tensor

__all__ = ["ParameterPruner"]


class ParameterPruner(BasePruningFunc):
    """Prunes one dim of a tensor in place, keeping the tensor object.

    Not registered by module type: the graph calls it for tensors it traced,
    always with the traced ``dim``. Called without ``dim``, it prunes
    ``pruning_dim`` (the last dim by default), as the original's handler does
    when nothing set its ``pruning_dim``; unlike the original, the graph never
    writes ``pruning_dim`` onto the shared instance.

    Example:
        >>> p = torch.nn.Parameter(torch.zeros(1, 5, 8))
        >>> ParameterPruner.INSTANCE.prune_out_channels(p, [0, 1]).shape
        torch.Size([1, 5, 6])
        >>> ParameterPruner.INSTANCE.prune_out_channels(p, [0], dim=1).shape
        torch.Size([1, 4, 6])
    """

    names = ("parameter",)

    TARGET_MODULES = nn.Parameter  # buffers are accepted too (see accepts)

    def __init__(self, pruning_dim: int = -1) -> None:
        super().__init__(pruning_dim=pruning_dim)

    def accepts(self, layer: object) -> bool:
        """Any tensor: a bare parameter or a buffer used directly by an op."""
        return isinstance(layer, torch.Tensor)

    def prune_out_channels(self, tensor: torch.Tensor, idxs: Indices, *, dim: int | None = None) -> torch.Tensor:
        """Remove ``idxs`` along ``dim`` of ``tensor``; ``.grad`` follows.

        Args:
            tensor: An ``nn.Parameter`` or buffer; it stays the same object.
            idxs: Indices along ``dim`` to remove, in any order.
            dim: The dim to prune (negative counts from the end); None: ``self.pruning_dim``.

        Returns:
            ``tensor`` itself (the original returns a new Parameter the caller must set back;
            assigning this one back is harmless).

        Raises:
            HandlerMismatchError: ``tensor`` is not a tensor.
            InvalidIndicesError: ``tensor`` has no dim ``dim``, or an index is
                negative or ``>= tensor.shape[dim]``.
            OverPruningError: every index along ``dim`` would be removed.
        """
        dim = self._check_dim(tensor, dim)
        idxs = normalize_idxs(idxs, tensor.shape[dim], tensor, f"dim-{dim}")
        if idxs.numel():
            prune_tensor(tensor, dim, keep_index(tensor.shape[dim], idxs))
        return tensor

    def prune_in_channels(self, tensor: torch.Tensor, idxs: Indices, *, dim: int | None = None) -> torch.Tensor:
        """Same as :meth:`prune_out_channels`: a bare tensor has just one set of channels."""
        return self.prune_out_channels(tensor, idxs, dim=dim)

    def get_out_channels(self, parameter: torch.Tensor, *, dim: int | None = None) -> int:
        """The size of ``dim`` (None: ``self.pruning_dim``)."""
        return parameter.shape[self._check_dim(parameter, dim)]

    def get_in_channels(self, parameter: torch.Tensor, *, dim: int | None = None) -> int:
        """Same as :meth:`get_out_channels`."""
        return self.get_out_channels(parameter, dim=dim)

    def _check_dim(self, tensor: torch.Tensor, dim: int | None) -> int:
        if not isinstance(tensor, torch.Tensor):
            raise HandlerMismatchError(
                f"ParameterPruner prunes tensors, not {describe_layer(tensor)}; "
                "use the pruning function for that module type"
            )
        dim = self.pruning_dim if dim is None else dim
        if not -tensor.ndim <= dim < tensor.ndim:
            raise InvalidIndicesError(
                f"cannot prune dim {dim} of a tensor of shape {tuple(tensor.shape)}; "
                f"dim must be in [{-tensor.ndim}, {tensor.ndim - 1}]"
            )
        return dim % tensor.ndim


ParameterPruner.INSTANCE = ParameterPruner()
