"""Criteria and bias compensation read transformers' ``Conv1D`` (weight (in, out)) along the right dims.

A ``Conv1D`` MLP and an ``nn.Linear`` MLP holding the transposed weights compute
the same function, so every criterion must give both the same scores and bias
compensation the same correction; a criterion reading the wrong weight dim (or
skipping the layer) gives different numbers.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import depgraph as tp
from tests._checks import build

Conv1D = pytest.importorskip("transformers.pytorch_utils").Conv1D


class _Mlp(nn.Module):
    def __init__(self, up: nn.Module, down: nn.Module) -> None:
        super().__init__()
        self.up, self.act, self.down = up, nn.GELU(), down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.act(self.up(x)))


def _pair() -> tuple[_Mlp, _Mlp]:
    torch.manual_seed(0)
    conv = _Mlp(Conv1D(12, 6), Conv1D(6, 12)).double()
    lin = _Mlp(nn.Linear(6, 12), nn.Linear(12, 6)).double()
    with torch.no_grad():
        for c, n in ((conv.up, lin.up), (conv.down, lin.down)):
            c.bias.normal_()
            n.weight.copy_(c.weight.t())
            n.bias.copy_(c.bias)
    return conv, lin


def _x() -> torch.Tensor:
    return torch.randn(4, 5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def _group(model: _Mlp) -> tp.Group:
    DG = build(model, _x())
    return DG.get_pruning_group(model.up, tp.prune_linear_out_channels, list(range(12)))


@pytest.mark.parametrize("criterion", [
    lambda: tp.importance.GroupMagnitudeImportance(p=2),
    lambda: tp.importance.GroupMagnitudeImportance(p=1, bias=True, normalizer="max"),
    lambda: tp.importance.LAMPImportance(),
    lambda: tp.importance.FPGMImportance(),
    lambda: tp.importance.GroupTaylorImportance(),
    lambda: tp.importance.ActivationWeightImportance(),
    lambda: tp.importance.FluctuationImportance(),
], ids=["magnitude", "magnitude-l1-bias", "lamp", "fpgm", "taylor", "activation_weight", "fluctuation"])
def test_criteria_score_conv1d_like_the_equivalent_linear(criterion):
    scores = []
    for model in _pair():
        imp = criterion()
        if isinstance(imp, tp.importance.GroupTaylorImportance):
            model.zero_grad()
            model(_x()).pow(2).sum().backward()
        if isinstance(imp, tp.importance.CalibratedImportance):
            imp.calibrate(model, _x())
        scores.append(imp(_group(model)))
    conv_scores, linear_scores = scores
    assert conv_scores is not None and conv_scores.shape == (12,)
    torch.testing.assert_close(conv_scores, linear_scores)


def test_activation_and_hessian_criteria_score_conv1d_like_the_equivalent_linear():
    """Input activations are read on the last dim; the Hessian proxy on the weight's own layout."""
    scores = []
    for model in _pair():
        act, hess = tp.importance.ActivationImportance(), tp.importance.GroupHessianImportance()
        with act.compute_importance(model):
            model(_x())
        hess.zero_grad()
        for i in range(2):
            model.zero_grad()
            model(_x()[i:i + 1]).pow(2).sum().backward()
            hess.accumulate_grad(model)
        group = _group(model)
        scores.append((act(group), hess(group)))
    for conv_scores, linear_scores in zip(scores[0], scores[1], strict=True):
        assert conv_scores is not None
        torch.testing.assert_close(conv_scores, linear_scores)


def test_obdc_scores_conv1d_like_the_equivalent_linear():
    """OBDC's Fisher is laid out like the weight: (in, out) for Conv1D."""
    scores = []
    for model in _pair():
        imp = tp.importance.OBDCImportance()
        with imp.collect(model):
            model(_x()).pow(2).sum().backward()
        scores.append(imp(_group(model)))
    assert scores[0] is not None
    torch.testing.assert_close(scores[0], scores[1])


def test_bias_compensation_corrects_conv1d_like_the_equivalent_linear():
    outs = []
    for model in _pair():
        stats = tp.importance.collect_activation_stats(model, _x())
        assert model.down in stats  # calibration records the Conv1D's input, like a Linear's
        group = build(model, _x()).get_pruning_group(model.up, tp.prune_linear_out_channels, [1, 4, 7])
        assert tp.compensate_bias(group, stats) == [model.down]
        group.prune()
        outs.append((model.down.bias.detach().clone(), model(_x())))
    torch.testing.assert_close(outs[0][0], outs[1][0])
    torch.testing.assert_close(outs[0][1], outs[1][1])
