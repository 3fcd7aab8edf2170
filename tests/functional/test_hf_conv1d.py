"""Tests for depgraph/functional/hf_conv1d.py: transformers' ``Conv1D`` (weight (in, out)) as a leaf layer.

Covers the handler alone, its lazy registration (depgraph never imports
transformers), the graph it forms (groups rooted at it by default, ``verify``),
saving a pruned model as data, and its MACs.
"""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

import depgraph as tp
from depgraph.errors import HandlerMismatchError, InvalidIndicesError, OverPruningError
from depgraph.functional import (
    Conv1DPruner,
    find_handler,
    prune_conv1d_in_channels,
    prune_conv1d_out_channels,
)
from tests._checks import prune_and_verify

from ._checks import assert_identity_and_grads, assert_refused, assert_restricts, mark_grads

Conv1D = pytest.importorskip("transformers.pytorch_utils").Conv1D


def _conv1d(nx: int = 5, nf: int = 4) -> nn.Module:
    torch.manual_seed(0)
    layer = Conv1D(nf, nx).double()
    with torch.no_grad():
        layer.bias.normal_()  # transformers starts it at zero, which would hide a wrong bias slice
    return layer


class _Mlp(nn.Module):
    """GPT-2's MLP shape: Conv1D up, GELU, Conv1D down."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.c_fc, self.act, self.c_proj = Conv1D(12, 6), nn.GELU(), Conv1D(6, 12)
        for m in (self.c_fc, self.c_proj):
            nn.init.normal_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.act(self.c_fc(x))) + x


def test_out_features_are_weight_columns_and_bias():
    layer = _conv1d()
    original, params = copy.deepcopy(layer), mark_grads(layer)
    assert prune_conv1d_out_channels(layer, [3, 0]) is layer
    assert layer.weight.shape == (5, 2) and layer.bias.shape == (2,) and layer.nf == 2 and layer.nx == 5
    assert_identity_and_grads(layer, params)
    assert_restricts(original, layer, torch.randn(2, 3, 5, dtype=torch.float64), out_dim=2, out_idxs=[0, 3])


def test_in_features_are_weight_rows():
    layer = _conv1d()
    original, params = copy.deepcopy(layer), mark_grads(layer)
    prune_conv1d_in_channels(layer, [1, 4])
    assert layer.weight.shape == (3, 4) and layer.bias.shape == (4,) and (layer.nf, layer.nx) == (4, 3)
    assert_identity_and_grads(layer, params)
    assert_restricts(original, layer, torch.randn(2, 3, 5, dtype=torch.float64), in_dim=2, in_idxs=[1, 4])


def test_handler_is_registered_and_reports_widths():
    layer = _conv1d(nx=5, nf=4)
    h = find_handler(layer)
    assert h is Conv1DPruner.INSTANCE and h.acts_as is nn.Linear
    assert (h.get_in_channels(layer), h.get_out_channels(layer)) == (5, 4)
    assert h.in_channel_dim(layer, 3) == 2 and h.out_channel_dim(layer, 3) == 2


def test_linear_functions_hand_a_conv1d_to_its_own_handler():
    a, b = _conv1d(), _conv1d()
    tp.prune_linear_out_channels(a, [1])
    tp.prune_linear_in_channels(a, [0, 2])
    prune_conv1d_out_channels(b, [1])
    prune_conv1d_in_channels(b, [0, 2])
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias) and (a.nf, a.nx) == (b.nf, b.nx)


@pytest.mark.parametrize(
    ("fn", "idxs", "exc", "match"),
    [
        (prune_conv1d_out_channels, [4], InvalidIndicesError, "out of range for the 4 out channels of Conv1D"),
        (prune_conv1d_in_channels, [-1], InvalidIndicesError, "negative pruning index -1"),
        (prune_conv1d_out_channels, range(4), OverPruningError, "all 4 out channels"),
        (prune_conv1d_in_channels, range(5), OverPruningError, "all 5 in channels"),
    ],
)
def test_invalid_indices_are_refused(fn, idxs, exc, match):
    assert_refused(fn, _conv1d(), idxs, exc, match)


def test_a_linear_is_refused_by_the_conv1d_handler():
    assert_refused(prune_conv1d_out_channels, nn.Linear(3, 3), [0], HandlerMismatchError, "Conv1DPruner prunes Conv1D")


def test_registration_waits_for_transformers_and_never_imports_it():
    code = (
        "import sys, depgraph as tp\n"
        "from depgraph.functional import registered_handlers\n"
        "assert 'transformers' not in sys.modules and len(registered_handlers()) > 0\n"
        "from transformers.pytorch_utils import Conv1D\n"
        "assert tp.functional.find_handler(Conv1D(3, 2)) is tp.functional.Conv1DPruner.INSTANCE\n"
        "print('ok')\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stderr


def test_graph_couples_up_and_down_projections_exactly():
    model, x = _Mlp().double(), torch.randn(2, 3, 6, dtype=torch.float64)
    pruned = prune_and_verify(model, x, model.c_fc, prune_conv1d_out_channels, [0, 5, 7])
    group = pruned.groups[0]
    assert [(d.target.name, d.handler) for d, _ in group] == [
        ("c_fc", prune_conv1d_out_channels), ("c_proj", prune_conv1d_in_channels)]
    assert model.c_fc.weight.shape == (6, 9) and model.c_proj.weight.shape == (9, 6)


def test_pruner_roots_groups_at_conv1d_by_default():
    model, x = _Mlp().double(), torch.randn(2, 3, 6, dtype=torch.float64)
    original = copy.deepcopy(model)
    pruner = tp.pruner.BasePruner(model, x, tp.importance.GroupMagnitudeImportance(), pruning_ratio=0.5,
                                  ignored_layers=[model.c_proj])
    pruner.step()
    assert model.c_fc.nf == 6 and model.c_proj.nx == 6
    assert tp.verify(original, model, x).exact


def test_soft_pruning_zeroes_conv1d_columns_like_the_hard_prune():
    """Soft pruning finds a Conv1D's out channels in weight dim 1 (its channel slices)."""
    x = torch.randn(2, 3, 6, dtype=torch.float64)
    outs = []
    for soft in (False, True):
        model = _Mlp().double()
        tp.pruner.BasePruner(model, x, tp.importance.GroupMagnitudeImportance(), pruning_ratio=0.5,
                             ignored_layers=[model.c_proj], soft_pruning=soft).step()
        outs.append(model(x).detach())
    assert model.c_fc.weight.shape == (6, 12) and int((model.c_fc.weight == 0).all(0).sum()) == 6
    torch.testing.assert_close(outs[0], outs[1])


