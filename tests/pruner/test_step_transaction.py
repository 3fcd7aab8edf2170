"""A pruner step is one transaction with one forward check (pruner/base.py, DependencyGraph.prune_groups).

A step whose result no longer runs is never handed back: the groups that break
the forward pass are found by bisection, left unpruned (and frozen for later
steps), named in a warning, and the other groups stay pruned. The real case is
torchvision's RAFT (slow); ``GuardedNet`` is the fast analogue: its forward
refuses widths the graph cannot see (a comparison written in Python).
"""

from __future__ import annotations

import copy
import time
import warnings

import pytest
import torch
import torch.nn as nn

import depgraph as tp

from .._checks import check_result, output_shapes


class GuardedNet(nn.Module):
    """Two branches whose forward checks a minimum width, like RAFT's context encoder does."""

    def __init__(self) -> None:
        super().__init__()
        self.feat = nn.Conv2d(3, 16, 3, padding=1)
        self.head = nn.Conv2d(16, 4, 1)
        self.context = nn.Conv2d(3, 8, 1)
        self.mix = nn.Conv2d(8, 4, 1)
        self.gate = nn.Conv2d(3, 8, 1)
        self.out = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        c = self.context(x)
        if c.shape[1] <= 4:
            raise ValueError(f"the context encoder outputs {c.shape[1]} channels, but it should have strictly "
                             "more than hidden_state=4")
        g = self.gate(x)
        if g.shape[1] < 6:
            raise ValueError(f"the gate needs at least 6 channels, got {g.shape[1]}")
        return self.head(torch.relu(self.feat(x))) + self.mix(torch.relu(c)) + self.out(torch.sigmoid(g))


def _guarded() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return GuardedNet().eval(), torch.randn(2, 3, 8, 8)


def test_a_step_keeps_the_groups_that_break_the_forward_and_prunes_the_rest():
    model, x = _guarded()
    original, shapes = copy.deepcopy(model), output_shapes(model, x)
    pruner = tp.pruner.BasePruner(model, x, tp.importance.GroupMagnitudeImportance(), pruning_ratio=0.5)
    checks = []
    model.register_forward_pre_hook(lambda m, args: checks.append(1))  # one call per forward check
    with pytest.warns(UserWarning) as rec:
        pruner.step()
    messages = [str(w.message) for w in rec if "left the group" in str(w.message)]
    assert len(messages) == 2
    assert "context (removing 4 channels)" in messages[0] and "strictly more than hidden_state=4" in messages[0]
    assert "gate (removing 4 channels)" in messages[1] and "at least 6 channels" in messages[1]
    assert (model.feat.out_channels, model.context.out_channels, model.gate.out_channels) == (8, 8, 8)
    assert [h[0] for h in pruner.pruning_history()] == ["feat"]
    check_result(original, model, x, shapes)  # runs, and verify is exact on what was pruned
    # The skipped groups are frozen: a later step does not try them again (nothing left to prune: no check).
    n = len(checks)
    pruner.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pruner.step()
    assert model.context.out_channels == 8 and len(checks) == n


def test_one_forward_check_per_step_not_per_group():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 1),
                          nn.Flatten(), nn.Linear(8 * 4 * 4, 3)).eval()  # flatten: shape-sensitive groups
    x = torch.randn(1, 3, 4, 4)
    pruner = tp.pruner.BasePruner(model, x, tp.importance.GroupMagnitudeImportance(), pruning_ratio=0.25,
                                  ignored_layers=[model[6]])
    calls = []
    model.register_forward_pre_hook(lambda m, args: calls.append(1))
    pruner.step()
    assert len(pruner.pruning_history()) == 3 and len(calls) == 1


