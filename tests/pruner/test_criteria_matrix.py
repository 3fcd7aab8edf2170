"""Every importance criterion with every pruner on resnet18, local and global, proven with verify.

The default run covers each criterion once with ``BasePruner`` (locally; a
few globally) and each regularising pruner once; the full cross of criteria,
pruners and local/global ranking is marked ``slow``.
"""

import copy

import pytest
import torch
import torchvision

import depgraph.pruner as P
from tests._checks import check_result, output_shapes
from tests.pruner.conftest import CRITERIA, prepare
from tests.zoo._zoo import randomize_norms

X = torch.randn(2, 3, 32, 32)
PRUNERS = {
    "base": P.BasePruner,
    "bn_scale": P.BNScalePruner,
    "group_norm": P.GroupNormPruner,
    "growing_reg": P.GrowingRegPruner,
}


def run(criterion, pruner_name, global_pruning):
    model = torchvision.models.resnet18(weights=None).eval()
    randomize_norms(model)  # fresh BNs all have scale 1: every BN-scale score would tie
    original = copy.deepcopy(model)
    shapes = output_shapes(model, X)
    imp = CRITERIA[criterion]()
    pruner = PRUNERS[pruner_name](
        model, X, imp, pruning_ratio=0.5, global_pruning=global_pruning, ignored_layers=[model.fc]
    )
    if pruner_name != "base":
        model.zero_grad()
        model(X).sum().backward()
        pruner.regularize(model)
    prepare(imp, model, X)
    widths = {m: pruner.DG.get_out_channels(m) for m in pruner.initial_widths()}
    pruner.step()
    after = {m: pruner.DG.get_out_channels(m) for m in pruner.initial_widths()}
    if global_pruning:
        assert sum(after.values()) == sum(widths.values()) // 2
    else:
        assert all(after[m] == widths[m] // 2 for m in widths)
    check_result(original, model, X, shapes, exact=True)


@pytest.mark.parametrize("criterion", sorted(CRITERIA))
def test_each_criterion_local(criterion):
    run(criterion, "base", False)


@pytest.mark.parametrize("criterion", ["magnitude", "bn_scale", "lamp", "taylor"])
def test_global_criteria(criterion):
    run(criterion, "base", True)


@pytest.mark.parametrize("pruner_name", ["bn_scale", "group_norm", "growing_reg"])
def test_each_regularizing_pruner(pruner_name):
    run("magnitude", pruner_name, False)


@pytest.mark.slow
@pytest.mark.parametrize("global_pruning", [False, True], ids=["local", "global"])
@pytest.mark.parametrize("pruner_name", sorted(PRUNERS))
@pytest.mark.parametrize("criterion", sorted(CRITERIA))
def test_full_cross(criterion, pruner_name, global_pruning):
    run(criterion, pruner_name, global_pruning)
