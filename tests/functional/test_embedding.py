"""Tests for depgraph/functional/embedding.py."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from depgraph.errors import HandlerMismatchError, InvalidIndicesError, OverPruningError
from depgraph.functional import EmbeddingPruner, prune_embedding_in_channels, prune_embedding_out_channels

from ._checks import assert_identity_and_grads, assert_refused, mark_grads


def _tokens() -> torch.Tensor:
    return torch.tensor([[0, 3, 9], [2, 2, 5]])


@pytest.mark.parametrize(
    "make",
    [
        lambda: nn.Embedding(10, 5, padding_idx=0),
        lambda: nn.EmbeddingBag(10, 5, mode="sum"),
        lambda: nn.EmbeddingBag(10, 5, mode="max"),
    ],
)
@pytest.mark.parametrize("fn", [prune_embedding_out_channels, prune_embedding_in_channels])
def test_embedding_dims_are_dropped_from_the_last_dim(make, fn):
    torch.manual_seed(0)
    emb = make().double()
    original, params = copy.deepcopy(emb), mark_grads(emb)
    assert fn(emb, [4, 1]) is emb
    assert emb.embedding_dim == 3 and emb.num_embeddings == 10
    assert emb.weight.shape == (10, 3)
    assert repr(emb).startswith(f"{type(emb).__name__}(10, 3")
    assert getattr(emb, "padding_idx", None) == getattr(original, "padding_idx", None)
    assert_identity_and_grads(emb, params)
    with torch.no_grad():
        expected = original(_tokens())[..., [0, 2, 3]]
        torch.testing.assert_close(emb(_tokens()), expected)


def test_handler_facts():
    h, emb = EmbeddingPruner.INSTANCE, nn.Embedding(4, 6)
    assert h.get_out_channels(emb) == h.get_in_channels(emb) == 6
    assert h.out_channel_dim(emb, 3) == 2 and h.in_channel_dim(emb, 2) == 1


@pytest.mark.parametrize(
    ("idxs", "exc", "match"),
    [
        ([5], InvalidIndicesError, "out of range for the 5 out channels"),
        ([-5], InvalidIndicesError, "negative"),
        (range(5), OverPruningError, "all 5"),
    ],
)
def test_invalid_indices_are_refused(idxs, exc, match):
    assert_refused(prune_embedding_out_channels, nn.Embedding(10, 5), idxs, exc, match)


def test_wrong_module_type_is_refused():
    assert_refused(prune_embedding_out_channels, nn.Linear(3, 3), [0], HandlerMismatchError, "EmbeddingPruner")
