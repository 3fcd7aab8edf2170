"""Tests for depgraph/layers/spec.py (the registry) and depgraph/layers/builtin.py (one spec per built-in layer)."""

from __future__ import annotations

import pytest
import torch.nn as nn

import depgraph as tp
from depgraph.dims import get_dim_rule
from depgraph.functional import find_handler, get_handler, register_handler
from depgraph.layers import (
    LayerSpec,
    builtin,
    get_layer_spec,
    register_layer,
    registered_layers,
    restoring_layers,
)
from depgraph.layers.spec import find_layer_part, set_layer_part

BUILTIN = [
    (nn.Conv2d, builtin.ConvSpec),
    (nn.ConvTranspose1d, builtin.ConvTransposeSpec),
    (nn.Linear, builtin.LinearSpec),
    (nn.BatchNorm2d, builtin.BatchNormSpec),
    (nn.SyncBatchNorm, builtin.BatchNormSpec),
    (nn.InstanceNorm2d, builtin.InstanceNormSpec),
    (nn.GroupNorm, builtin.GroupNormSpec),
    (nn.LayerNorm, builtin.LayerNormSpec),
    (nn.PReLU, builtin.PReLUSpec),
    (nn.Embedding, builtin.EmbeddingSpec),
    (nn.MultiheadAttention, builtin.MultiheadAttentionSpec),
    (nn.GRU, builtin.RNNSpec),
]


@pytest.mark.parametrize("layer_type, spec_cls", BUILTIN, ids=lambda x: getattr(x, "__name__", ""))
def test_each_builtin_layer_has_one_spec_and_every_lookup_reads_it(layer_type, spec_cls):
    spec = get_layer_spec(layer_type)
    assert spec is spec_cls.INSTANCE
    assert get_handler(layer_type) is spec.handler
    assert get_dim_rule(layer_type) is spec.dim_rule
    assert find_layer_part(layer_type, "count_macs") is spec.count_macs
    assert find_layer_part(layer_type, "channel_slices") is spec.channel_slices


def test_every_layer_with_a_handler_is_described_by_a_whole_spec():
    """No built-in layer is half-registered: a handler always comes with its dim rule and MAC rule."""
    for layer_type, spec in registered_layers().items():
        if spec.handler is not None and layer_type.__module__.startswith("torch.nn"):
            assert spec.dim_rule is not None and spec.count_macs is not None, layer_type


def test_a_subclass_inherits_the_nearest_spec():
    class MyConv(nn.Conv2d):
        pass

    assert get_layer_spec(MyConv) is builtin.ConvSpec.INSTANCE
    assert find_handler(MyConv(1, 1, 1)) is builtin.ConvSpec.INSTANCE.handler


def test_a_miss_lists_the_known_types():
    with pytest.raises(tp.UnknownModuleError, match=r"no layer spec is registered for ReLU6.*known types: .*Conv2d"):
        get_layer_spec(type("ReLU6", (nn.Module,), {}))


def test_bad_registrations_are_refused():
    with pytest.raises(TypeError, match="register_layer takes module types"):
        register_layer("Conv2d")
    with pytest.raises(ValueError, match="unknown layer part 'macs'"):
        set_layer_part(nn.Conv2d, "macs", None, "MAC rule")


def test_restoring_layers_undoes_registrations_and_part_changes():
    class Scale(nn.Module):
        pass

    class ScaleSpec(LayerSpec):
        handler = tp.function.LinearPruner()

    before = get_layer_spec(nn.Linear).handler
    with restoring_layers():
        register_layer(Scale)(ScaleSpec)
        with pytest.warns(UserWarning, match="replacing the pruning handler for Linear"):
            register_handler(nn.Linear)(type("OtherLinearPruner", (tp.function.LinearPruner,), {}))
        assert get_layer_spec(Scale) is ScaleSpec.INSTANCE and get_handler(nn.Linear) is not before
    assert Scale not in registered_layers() and get_handler(nn.Linear) is before
