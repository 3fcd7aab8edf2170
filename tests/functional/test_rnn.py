"""Tests for depgraph/functional/rnn.py: LSTM, GRU and RNN, multi-layer and bidirectional."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from depgraph.errors import HandlerMismatchError, InvalidIndicesError, OverPruningError, UnsupportedOpError
from depgraph.functional import (
    GRUPruner,
    LSTMPruner,
    RNNPruner,
    prune_gru_out_channels,
    prune_lstm_in_channels,
    prune_lstm_out_channels,
    prune_rnn_in_channels,
)

from ._checks import assert_identity_and_grads, assert_refused, keep_of, mark_grads, zero_along

IN, H, LAYERS = 5, 6, 2
RNNS = [nn.LSTM, nn.GRU, nn.RNN]


def _rnn(cls: type[nn.RNNBase], **kwargs) -> nn.RNNBase:
    torch.manual_seed(0)
    kwargs = {"num_layers": LAYERS, "bidirectional": True, "batch_first": True, **kwargs}
    return cls(IN, H, **kwargs).double()


def _silence(rnn: nn.RNNBase, idxs: list[int]) -> nn.RNNBase:
    """A copy whose units ``idxs`` feed nothing: zero their recurrent and next-layer columns.

    The remaining units of this copy then compute exactly what the pruned RNN computes.
    """
    rnn = copy.deepcopy(rnn)
    dirs = 2 if rnn.bidirectional else 1
    upper = [d * H + i for d in range(dirs) for i in idxs]  # [forward H | backward H]
    with torch.no_grad():
        for name, p in rnn.named_parameters():
            if name.startswith("weight_hh"):
                p.copy_(zero_along(p, 1, idxs))
            elif name.startswith("weight_ih") and not name.startswith("weight_ih_l0"):
                p.copy_(zero_along(p, 1, upper))
    return rnn


def _states(out) -> list[torch.Tensor]:
    y, h = out
    return [y, *(h if isinstance(h, tuple) else (h,))]


@pytest.mark.parametrize("cls", RNNS)
@pytest.mark.parametrize("bidirectional", [True, False])
def test_hidden_units_are_removed_everywhere(cls, bidirectional):
    rnn = _rnn(cls, bidirectional=bidirectional)
    idxs = [1, 4]
    reference = _silence(rnn, idxs)
    params = mark_grads(rnn)
    assert prune_lstm_out_channels(rnn, idxs) is rnn
    assert rnn.hidden_size == 4 and rnn.input_size == IN
    assert repr(rnn) == repr(cls(IN, 4, num_layers=LAYERS, bidirectional=bidirectional, batch_first=True))
    assert_identity_and_grads(rnn, params)
    assert all(w is getattr(rnn, n) for w, n in zip(rnn._flat_weights, rnn._flat_weights_names, strict=True))
    x = torch.randn(3, 7, IN, dtype=torch.float64)
    dirs = 2 if bidirectional else 1
    keep = keep_of(H, idxs)
    out_keep = torch.cat([keep + d * H for d in range(dirs)])  # output is [forward H | backward H]
    with torch.no_grad():
        actual, expected = _states(rnn(x)), _states(reference(x))
    assert actual[0].shape == (3, 7, 4 * dirs)
    torch.testing.assert_close(actual[0], expected[0][..., out_keep])
    for a, e in zip(actual[1:], expected[1:], strict=True):  # h_n (and c_n): (layers*dirs, N, H)
        torch.testing.assert_close(a, e[..., keep])


@pytest.mark.parametrize("cls", RNNS)
def test_input_features_equal_zeroed_inputs_after_hidden_pruning(cls):
    rnn = _rnn(cls)
    prune_lstm_out_channels(rnn, [0, 5])
    original = copy.deepcopy(rnn)
    params = mark_grads(rnn)
    prune_rnn_in_channels(rnn, [3, 1])
    assert rnn.input_size == 3 and rnn.weight_ih_l0.shape[1] == 3 and rnn.weight_ih_l0_reverse.shape[1] == 3
    assert rnn.weight_ih_l1.shape[1] == 2 * 4  # upper layers read the hidden state, untouched
    assert_identity_and_grads(rnn, params)
    x = torch.randn(2, 4, IN, dtype=torch.float64)
    with torch.no_grad():
        actual = _states(rnn(x[..., keep_of(IN, [1, 3])]))
        expected = _states(original(zero_along(x, 2, [1, 3])))
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e)


def test_unbatched_input_and_no_bias():
    rnn = _rnn(nn.GRU, batch_first=False, bias=False)
    prune_gru_out_channels(rnn, [2])
    prune_lstm_in_channels(rnn, [0])
    y, h = rnn(torch.randn(7, 4, dtype=torch.float64))
    assert y.shape == (7, 2 * 5) and h.shape == (LAYERS * 2, 5)


def test_aliases_and_handler_facts():
    assert GRUPruner is RNNPruner is LSTMPruner
    h, lstm = LSTMPruner.INSTANCE, _rnn(nn.LSTM)
    assert h.get_out_channels(lstm) == H and h.get_in_channels(lstm) == IN
    assert h.out_channel_dim(lstm, 3) == 2 and h.in_channel_dim(lstm, 2) == 1


@pytest.mark.parametrize(
    ("fn", "idxs", "exc", "match"),
    [
        (prune_lstm_out_channels, [6], InvalidIndicesError, "out of range for the 6 out channels"),
        (prune_lstm_in_channels, [5], InvalidIndicesError, "out of range for the 5 in channels"),
        (prune_lstm_out_channels, [-1], InvalidIndicesError, "negative"),
        (prune_lstm_out_channels, range(6), OverPruningError, "all 6"),
        (prune_lstm_in_channels, range(5), OverPruningError, "all 5"),
    ],
)
def test_invalid_indices_are_refused(fn, idxs, exc, match):
    assert_refused(fn, _rnn(nn.LSTM), idxs, exc, match)


@pytest.mark.parametrize("fn", [prune_lstm_out_channels, prune_lstm_in_channels])
def test_projected_lstm_is_unsupported(fn):
    lstm = nn.LSTM(IN, H, proj_size=3)
    assert_refused(fn, lstm, [0], UnsupportedOpError, "proj_size=3.*ignored_layers")


def test_wrong_module_type_is_refused():
    assert_refused(prune_lstm_out_channels, nn.Linear(3, 3), [0], HandlerMismatchError, "LSTMPruner")
