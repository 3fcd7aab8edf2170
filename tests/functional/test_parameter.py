"""Tests for depgraph/functional/parameter.py: bare parameters and buffers."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from depgraph.errors import HandlerMismatchError, InvalidIndicesError, OverPruningError, UnknownModuleError
from depgraph.functional import (
    ParameterPruner,
    get_handler,
    prune_parameter_in_channels,
    prune_parameter_out_channels,
)


@pytest.mark.parametrize("fn", [prune_parameter_out_channels, prune_parameter_in_channels])
@pytest.mark.parametrize("dim", [1, -2])
def test_parameter_keeps_identity_and_grad(fn, dim):
    p = nn.Parameter(torch.arange(30.0).reshape(2, 5, 3))
    p.grad = p.detach() * 2 + 1
    original = p.detach().clone()
    assert fn(p, [0, 3], dim=dim) is p
    assert p.shape == (2, 3, 3)
    torch.testing.assert_close(p.detach(), original[:, [1, 2, 4]])
    torch.testing.assert_close(p.grad, p.detach() * 2 + 1)


def test_plain_buffer_and_default_dim():
    t = torch.arange(6.0)
    assert prune_parameter_out_channels(t, [5]) is t
    torch.testing.assert_close(t, torch.arange(5.0))
    assert ParameterPruner.INSTANCE.get_out_channels(torch.zeros(2, 7), dim=1) == 7
    assert ParameterPruner.INSTANCE.get_in_channels(torch.zeros(2, 7)) == 7  # the original's default dim: -1
    assert ParameterPruner(pruning_dim=0).get_in_channels(torch.zeros(2, 7)) == 2


def test_parameter_pruned_inside_a_module_stays_registered():
    m = nn.Module()
    m.cls_token = nn.Parameter(torch.zeros(1, 1, 8))
    prune_parameter_out_channels(m.cls_token, [0, 1], dim=2)
    assert dict(m.named_parameters())["cls_token"].shape == (1, 1, 6)


def test_empty_indices_change_nothing():
    p = nn.Parameter(torch.ones(4))
    assert prune_parameter_out_channels(p, [], dim=0) is p and p.shape == (4,)


@pytest.mark.parametrize(
    ("target", "idxs", "dim", "exc", "match"),
    [
        (torch.zeros(3, 4), [4], 1, InvalidIndicesError, "out of range for the 4 dim-1 channels"),
        (torch.zeros(3, 4), [-1], 0, InvalidIndicesError, "negative"),
        (torch.zeros(3, 4), [0, 1, 2], 0, OverPruningError, "all 3"),
        (torch.zeros(3, 4), [0], 2, InvalidIndicesError, r"dim must be in \[-2, 1\]"),
        (nn.Linear(2, 2), [0], 0, HandlerMismatchError, "ParameterPruner prunes tensors, not Linear"),
    ],
)
def test_refused_calls_change_nothing(target, idxs, dim, exc, match):
    before = target.clone() if isinstance(target, torch.Tensor) else None
    with pytest.raises(exc, match=match):
        prune_parameter_out_channels(target, idxs, dim=dim)
    if before is not None:
        assert torch.equal(target, before)


def test_not_registered_by_module_type():
    with pytest.raises(UnknownModuleError, match="no pruning handler is registered for Parameter"):
        get_handler(nn.Parameter)