def test_state_dict_round_trip_rebuilds_the_pruned_shapes(tmp_path):
    model, x = _Mlp().double(), torch.randn(2, 3, 6, dtype=torch.float64)
    prune_and_verify(model, x, model.c_proj, tp.prune_linear_in_channels, [2, 3])
    tp.save(model, tmp_path / "pruned.pt")
    fresh = tp.load(_Mlp().double(), tmp_path / "pruned.pt")
    assert (fresh.c_fc.nf, fresh.c_proj.nx) == (10, 10)
    torch.testing.assert_close(fresh(x), model(x))


def test_macs_are_counted_like_the_equivalent_linear():
    """in * out products per token plus the bias, as for nn.Linear; they follow a prune."""
    layer, x = _conv1d(nx=5, nf=4), torch.randn(1, 3, 5, dtype=torch.float64)
    linear = nn.Linear(5, 4).double()
    assert tp.utils.count_ops_and_params(layer, x) == tp.utils.count_ops_and_params(linear, x) == (3 * 5 * 4 + 3 * 4, 24)
    prune_conv1d_out_channels(layer, [0])
    prune_conv1d_in_channels(layer, [0, 1])
    assert tp.utils.count_ops_and_params(layer, x[..., 2:]) == (3 * 3 * 3 + 3 * 3, 3 * 3 + 3)
