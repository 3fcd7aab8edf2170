"""Tests for depgraph/functional/linear.py, including reuse for a custom layer."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from depgraph.errors import HandlerMismatchError, InvalidIndicesError, OverPruningError
from depgraph.functional import LinearPruner, prune_linear_in_channels, prune_linear_out_channels

from ._checks import assert_identity_and_grads, assert_refused, assert_restricts, mark_grads


def _linear(cin: int = 5, cout: int = 4, bias: bool = True) -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(cin, cout, bias=bias).double()


@pytest.mark.parametrize("bias", [True, False])
def test_out_features_are_dropped_from_the_last_dim(bias):
    fc = _linear(bias=bias)
    original, params = copy.deepcopy(fc), mark_grads(fc)
    assert prune_linear_out_channels(fc, [3, 0]) is fc
    assert repr(fc) == repr(nn.Linear(5, 2, bias=bias))
    assert_identity_and_grads(fc, params)
    x = torch.randn(2, 3, 5, dtype=torch.float64)
    assert_restricts(original, fc, x, out_dim=2, out_idxs=[0, 3])


def test_in_features_equal_zeroed_inputs():
    fc = _linear()
    original, params = copy.deepcopy(fc), mark_grads(fc)
    prune_linear_in_channels(fc, [1, 2, 4])
    assert (fc.in_features, fc.out_features) == (2, 4) and fc.weight.shape == (4, 2)
    assert_identity_and_grads(fc, params)
    assert_restricts(original, fc, torch.randn(3, 5, dtype=torch.float64), in_dim=1, in_idxs=[1, 2, 4])


def test_channel_dim_is_the_last_dim():
    h = LinearPruner.INSTANCE
    assert h.in_channel_dim(nn.Linear(2, 2), 3) == 2 and h.out_channel_dim(nn.Linear(2, 2), 1) == 0


@pytest.mark.parametrize(
    ("fn", "idxs", "exc", "match"),
    [
        (prune_linear_out_channels, [4], InvalidIndicesError, "out of range for the 4 out channels"),
        (prune_linear_in_channels, [-2], InvalidIndicesError, "negative pruning index -2"),
        (prune_linear_out_channels, [0, 1, 2, 3], OverPruningError, "all 4 out channels"),
        (prune_linear_in_channels, range(5), OverPruningError, "all 5 in channels"),
    ],
)
def test_invalid_indices_are_refused(fn, idxs, exc, match):
    assert_refused(fn, _linear(), idxs, exc, match)


def test_wrong_module_type_is_refused():
    assert_refused(prune_linear_out_channels, nn.Conv2d(2, 2, 1), [0], HandlerMismatchError, "not Conv2d")
    assert_refused(prune_linear_in_channels, nn.ReLU(), [0], HandlerMismatchError, "in_features")


class _MyLinear(nn.Module):
    """A custom layer laid out like nn.Linear, but not a subclass of it."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.in_features, self.out_features = cin, cout
        self.weight = nn.Parameter(torch.randn(cout, cin, dtype=torch.float64))
        self.bias = nn.Parameter(torch.randn(cout, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x, self.weight, self.bias)


class _MyLinearPruner(LinearPruner):
    TARGET_MODULES = (_MyLinear,)


@pytest.mark.parametrize("handler", [LinearPruner(), _MyLinearPruner()])
def test_custom_layer_reuses_the_linear_handler(handler):
    layer = _MyLinear(4, 3)
    original, params = copy.deepcopy(layer), mark_grads(layer)
    handler.prune_out_channels(layer, [1])
    handler.prune_in_channels(layer, [0])
    assert (layer.in_features, layer.out_features) == (3, 2)
    assert_identity_and_grads(layer, params)
    x = torch.randn(2, 4, dtype=torch.float64)
    assert_restricts(original, layer, x, in_dim=1, in_idxs=[0], out_dim=1, out_idxs=[1])
    assert handler.prune_out_channels is handler.prune_out_channels


def test_subclass_with_own_targets_refuses_other_handlers_modules():
    assert_refused(_MyLinearPruner().prune_out_channels, nn.Conv1d(2, 2, 1), [0], HandlerMismatchError, "Conv1d")
