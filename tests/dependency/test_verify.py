"""``depgraph.verify`` reads the records a group's prune leaves on the model; it must catch a
planted wrong index or weight, and say when exactness does not apply.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

import depgraph as tp

from .._checks import build, prune_and_verify
from ..dims.test_modules import Scale, ScalePruner, WithScale

torchvision = pytest.importorskip("torchvision")


@pytest.fixture
def pruned_resnet():
    model = torchvision.models.resnet18().eval()
    x = torch.randn(1, 3, 32, 32)
    done = prune_and_verify(model, x, model.conv1, tp.prune_conv_out_channels, [2, 6, 9])
    return done.original, model, x


def test_a_correct_prune_is_exact(pruned_resnet):
    original, model, x = pruned_resnet
    result = tp.verify(original, model, x)
    assert result.exact and result.applies and result.ok and bool(result)
    assert result.max_diff <= result.tol and "verify: exact" in str(result)


def test_planted_wrong_index_in_a_record(pruned_resnet):
    """bn1 really lost [2, 6, 9]; claim it lost [3, 6, 9] instead."""
    original, model, x = pruned_resnet
    kept = model.bn1.__dict__["_depgraph_kept"]["out"]
    assert 3 in kept.tolist() and 2 not in kept.tolist()
    kept[kept == 3] = 2
    result = tp.verify(original, model, x)
    assert result.applies and result.exact is False and not result.ok and not bool(result)
    assert result.max_diff > result.tol and "NOT exact" in str(result)


def test_planted_wrong_channel_removed_by_hand(pruned_resnet):
    """Swap two kept output channels of conv1 by hand: shapes fit, the records do not."""
    original, model, x = pruned_resnet
    with torch.no_grad():
        model.conv1.weight[[0, 1]] = model.conv1.weight[[1, 0]].clone()
    assert tp.verify(original, model, x).exact is False


def test_planted_wrong_weight(pruned_resnet):
    original, model, x = pruned_resnet
    with torch.no_grad():
        model.layer1[0].conv2.weight[0, 0, 0, 0] += 1.0
    result = tp.verify(original, model, x)
    assert result.exact is False


def test_models_are_not_changed(pruned_resnet):
    original, model, x = pruned_resnet
    state = {k: v.clone() for k, v in model.state_dict().items()}
    orig_state = {k: v.clone() for k, v in original.state_dict().items()}
    tp.verify(original, model, x)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert all(torch.equal(v, original.state_dict()[k]) for k, v in orig_state.items())
    assert model.conv1.weight.dtype == torch.float32


def test_shape_change_is_reported():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Conv2d(4, 2, 1)).eval()
    original = copy.deepcopy(model)
    tp.prune_conv_out_channels(model[1], [0])  # by hand, not through a group: the output shrinks
    result = tp.verify(original, model, torch.randn(1, 3, 2, 2))
    assert not result.shapes_match and not result.ok and "output shapes differ" in str(result)


def test_exactness_does_not_apply_through_a_layer_norm():
    model = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.Linear(6, 2)).eval()
    done = prune_and_verify(model, torch.randn(3, 4), model[0], tp.prune_linear_out_channels, [1], exact=False)
    assert done.result.ok and done.result.exact is None
    assert "exactness does not apply" in str(done.result) and "LayerNorm" in str(done.result)


def test_verify_against_an_intermediate_original():
    model = nn.Sequential(nn.Conv2d(3, 6, 1), nn.ReLU(), nn.Conv2d(6, 6, 1), nn.ReLU(), nn.Conv2d(6, 2, 1)).eval()
    x = torch.randn(1, 3, 4, 4)
    DG = build(model, x)
    DG.get_pruning_group(model[0], tp.prune_conv_out_channels, [1]).prune()
    step1 = copy.deepcopy(model)
    DG.get_pruning_group(model[2], tp.prune_conv_out_channels, [0]).prune()
    assert tp.verify(step1, model, x).exact


def test_verify_a_custom_layer_from_customized_pruners():
    model = WithScale()
    prune_and_verify(model, torch.randn(1, 3, 2, 2), model.conv, tp.prune_conv_out_channels, [0, 3],
                     customized_pruners={Scale: ScalePruner()})


def test_a_model_pruned_by_another_tool_is_not_called_inexact():
    """Torch-Pruning leaves no kept-channel records: verify says it cannot know, not "NOT exact"."""
    torch_pruning = pytest.importorskip("torch_pruning")
    model = torchvision.models.resnet18(weights=None).eval()
    original, x = copy.deepcopy(model), torch.randn(1, 3, 32, 32)
    DG = torch_pruning.DependencyGraph().build_dependency(model, example_inputs=x)
    DG.get_pruning_group(model.conv1, torch_pruning.prune_conv_out_channels, idxs=[2, 6, 9]).prune()
    result = tp.verify(original, model, x)
    assert result.shapes_match and result.exact is None and not result.applies and not result.kept_known
    assert "conv1" in result.unrecorded and "bn1" in result.unrecorded
    assert "cannot know which channels were kept (conv1, bn1" in str(result)
    assert "NOT exact" not in str(result)
    # the same prune by depgraph is judged
    mine = copy.deepcopy(original)
    build(mine, x).get_pruning_group(mine.conv1, tp.prune_conv_out_channels, [2, 6, 9]).prune()
    assert tp.verify(original, mine, x).exact and tp.verify(original, mine, x).kept_known
