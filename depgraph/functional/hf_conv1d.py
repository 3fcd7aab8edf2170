"""Pruning handler for Hugging Face's ``Conv1D`` (GPT-2, GPT, ...): weight (in, out), bias (out,).

Despite its name, ``transformers.pytorch_utils.Conv1D`` is a linear layer,
``y = addmm(bias, x.view(-1, in), weight)``, whose weight is stored transposed
relative to ``nn.Linear``. Made a leaf with this handler it is one graph node
like a Linear (the pruner roots groups at it, criteria score it), instead of an
``addmm`` on two bare parameters.

The handler is registered for the type only once ``transformers.pytorch_utils``
has been imported by someone else (see :mod:`depgraph._lazy`): depgraph never
imports transformers, and a model holding a ``Conv1D`` cannot exist before it.
Its ``acts_as = nn.Linear`` lets ``root_module_types``/``target_types`` naming
``nn.Linear`` include it and ``tp.prune_linear_*_channels`` prune it.
"""

from __future__ import annotations

import sys
from types import ModuleType

import torch.nn as nn

from .._lazy import when_imported
from .._types import Indices
from ..layers.spec import LayerSpec, register_layer
from .base import BasePruningFunc, keep_index, prune_tensor, register_handler

__all__ = ["Conv1DPruner", "hf_conv1d_type", "is_hf_conv1d"]

_MODULE = "transformers.pytorch_utils"


def hf_conv1d_type() -> type | None:
    """transformers' ``Conv1D`` class if transformers has been imported, else None (never imports it)."""
    mod = sys.modules.get(_MODULE)
    return getattr(mod, "Conv1D", None) if mod is not None else None


def is_hf_conv1d(module: object) -> bool:
    """Whether ``module`` is a transformers ``Conv1D`` (weight laid out as (in, out))."""
    cls = hf_conv1d_type()
    return cls is not None and isinstance(module, cls)


@register_handler()
class Conv1DPruner(BasePruningFunc):
    """Prunes transformers' ``Conv1D``: out channels are weight dim 1 and the bias, in channels weight dim 0.

    ``nf`` (out) and, where the installed transformers has it, ``nx`` (in) are
    updated; widths are read from the weight, which older versions size alone.
    Channels live in the last dim of the input and the output, as for ``nn.Linear``.

    Example:
        >>> from transformers.pytorch_utils import Conv1D
        >>> layer = Conv1D(nf=6, nx=4)                  # weight (4, 6)
        >>> tp.prune_conv1d_out_channels(layer, [0, 5])
        Conv1D(nf=4, nx=4)
    """

    names = ("conv1d",)

    TARGET_MODULES: tuple[type, ...] = ()  # set to (Conv1D,) when transformers is imported
    acts_as = nn.Linear

    def prune_out_channels(self, layer: nn.Module, idxs: Indices) -> nn.Module:
        """Remove output features: weight columns (dim 1) and bias entries.

        Args:
            layer: The ``Conv1D`` to prune in place.
            idxs: Channel indices to remove, in any order; duplicates are ignored.

        Returns:
            ``layer`` itself.

        Raises:
            InvalidIndicesError: an index is negative or ``>= nf``.
            OverPruningError: every output feature would be removed.
            HandlerMismatchError: ``layer`` belongs to another handler.
        """
        idxs = self.check_idxs(layer, idxs, "out")
        if idxs.numel():
            keep = keep_index(self.get_out_channels(layer), idxs)
            prune_tensor(layer.weight, 1, keep)
            prune_tensor(getattr(layer, "bias", None), 0, keep)
            layer.nf = len(keep)  # forward reshapes its output to (..., nf)
        return layer

    def prune_in_channels(self, layer: nn.Module, idxs: Indices) -> nn.Module:
        """Remove input features: weight rows (dim 0). Errors as for :meth:`prune_out_channels`."""
        idxs = self.check_idxs(layer, idxs, "in")
        if idxs.numel():
            keep = keep_index(self.get_in_channels(layer), idxs)
            prune_tensor(layer.weight, 0, keep)
            if hasattr(layer, "nx"):
                layer.nx = len(keep)
        return layer

    def get_out_channels(self, layer: nn.Module) -> int:
        return int(layer.weight.shape[1])

    def get_in_channels(self, layer: nn.Module) -> int:
        return int(layer.weight.shape[0])

    def in_channel_dim(self, layer: nn.Module, ndim: int) -> int:
        return ndim - 1

    def out_channel_dim(self, layer: nn.Module, ndim: int) -> int:
        return ndim - 1

    def weight_layout(self, layer: nn.Module) -> tuple[int, int]:
        return (1, 0)  # weight (in, out)


def _register(mod: ModuleType) -> bool:
    cls = getattr(mod, "Conv1D", None)
    if cls is None:  # the module is still being initialised: try at the next lookup
        return False
    Conv1DPruner.TARGET_MODULES = (cls,)
    register_layer(cls)(Conv1DSpec)
    return True


class Conv1DSpec(LayerSpec):
    """transformers' ``Conv1D``: pruned by :class:`Conv1DPruner`, coupled and counted like ``nn.Linear``."""

    handler = Conv1DPruner.INSTANCE

    def dim_rule(self, op, ctx) -> None:  # noqa: ANN001 - see depgraph.dims.registry.DimRule
        from ..dims.modules import linear_module_rule  # imported at lookup time: dims imports functional

        linear_module_rule(op, ctx)

    def channel_slices(self, layer: nn.Module, side: str) -> list:
        from ..importance.channels import ChannelSlice

        if side == "in":
            return [ChannelSlice(layer.weight, 0)]
        return [ChannelSlice(layer.weight, 1), ChannelSlice(getattr(layer, "bias", None), 0, is_bias=True)]


when_imported(_MODULE, _register)
