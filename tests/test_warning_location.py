"""Warnings name the user's line, whatever depth of depgraph frames lies between (``depgraph._caller``).

A fixed ``stacklevel`` fits one call path only: the same warning raised through
a pruner subclass, a graph built inside a pruner or a nested helper then named a
depgraph file (or ``sys:1``) instead of the line that asked for the work.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import depgraph as tp

torchvision = pytest.importorskip("torchvision")


def _caught(fn) -> list[warnings.WarningMessage]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn()
    return caught


@pytest.mark.parametrize("cls", [tp.pruner.BasePruner, tp.pruner.GroupNormPruner])
def test_an_ignored_head_option_warns_at_the_pruner_call(cls) -> None:
    model = torchvision.models.resnet18()
    caught = _caught(lambda: cls(model, torch.randn(1, 3, 32, 32), tp.importance.GroupMagnitudeImportance(),
                                 head_pruning_ratio=0.3, ignored_layers=[model.fc]))
    mine = [w for w in caught if "without prune_num_heads=True" in str(w.message)]
    assert len(mine) == 1 and mine[0].filename == __file__


def test_pruning_the_outputs_warns_at_the_prune_call() -> None:
    model = torchvision.models.resnet18()
    graph = tp.DependencyGraph().build_dependency(model, torch.randn(1, 3, 32, 32))
    group = graph.get_pruning_group(model.fc, tp.prune_linear_out_channels, idxs=[0, 1])
    caught = _caught(group.prune)
    mine = [w for w in caught if "changes the shape of the model's outputs" in str(w.message)]
    assert len(mine) == 1 and mine[0].filename == __file__


def test_loading_a_pickled_model_warns_at_the_load_call(tmp_path) -> None:
    model = torchvision.models.resnet18()
    torch.save(model, tmp_path / "whole.pth")
    caught = _caught(lambda: tp.load(tmp_path / "whole.pth"))
    mine = [w for w in caught if "not weights-only" in str(w.message)]
    assert len(mine) == 1 and mine[0].filename == __file__