def test_a_step_snapshots_the_model_once_not_every_group_again(monkeypatch):
    """The step's whole-model snapshot restores whatever a failing group touched; the groups inside it
    snapshot nothing of their own (a failure still restores the model bit for bit: see
    tests/dependency/test_transaction_faults.py). A lone prune snapshots its own members."""
    import torchvision

    from depgraph.dependency import transaction

    from .._checks import count_calls

    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    x = torch.randn(1, 3, 32, 32)
    pruner = tp.pruner.BasePruner(model, x, tp.importance.GroupMagnitudeImportance(), pruning_ratio=0.25,
                                  ignored_layers=[model.fc])
    snapshots = count_calls(monkeypatch, transaction, "Snapshot")
    pruner.step()
    assert len(pruner.pruning_history()) > 5 and len(snapshots) == 1
    snapshots.clear()
    pruner.DG.get_pruning_group(model.conv1, tp.prune_conv_out_channels, [0]).prune()
    assert len(snapshots) == 1 and model.conv1.out_channels == 47
    assert model(x).shape == (1, 1000)


def test_interactive_steps_commit_group_by_group():
    """Documented choice: with interactive=True every group is its own transaction; stopping the loop
    early keeps the groups pruned so far, and the model runs."""
    model, x = _guarded()
    pruner = tp.pruner.BasePruner(model, x, tp.importance.GroupMagnitudeImportance(), pruning_ratio=0.25)
    for group in pruner.step(interactive=True):
        group.prune()
        break
    assert len(pruner.pruning_history()) == 1
    model(x)


@pytest.mark.slow
def test_raft_large_prunes_everything_but_the_context_encoder_group():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.optical_flow.raft_large(weights=None).eval()
    x = (torch.randn(1, 3, 128, 128), torch.randn(1, 3, 128, 128))

    def forward_fn(m, inputs):  # fewer refinement iterations: the same layers, a cheaper check
        return m(*inputs, num_flow_updates=2)

    start = time.time()
    pruner = tp.pruner.BasePruner(model, x, tp.importance.GroupMagnitudeImportance(), pruning_ratio=0.5,
                                  forward_fn=forward_fn)
    with pytest.warns(UserWarning) as rec:
        pruner.step()
    skipped = [str(w.message) for w in rec if "left the group" in str(w.message)]
    assert len(skipped) == 1 and "context_encoder.conv" in skipped[0]
    assert "strictly more than hidden_state=128" in skipped[0]
    assert model.context_encoder.conv.out_channels == 256
    assert model.feature_encoder.conv.out_channels < 256  # the rest was pruned
    with torch.no_grad():
        flows = forward_fn(model, x)
    assert flows[-1].shape == (1, 2, 128, 128)
    assert time.time() - start < 900


def test_a_lone_prune_that_breaks_a_size_check_written_in_python_is_refused():
    """``if c.shape[1] <= 4: raise`` is Python control flow no rule sees: the trace notes every size
    the forward compared, and a prune of such a dim runs the model before it commits."""
    model, x = _guarded()
    original = copy.deepcopy(model)
    DG = tp.DependencyGraph().build_dependency(model, x)
    group = DG.get_pruning_group(model.context, tp.prune_conv_out_channels, [0, 1, 2, 3])
    with pytest.raises(tp.errors.UnsupportedOpError, match="strictly more than hidden_state=4"):
        group.prune()
    for (name, a), b in zip(model.state_dict().items(), original.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    with pytest.raises(tp.errors.UnsupportedOpError, match="breaks the forward pass"):  # frozen from now on
        DG.get_pruning_group(model.context, tp.prune_conv_out_channels, [0]).prune()
    DG.get_pruning_group(model.feat, tp.prune_conv_out_channels, [0, 1]).prune()  # no size check: no forward
    assert model.context.out_channels == 8 and model.feat.out_channels == 14 and model(x).shape == (2, 4, 8, 8)


def test_a_step_runs_no_forward_check_when_every_group_is_exact_by_construction():
    """Plain channel couplings (convs, norms, adds, flatten into a linear) are exact by construction:
    a ResNet step prunes without running the model; ``verify`` proves the result."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    x = torch.randn(1, 3, 32, 32)
    original, shapes = copy.deepcopy(model), output_shapes(model, x)
    pruner = tp.pruner.BasePruner(model, x, tp.importance.GroupMagnitudeImportance(), pruning_ratio=0.5,
                                  ignored_layers=[model.fc])
    calls = []
    model.register_forward_pre_hook(lambda m, args: calls.append(1))
    pruner.step()
    assert calls == [] and len(pruner.pruning_history()) > 5
    check_result(original, model, x, shapes)
