"""Tests of depgraph/utils/print_tool.py."""

import pytest
import torch.nn as nn

from depgraph.errors import DepgraphError
from depgraph.utils import print_tool
from depgraph.utils.print_tool import PrintTool


def test_changed_lines_show_old_and_new(capsys):
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
    print_tool.before_pruning(model)
    model[0] = nn.Conv2d(3, 4, 3)
    model[1] = nn.BatchNorm2d(4)
    text = print_tool.after_pruning(model)
    assert capsys.readouterr().out.strip() == text
    assert (
        "Conv2d(3, 8, kernel_size=(3, 3), stride=(1, 1)) => Conv2d(3, 4, kernel_size=(3, 3), stride=(1, 1))"
        in text
    )
    assert "BatchNorm2d(8, eps" in text and "=> BatchNorm2d(4, eps" in text
    relu_line = next(line for line in text.splitlines() if "(2):" in line)
    assert "=>" not in relu_line


def test_only_changes_and_missing_snapshot():
    tool = PrintTool()
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    with pytest.raises(DepgraphError, match="call print_tool.before_pruning"):
        tool.after_pruning(model)
    tool.before_pruning(model)
    model[1] = nn.Linear(4, 1)
    text = tool.after_pruning(model, show_identical=False, print_fn=None)
    assert text.splitlines() == [
        "  (1): Linear(in_features=4, out_features=2, bias=True)"
        " => Linear(in_features=4, out_features=1, bias=True)"
    ]


def test_after_a_real_prune():
    import torch
    import torchvision

    import depgraph.importance as I
    import depgraph.pruner as P

    model = torchvision.models.resnet18(weights=None).eval()
    tool = PrintTool()
    tool.before_pruning(model)
    P.BasePruner(
        model,
        torch.randn(1, 3, 32, 32),
        I.GroupMagnitudeImportance(),
        pruning_ratio=0.5,
        ignored_layers=[model.fc],
    ).step()
    text = tool.after_pruning(model, show_identical=False, print_fn=None)
    assert (
        "(conv1): Conv2d(3, 64, kernel_size=(7, 7)" in text and "=> Conv2d(3, 32, kernel_size=(7, 7)" in text
    )
    assert "(fc): Linear(in_features=512, out_features=1000, bias=True) => Linear(in_features=256" in text
