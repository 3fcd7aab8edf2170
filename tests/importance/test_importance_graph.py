"""Criteria on groups from the real dependency graph (resnet18 and a grouped conv)."""

import pytest
import torch
import torch.nn as nn
import torchvision

import depgraph as tp
import depgraph.importance as I


@pytest.fixture(scope="module")
def resnet():
    model = torchvision.models.resnet18(weights=None).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.1, 2.0)
    DG = tp.DependencyGraph().build_dependency(model, torch.randn(1, 3, 32, 32))
    return model, DG


def test_stack_rows_match_each_member(resnet):
    model, DG = resnet
    conv = model.layer2[0].conv1
    group = DG.get_pruning_group(conv, tp.prune_conv_out_channels, list(range(128)))
    stack = I.GroupMagnitudeImportance(group_reduction=None, normalizer=None)(group)
    expected = [
        conv.weight.detach().pow(2).flatten(1).sum(1),
        model.layer2[0].bn1.weight.detach().pow(2),
        model.layer2[0].conv2.weight.detach().pow(2).transpose(0, 1).flatten(1).sum(1),
    ]
    assert stack.shape == (3, 128)
    for row, want in zip(stack, expected, strict=True):
        torch.testing.assert_close(row, want)


def test_partial_group_scores_follow_root_idxs(resnet):
    model, DG = resnet
    full = DG.get_pruning_group(model.conv1, tp.prune_conv_out_channels, list(range(64)))
    part = DG.get_pruning_group(model.conv1, tp.prune_conv_out_channels, [9, 2, 6])
    imp = I.GroupMagnitudeImportance(normalizer=None)
    scores = imp(part)
    assert scores.shape == (3,)
    torch.testing.assert_close(scores, imp(full)[part[0].idxs])


def test_residual_group_mean_over_all_members(resnet):
    model, DG = resnet
    group = next(iter(DG.get_all_groups()))  # the stem + layer1 residual group
    stack = I.GroupMagnitudeImportance(group_reduction=None, normalizer=None)(group)
    mean = I.GroupMagnitudeImportance(normalizer=None)(group)
    torch.testing.assert_close(mean, stack.mean(0))
    targets = [d for d, _ in group if isinstance(d.target.module, I.DEFAULT_TARGET_TYPES)]
    assert stack.shape[0] == len(targets) > 5


def test_grouped_conv_group_uses_exact_block_rows():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.Conv2d(8, 2, 1)
    ).eval()
    DG = tp.DependencyGraph().build_dependency(model, torch.randn(1, 3, 6, 6))
    group = DG.get_pruning_group(model[0], tp.prune_conv_out_channels, list(range(8)))
    stack = I.GroupMagnitudeImportance(p=1, group_reduction=None, normalizer=None)(group)
    w = model[1].weight.detach().abs()  # (8, 4, 3, 3): in-channel c of block c // 4 at local c % 4
    want = torch.stack([w[4 * (c // 4) : 4 * (c // 4) + 4, c % 4].sum() for c in range(8)])
    rows = [r for r in stack if torch.allclose(r, want)]
    assert len(rows) == 1
