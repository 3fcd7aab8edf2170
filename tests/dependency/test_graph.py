"""DependencyGraph (depgraph/dependency/graph.py) on ResNet-18: the documented examples, queries,
``get_all_groups``, ``ignored_layers`` / ``frozen_layers``, pruning history and the legacy names.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn as nn

import depgraph as tp
from depgraph.functional import BatchNormPruner, ConvPruner, LinearPruner

from .._checks import (
    assert_refused_unchanged,
    build,
    check_result,
    names_in,
    output_shapes,
    prune_all_groups,
    prune_and_verify,
)

torchvision = pytest.importorskip("torchvision")

SEED_MEMBERS = {
    "conv1": "out", "bn1": "out",
    "layer1.0.conv1": "in", "layer1.0.bn2": "out", "layer1.0.conv2": "out",
    "layer1.1.conv1": "in", "layer1.1.bn2": "out", "layer1.1.conv2": "out",
    "layer2.0.conv1": "in", "layer2.0.downsample.0": "in",
}
HANDLERS = {
    ("Conv2d", "out"): tp.prune_conv_out_channels, ("Conv2d", "in"): tp.prune_conv_in_channels,
    ("BatchNorm2d", "out"): tp.prune_batchnorm_out_channels,
}


@pytest.fixture
def resnet18() -> nn.Module:
    return torchvision.models.resnet18(num_classes=1000).eval()


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(1, 3, 32, 32)


def width(module: nn.Module, side: str) -> int:
    if isinstance(module, nn.BatchNorm2d):
        return module.num_features
    return module.out_channels if side == "out" else module.in_channels


# -- the documented example ------------------------------------------------------------------


def test_seed_example(resnet18, x):
    done = prune_and_verify(resnet18, x, resnet18.conv1, tp.prune_conv_out_channels, [2, 6, 9])
    group = done.groups[0]
    assert names_in(group) == set(SEED_MEMBERS)
    assert len(group) == len(SEED_MEMBERS)
    modules = dict(resnet18.named_modules())
    for dep, idxs in group:
        side = SEED_MEMBERS[dep.target.name]
        assert idxs == [2, 6, 9], dep.target.name
        assert dep.handler is HANDLERS[type(dep.target.module).__name__, side], dep
        assert dep.is_out() == (side == "out")
        assert width(modules[dep.target.name], side) == 61, dep.target.name
    assert group[0].dep.target.module is resnet18.conv1
    assert group[0].dep.trigger is tp.prune_conv_out_channels


def test_handlers_are_the_public_functions():
    assert tp.prune_conv_out_channels is ConvPruner.INSTANCE.prune_out_channels
    assert tp.prune_batchnorm_out_channels is BatchNormPruner.INSTANCE.prune_out_channels
    assert tp.prune_linear_in_channels is LinearPruner.INSTANCE.prune_in_channels


def test_queries(resnet18, x):
    DG = build(resnet18, x)
    assert DG.model is resnet18
    node = DG.module2node[resnet18.layer1[0].conv1]
    assert node.name == "layer1.0.conv1" and node.module is resnet18.layer1[0].conv1
    assert all(isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear)) for m in DG.module2node)
    assert DG.get_pruner_of_module(resnet18.conv1) is ConvPruner.INSTANCE
    assert DG.get_pruner_of_module(resnet18.fc) is LinearPruner.INSTANCE
    assert (DG.get_out_channels(resnet18.conv1), DG.get_in_channels(resnet18.fc)) == (64, 512)
    assert DG.is_out_channel_pruning_fn(tp.prune_conv_out_channels)
    assert not DG.is_out_channel_pruning_fn(tp.prune_linear_in_channels)
    assert DG.is_in_channel_pruning_fn(tp.prune_linear_in_channels)
    DG.get_pruning_group(resnet18.layer4[1].conv2, tp.prune_conv_out_channels, [0, 1]).prune()
    assert DG.get_in_channels(resnet18.fc) == 510 and DG.get_out_channels(resnet18.layer4[0].bn2) == 510


def test_get_all_groups_yields_each_group_once(resnet18, x):
    DG = build(resnet18, x)
    groups = list(DG.get_all_groups())
    roots = [g[0].dep.target.module for g in groups]
    # ResNet-18: 4 residual streams plus the inner conv of each of the 8 blocks.
    assert len(groups) == 12 and len(set(map(id, roots))) == 12
    seen: dict[tuple[int, bool], int] = {}
    for i, g in enumerate(groups):
        assert g[0].idxs == list(range(len(g[0].idxs)))  # every current channel of the root
        for dep, _ in g:
            key = (id(dep.target.module), dep.is_out())
            assert key not in seen, f"{dep.target.name} is in groups {seen[key]} and {i}"
            seen[key] = i
    assert (id(resnet18.fc), True) not in seen  # the classifier's output is the model's output


def test_root_module_types(resnet18, x):
    DG = build(resnet18, x)
    roots = {type(g[0].dep.target.module) for g in DG.get_all_groups(root_module_types=(nn.BatchNorm2d,))}
    assert roots == {nn.BatchNorm2d}
    assert list(DG.get_all_groups(root_module_types=(nn.LSTM,))) == []


def test_prune_every_group_in_rounds(resnet18, x):
    prune_all_groups(resnet18, x, n_per_group=3, rounds=2, min_groups=12)
    assert resnet18.conv1.out_channels == 58 and resnet18.fc.in_features == 506


# -- ignored and frozen layers ---------------------------------------------------------------


def test_ignored_fc_keeps_its_outputs_and_follows_its_inputs(resnet18, x):
    """The documented example: ignore fc, prune half of every group -> Linear(256, 1000)."""
    prune_all_groups(resnet18, x, n_per_group=0.5, ignored_layers=[resnet18.fc], min_groups=12)
    assert (resnet18.fc.in_features, resnet18.fc.out_features) == (256, 1000)
    assert resnet18.conv1.out_channels == 32 and resnet18.layer4[1].conv1.out_channels == 256


def test_ignored_layers_at_build_time_are_never_roots(resnet18, x):
    ignored = resnet18.layer1[0]
    DG = build(resnet18, x, ignored_layers=[ignored])
    roots = {g[0].dep.target.module for g in DG.get_all_groups()}
    assert not roots & set(ignored.modules())
    group = DG.get_pruning_group(ignored.conv1, tp.prune_conv_out_channels, [0])
    assert not DG.check_pruning_group(group)
    assert any("ignored_layers" in r for r in group.blocked_by)
    # Its input still follows the stem: the stem group prunes layer1.0.conv1's in-channels.
    stem = DG.get_pruning_group(resnet18.conv1, tp.prune_conv_out_channels, [0])
    assert not DG.check_pruning_group(stem)  # layer1.0.conv2 (ignored) is on the residual stream
    DG.get_pruning_group(resnet18.layer2[0].conv1, tp.prune_conv_out_channels, [1]).prune()
    assert resnet18.layer2[0].conv1.out_channels == 127


def test_frozen_layers_keep_inputs_and_outputs(resnet18, x):
    DG = build(resnet18, x, frozen_layers=[resnet18.fc])
    group = DG.get_pruning_group(resnet18.layer4[1].conv2, tp.prune_conv_out_channels, [0])
    assert not DG.check_pruning_group(group) and any("frozen_layers" in r for r in group.blocked_by)
    original = copy.deepcopy(resnet18)
    shapes = output_shapes(resnet18, x)
    for g in DG.get_all_groups():
        n = len(g[0].idxs)
        g.prune(idxs=list(range(n // 2)))
    assert resnet18.fc.in_features == 512 and resnet18.conv1.out_channels == 32
    check_result(original, resnet18, x, shapes)


def test_ignored_params():
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)
            self.scale = nn.Parameter(torch.ones(1, 4, 1, 1))
            self.head = nn.Conv2d(4, 2, 1)

        def forward(self, x):
            return self.head(self.conv(x) * self.scale)

    model = Scaled()
    DG = build(model, torch.randn(1, 3, 2, 2), ignored_params=[model.scale])
    group = DG.get_pruning_group(model.conv, tp.prune_conv_out_channels, [0])
    assert any("ignored_params" in r for r in group.blocked_by)
    model = Scaled()
    prune_and_verify(model, torch.randn(1, 3, 2, 2), model.conv, tp.prune_conv_out_channels, [0])
    assert model.scale.shape == (1, 3, 1, 1)  # without ignored_params it follows the channels


# -- history --------------------------------------------------------------------------------


def test_pruning_history_replays_on_a_fresh_model(resnet18, x):
    fresh = copy.deepcopy(resnet18)
    DG = build(resnet18, x)
    DG.get_pruning_group(resnet18.conv1, tp.prune_conv_out_channels, [2, 6, 9]).prune()
    DG.get_pruning_group(resnet18.fc, tp.prune_linear_in_channels, [0, 511]).prune()
    DG.get_pruning_group(resnet18.layer3[0].conv1, tp.prune_conv_out_channels, [5]).prune()
    history = json.loads(json.dumps(DG.pruning_history()))  # plain data: it serialises
    assert history[0] == ["conv1", True, [2, 6, 9]]
    assert [h[0] for h in history] == ["conv1", "fc", "layer3.0.conv1"] and history[1][1] is False

    DG2 = build(fresh, x)
    DG2.load_pruning_history(history)
    shapes = {k: v.shape for k, v in resnet18.state_dict().items()}
    assert {k: v.shape for k, v in fresh.state_dict().items()} == shapes
    fresh.load_state_dict(resnet18.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), resnet18(x))
    assert DG2.pruning_history() == history


def test_history_names_must_exist(resnet18, x):
    DG = build(resnet18, x)
    assert_refused_unchanged(resnet18, lambda: DG.load_pruning_history([["conv9", True, [0]]]),
                             tp.UnknownModuleError, "'conv9' from the pruning history is not a module", DG)


def test_history_records_nothing_for_an_empty_prune(resnet18, x):
    DG = build(resnet18, x)
    DG.get_pruning_group(resnet18.conv1, tp.prune_conv_out_channels, []).prune()
    DG.get_pruning_group(resnet18.conv1, tp.prune_conv_out_channels, [1]).prune(record_history=False)
    assert DG.pruning_history() == []


# -- legacy spellings -----------------------------------------------------------------------


def test_legacy_names(resnet18, x):
    assert tp.prune_conv is tp.prune_conv_out_channels
    assert tp.prune_related_conv is tp.prune_conv_in_channels
    assert tp.prune_batchnorm is tp.prune_batchnorm_out_channels
    assert tp.prune_linear is tp.prune_linear_out_channels
    assert tp.prune_related_linear is tp.prune_linear_in_channels
    original = copy.deepcopy(resnet18)
    shapes = output_shapes(resnet18, x)
    DG = build(resnet18, x)
    plan = DG.get_pruning_plan(resnet18.conv1, tp.prune_conv, idxs=[2, 6, 9])
    assert names_in(plan) == set(SEED_MEMBERS)
    plan.exec()
    assert resnet18.conv1.out_channels == 61
    check_result(original, resnet18, x, shapes)


@pytest.mark.parametrize(
    ("idxs", "match"),
    [
        (None, r"pruning indices for conv1 must be a list, tuple, range or tensor of integers, got NoneType"),
        ("0, 1", r"pruning indices for conv1 must be a list, .* got str '0, 1'"),
        (0.5, r"got float 0.5"),
        (["a", "b"], r"pruning indices for conv1 must be integers, got \['a', 'b'\]"),
        ([0.5, 1.5], r"must be integers, got dtype torch.float"),
    ],
)
def test_indices_that_are_not_integers_are_refused(resnet18, x, idxs, match):
    DG = build(resnet18, x)
    with pytest.raises(tp.InvalidIndicesError, match=match):
        DG.get_pruning_group(resnet18.conv1, tp.prune_conv_out_channels, idxs)
    group = DG.get_pruning_group(resnet18.conv1, tp.prune_conv_out_channels, [1])
    with pytest.raises(tp.InvalidIndicesError, match="got str"):
        group.prune(idxs="1")
    assert resnet18.conv1.out_channels == 64
    # one integer and integer tensors still work
    assert DG.get_pruning_group(resnet18.conv1, tp.prune_conv_out_channels, 3)[0].idxs == [3]
    assert DG.get_pruning_group(resnet18.conv1, tp.prune_conv_out_channels, torch.tensor([4, 2]))[0].idxs == [2, 4]
