"""Tests for depgraph/functional/base.py and the public surface of depgraph.functional."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn

import depgraph.functional as F
from depgraph.errors import HandlerMismatchError, InvalidIndicesError, OverPruningError, UnknownModuleError
from depgraph.functional import (
    BasePruningFunc,
    PrunerBox,
    find_handler,
    get_handler,
    keep_index,
    normalize_idxs,
    prune_tensor,
    register_handler,
    registered_handlers,
)


def test_all_lists_exactly_what_exists():
    assert len(F.__all__) == len(set(F.__all__))
    for name in F.__all__:
        assert hasattr(F, name), name


@pytest.mark.parametrize(
    ("fn", "handler", "side"),
    [
        (F.prune_conv_out_channels, F.ConvPruner, "out"),
        (F.prune_conv_in_channels, F.ConvPruner, "in"),
        (F.prune_depthwise_conv_out_channels, F.DepthwiseConvPruner, "out"),
        (F.prune_depthwise_conv_in_channels, F.DepthwiseConvPruner, "in"),
        (F.prune_batchnorm_out_channels, F.BatchNormPruner, "out"),
        (F.prune_batchnorm_in_channels, F.BatchNormPruner, "in"),
        (F.prune_linear_out_channels, F.LinearPruner, "out"),
        (F.prune_linear_in_channels, F.LinearPruner, "in"),
        (F.prune_prelu_out_channels, F.PReLUPruner, "out"),
        (F.prune_prelu_in_channels, F.PReLUPruner, "in"),
        (F.prune_layernorm_out_channels, F.LayerNormPruner, "out"),
        (F.prune_layernorm_in_channels, F.LayerNormPruner, "in"),
        (F.prune_rmsnorm_out_channels, F.LayerNormPruner, "out"),
        (F.prune_rmsnorm_in_channels, F.LayerNormPruner, "in"),
        (F.prune_embedding_out_channels, F.EmbeddingPruner, "out"),
        (F.prune_embedding_in_channels, F.EmbeddingPruner, "in"),
        (F.prune_parameter_out_channels, F.ParameterPruner, "out"),
        (F.prune_parameter_in_channels, F.ParameterPruner, "in"),
        (F.prune_multihead_attention_out_channels, F.MultiheadAttentionPruner, "out"),
        (F.prune_multihead_attention_in_channels, F.MultiheadAttentionPruner, "in"),
        (F.prune_groupnorm_out_channels, F.GroupNormPruner, "out"),
        (F.prune_groupnorm_in_channels, F.GroupNormPruner, "in"),
        (F.prune_instancenorm_out_channels, F.InstanceNormPruner, "out"),
        (F.prune_instancenorm_in_channels, F.InstanceNormPruner, "in"),
        (F.prune_lstm_out_channels, F.LSTMPruner, "out"),
        (F.prune_lstm_in_channels, F.LSTMPruner, "in"),
        (F.prune_gru_out_channels, F.LSTMPruner, "out"),
        (F.prune_rnn_in_channels, F.LSTMPruner, "in"),
    ],
)
def test_functions_are_the_handlers_bound_methods(fn, handler, side):
    assert type(handler.INSTANCE) is handler
    assert fn is getattr(handler.INSTANCE, f"prune_{side}_channels")


def test_legacy_aliases():
    assert F.prune_conv is F.prune_conv_out_channels
    assert F.prune_related_conv is F.prune_conv_in_channels
    assert F.prune_batchnorm is F.prune_batchnorm_out_channels
    assert F.prune_linear is F.prune_linear_out_channels
    assert F.prune_related_linear is F.prune_linear_in_channels


@pytest.mark.parametrize(
    ("module", "handler"),
    [
        (nn.Conv2d(2, 2, 1), F.ConvPruner),
        (nn.ConvTranspose3d(2, 2, 1), F.ConvPruner),
        (nn.Linear(2, 2), F.LinearPruner),
        (nn.MultiheadAttention(4, 2).out_proj, F.LinearPruner),  # a Linear subclass
        (nn.SyncBatchNorm(2), F.BatchNormPruner),
        (nn.InstanceNorm3d(2), F.InstanceNormPruner),
        (nn.LayerNorm(2), F.LayerNormPruner),
        (nn.GroupNorm(1, 2), F.GroupNormPruner),
        (nn.PReLU(), F.PReLUPruner),
        (nn.EmbeddingBag(3, 2), F.EmbeddingPruner),
        (nn.MultiheadAttention(4, 2), F.MultiheadAttentionPruner),
        (nn.GRU(2, 2), F.LSTMPruner),
    ],
)
def test_registry_lookup(module, handler):
    assert find_handler(module) is handler.INSTANCE
    assert get_handler(type(module)) is handler.INSTANCE
    assert PrunerBox[type(module)] is handler.INSTANCE
    assert type(module) in PrunerBox


def test_registry_misses_and_custom_overrides():
    assert find_handler(nn.ReLU()) is None
    with pytest.raises(UnknownModuleError, match="no pruning handler is registered for ReLU; known types: .*Conv2d"):
        get_handler(nn.ReLU)
    assert nn.ReLU not in PrunerBox and "Conv2d" not in PrunerBox
    custom, conv = F.LinearPruner(), nn.Conv2d(1, 1, 1)
    assert find_handler(conv, {nn.Conv2d: custom}) is custom
    assert find_handler(conv, {conv: custom}) is custom
    assert nn.Conv2d in registered_handlers() and len(PrunerBox) == len(registered_handlers())


def test_register_handler_warns_on_overwrite_and_returns_the_class():
    class Scale(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(4))

    class ScalePruner(BasePruningFunc):
        TARGET_MODULES = (Scale,)

        def prune_out_channels(self, layer, idxs):
            idxs = self.check_idxs(layer, idxs, "out")
            prune_tensor(layer.scale, 0, keep_index(layer.scale.shape[0], idxs))
            return layer

        prune_in_channels = prune_out_channels

        def get_out_channels(self, layer):
            return layer.scale.shape[0]

        get_in_channels = get_out_channels

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert register_handler(Scale)(ScalePruner) is ScalePruner
        with pytest.warns(UserWarning, match="replacing the pruning handler for Scale"):
            register_handler(Scale)(ScalePruner)
        layer = Scale()
        assert find_handler(layer) is ScalePruner.INSTANCE
        ScalePruner.INSTANCE.prune_out_channels(layer, [0])
        assert layer.scale.shape == (3,)
        assert ScalePruner.INSTANCE(layer, [0]).scale.shape == (2,)  # __call__ prunes out channels
    finally:
        del PrunerBox[Scale]
    assert find_handler(Scale()) is None


def test_handler_refuses_modules_owned_by_another_handler():
    with pytest.raises(HandlerMismatchError, match="LinearPruner prunes Linear, not Conv2d"):
        F.LinearPruner.INSTANCE.check_layer(nn.Conv2d(1, 1, 1))
    with pytest.raises(HandlerMismatchError, match="not Tensor"):
        F.LinearPruner.INSTANCE.check_layer(torch.zeros(2))
    F.LinearPruner.INSTANCE.check_layer(nn.Identity())  # unknown type: duck-typed


def test_named_layer_appears_in_errors():
    fc = nn.Linear(2, 2)
    fc._depgraph_name = "head.fc"
    with pytest.raises(InvalidIndicesError, match=r"of head\.fc \(Linear\)"):
        F.prune_linear_out_channels(fc, [2])


@pytest.mark.parametrize(
    ("idxs", "expected"),
    [([3, 1, 3], [1, 3]), (torch.tensor([[2], [0]]), [0, 2]), ((), []), (range(2), [0, 1])],
)
def test_normalize_idxs_sorts_and_dedupes(idxs, expected):
    out = normalize_idxs(idxs, 5)
    assert out.dtype == torch.long and out.tolist() == expected


@pytest.mark.parametrize(
    ("idxs", "exc", "match"),
    [
        ([5], InvalidIndicesError, "index 5 is out of range for the 5"),
        ([-1], InvalidIndicesError, "negative pruning index -1"),
        (torch.tensor([True]), InvalidIndicesError, "must be integers"),
        ([0, 1, 2, 3, 4, 4], OverPruningError, "all 5"),
    ],
)
def test_normalize_idxs_refuses(idxs, exc, match):
    with pytest.raises(exc, match=match):
        normalize_idxs(idxs, 5)


def test_errors_are_catchable_as_builtin_kinds():
    with pytest.raises(IndexError):
        normalize_idxs([9], 2)
    with pytest.raises(TypeError):
        F.prune_linear_out_channels(nn.Conv1d(1, 2, 1), [0])


def test_keep_index_and_prune_tensor():
    assert keep_index(5, torch.tensor([0, 3])).tolist() == [1, 2, 4]
    p = nn.Parameter(torch.arange(6.0).reshape(2, 3))
    prune_tensor(p, 1, torch.tensor([0, 2]))
    assert p.tolist() == [[0.0, 2.0], [3.0, 5.0]] and p.grad is None
    prune_tensor(None, 0, torch.tensor([0]))  # absent tensors are skipped
