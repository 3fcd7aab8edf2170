"""Pruning handler for ``nn.LSTM``, ``nn.GRU`` and ``nn.RNN``.

Parameters of layer ``l`` (suffix ``_reverse`` for the backward direction),
with ``H = hidden_size``, ``G`` gates (LSTM 4, GRU 3, RNN 1) and ``D``
directions::

    weight_ih_l{l}  (G*H, in_l)   rows: gate k of unit j at k*H + j
    weight_hh_l{l}  (G*H, H)      cols: previous hidden unit j
    bias_ih_l{l}, bias_hh_l{l}  (G*H,)
    in_0 = input_size;  in_l = D*H for l >= 1, laid out [forward H | backward H]

The out channels are the H hidden units, shared by every layer and direction.
The module's output has ``D*H`` features: out channel ``j`` appears at
positions ``j`` and ``H + j`` of the output's last dim when bidirectional.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .._types import Indices
from ..errors import UnsupportedOpError
from .base import BasePruningFunc, describe_layer, keep_index, prune_tensor

__all__ = ["LSTMPruner", "GRUPruner", "RNNPruner"]

_GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}


def _directions(layer: nn.RNNBase) -> tuple[str, ...]:
    return ("", "_reverse") if layer.bidirectional else ("",)


def _refresh(layer: nn.RNNBase) -> None:
    """Re-point the cached flat-weight list at the (same) parameters and re-flatten.

    The list holds the Parameter objects, which we keep, but cuDNN may have
    packed the old storages into one buffer; re-initialising packs the new ones.
    """
    if hasattr(layer, "_init_flat_weights"):
        layer._init_flat_weights()
    elif hasattr(layer, "flatten_parameters"):
        layer.flatten_parameters()


class LSTMPruner(BasePruningFunc):
    """Prunes hidden units (out) or input features (in) of LSTM / GRU / RNN.

    Example:
        >>> lstm = nn.LSTM(4, 6, num_layers=2, bidirectional=True)
        >>> LSTMPruner.INSTANCE.prune_out_channels(lstm, [0, 1])
        LSTM(4, 4, num_layers=2, bidirectional=True)
    """

    names = ("lstm", "gru", "rnn")

    TARGET_MODULES = nn.LSTM  # nn.GRU and nn.RNN are registered to this handler too (see accepts)
    # A removed unit also fed the others through the recurrence, so pruning it is
    # not the same as zeroing its output downstream.
    mixes_channels = False  # zeroed hidden units stay zero through the recurrence (h0 = 0)

    def prune_out_channels(self, layer: nn.Module, idxs: Indices) -> nn.Module:
        """Remove hidden units from every layer and direction.

        Args:
            layer: The module to prune in place.
            idxs: Channel indices to remove, in any order; duplicates are ignored.

        Returns:
            ``layer`` itself, so calls can be chained.

        Raises:
            InvalidIndicesError: an index is negative or ``>= hidden_size``.
            OverPruningError: every hidden unit would be removed.
            UnsupportedOpError: the layer has ``proj_size > 0``.
            HandlerMismatchError: ``layer`` belongs to another handler.
        """
        idxs = self.check_idxs(layer, idxs, "out")
        self._check_supported(layer)
        if idxs.numel() == 0:
            return layer
        h = layer.hidden_size
        keep = keep_index(h, idxs)
        gate_keep = torch.cat([keep + k * h for k in range(_GATES[layer.mode])])
        # input of layer l >= 1 is [forward H | backward H]
        upper_in_keep = torch.cat([keep + d * h for d in range(len(_directions(layer)))])
        for i in range(layer.num_layers):
            for sfx in _directions(layer):
                w_ih = getattr(layer, f"weight_ih_l{i}{sfx}")
                w_hh = getattr(layer, f"weight_hh_l{i}{sfx}")
                prune_tensor(w_ih, 0, gate_keep)
                if i > 0:
                    prune_tensor(w_ih, 1, upper_in_keep)
                prune_tensor(w_hh, 0, gate_keep)
                prune_tensor(w_hh, 1, keep)
                prune_tensor(getattr(layer, f"bias_ih_l{i}{sfx}", None), 0, gate_keep)
                prune_tensor(getattr(layer, f"bias_hh_l{i}{sfx}", None), 0, gate_keep)
        layer.hidden_size = len(keep)
        _refresh(layer)
        return layer

    def prune_in_channels(self, layer: nn.Module, idxs: Indices) -> nn.Module:
        """Remove input features (columns of the first layer's input weights).

        Raises:
            InvalidIndicesError: an index is negative or ``>= input_size``.
            OverPruningError: every input feature would be removed.
            UnsupportedOpError: the layer has ``proj_size > 0``.
        """
        idxs = self.check_idxs(layer, idxs, "in")
        self._check_supported(layer)
        if idxs.numel() == 0:
            return layer
        keep = keep_index(layer.input_size, idxs)
        for sfx in _directions(layer):
            prune_tensor(getattr(layer, f"weight_ih_l0{sfx}"), 1, keep)
        layer.input_size = len(keep)
        _refresh(layer)
        return layer

    def get_out_channels(self, layer: nn.Module) -> int:
        """``hidden_size``; the output itself is ``D * hidden_size`` wide (module docstring)."""
        return layer.hidden_size

    def get_in_channels(self, layer: nn.Module) -> int:
        return layer.input_size

    def in_channel_dim(self, layer: nn.Module, ndim: int) -> int:
        return ndim - 1

    def out_channel_dim(self, layer: nn.Module, ndim: int) -> int:
        return ndim - 1

    @staticmethod
    def _check_supported(layer: nn.Module) -> None:
        if getattr(layer, "proj_size", 0) > 0:
            raise UnsupportedOpError(
                f"{describe_layer(layer)} has proj_size={layer.proj_size}; pruning projected LSTMs is "
                "not supported, so add it to ignored_layers"
            )


GRUPruner = RNNPruner = LSTMPruner  # one handler serves all three

LSTMPruner.INSTANCE = LSTMPruner()  # one stateless instance; its spec is in depgraph/layers/builtin.py
