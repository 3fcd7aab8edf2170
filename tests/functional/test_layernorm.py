"""Tests for depgraph/functional/layernorm.py: LayerNorm and RMSNorm."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from depgraph.errors import HandlerMismatchError, InvalidIndicesError, OverPruningError
from depgraph.functional import (
    LayerNormPruner,
    LayernormPruner,
    prune_layernorm_in_channels,
    prune_layernorm_out_channels,
    prune_rmsnorm_out_channels,
)

from ._checks import assert_identity_and_grads, assert_refused, keep_of, mark_grads

_NORMS = [
    lambda shape, affine: nn.LayerNorm(shape, elementwise_affine=affine),
    lambda shape, affine: nn.LayerNorm(shape, elementwise_affine=affine, bias=False),
]
if hasattr(nn, "RMSNorm"):
    _NORMS.append(lambda shape, affine: nn.RMSNorm(shape, elementwise_affine=affine))


def _randomised(norm: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    norm = norm.double()
    with torch.no_grad():
        for p in norm.parameters():
            p.copy_(torch.randn_like(p))
    return norm


@pytest.mark.parametrize("make", _NORMS)
@pytest.mark.parametrize("shape", [(6,), (3, 6)])
@pytest.mark.parametrize("affine", [True, False])
def test_pruned_norm_equals_a_fresh_norm_on_the_kept_channels(make, shape, affine):
    norm = _randomised(make(shape, affine))
    params = mark_grads(norm)
    idxs = [0, 5, 2]
    keep = keep_of(6, idxs)
    assert prune_layernorm_out_channels(norm, idxs) is norm
    new_shape = (*shape[:-1], 3)
    assert norm.normalized_shape == new_shape
    assert_identity_and_grads(norm, params)
    # Reference: a norm built at the new size from independently sliced params.
    reference = make(new_shape, affine).double()
    original = _randomised(make(shape, affine))
    with torch.no_grad():
        for name, p in reference.named_parameters():
            p.copy_(getattr(original, name).index_select(-1, keep))
    assert repr(norm) == repr(reference)
    x = torch.randn(2, *shape, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(norm(x.index_select(-1, keep)), reference(x.index_select(-1, keep)))


def test_in_channels_are_the_same_channels():
    norm = nn.LayerNorm(4)
    prune_layernorm_in_channels(norm, [1])
    assert norm.normalized_shape == (3,) and norm.weight.shape == (3,)


@pytest.mark.skipif(not hasattr(nn, "RMSNorm"), reason="nn.RMSNorm needs torch >= 2.4")
def test_rmsnorm_alias_and_forward():
    norm = nn.RMSNorm(5)
    assert prune_rmsnorm_out_channels is prune_layernorm_out_channels
    prune_rmsnorm_out_channels(norm, [4])
    assert norm(torch.randn(2, 4)).shape == (2, 4)


def test_handler_facts():
    h = LayerNormPruner.INSTANCE
    assert LayernormPruner is LayerNormPruner and h.mixes_channels
    assert h.out_channel_dim(nn.LayerNorm(3), 3) == 2 and h.in_channel_dim(nn.LayerNorm(3), 2) == 1
    assert h.get_out_channels(nn.LayerNorm((2, 7))) == 7


@pytest.mark.parametrize(
    ("module", "idxs", "exc", "match"),
    [
        (nn.LayerNorm((3, 6)), [6], InvalidIndicesError, "out of range for the 6 out channels"),
        (nn.LayerNorm(6), [-3], InvalidIndicesError, "negative"),
        (nn.LayerNorm(2), [1, 0], OverPruningError, "all 2"),
        (nn.GroupNorm(2, 4), [0], HandlerMismatchError, "not GroupNorm"),
    ],
)
def test_refused_calls_change_nothing(module, idxs, exc, match):
    assert_refused(prune_layernorm_out_channels, module, idxs, exc, match)


def test_layernorm_normalized_shape_stays_a_tuple():
    norm = nn.LayerNorm([4])
    prune_layernorm_out_channels(norm, torch.tensor([0]))
    assert isinstance(norm.normalized_shape, tuple)
    assert norm(torch.randn(2, 3)).shape == (2, 3)
    assert copy.deepcopy(norm).normalized_shape == (3,)
