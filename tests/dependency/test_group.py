"""Groups (depgraph/dependency/group.py): the plan they expose, and the prunes they refuse.

A group is a pure plan until ``prune()``. Every refusal is a typed
``DepgraphError`` naming the layer and the problem, raised before anything
changes.
"""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn as nn

import depgraph as tp

from .._checks import assert_refused_unchanged, build, member, model_state, prune_and_verify

OUT, IN = tp.prune_conv_out_channels, tp.prune_conv_in_channels


class Net(nn.Module):
    """stem -> cat(a, b) -> head, plus an unused layer."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.a, self.b = nn.Conv2d(6, 4, 1), nn.Conv2d(6, 5, 1)
        self.head = nn.Conv2d(9, 2, 1)
        self.unused = nn.Conv2d(2, 2, 1)

    def forward(self, x):
        y = self.stem(x)
        return self.head(torch.relu(torch.cat([self.a(y), self.b(y)], 1)))


@pytest.fixture
def net() -> Net:
    return Net().eval()


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(2, 3, 5, 5)


# -- the plan -------------------------------------------------------------------------------


def test_iteration_length_and_root(net, x):
    DG = build(net, x)
    group = DG.get_pruning_group(net.b, OUT, [1, 3])
    assert len(group) == len(group.items) == 2
    pairs = list(group)
    assert all(isinstance(p, tuple) and len(p) == 2 for p in pairs)
    root_dep, root_idxs = group[0]
    assert root_dep.target.module is net.b and root_dep.handler is OUT and root_idxs == [1, 3]
    dep, idxs = group[1]
    assert dep.target.module is net.head and dep.handler is IN and idxs == [5, 7]
    assert dep.source.module is net.b and dep.trigger is OUT and dep.layer is net.head
    assert group.has_dep(dep) and group.has_pruning_op(dep, [5])
    assert not group.has_pruning_op(dep, [4])


def test_root_idxs_map_members_to_root_channels(net, x):
    DG = build(net, x)
    group = DG.get_pruning_group(net.head, IN, [7, 5])
    assert group[0].idxs == [5, 7] and group[0].root_idxs == [5, 7]
    b = next(it for it in group.items if it.dep.target.module is net.b)
    assert b.idxs == [1, 3] and b.root_idxs == [5, 7]


def test_root_idxs_of_a_widened_member(x):
    """Flattening 2 channels of 3x3 into a Linear: 9 inputs per root channel."""
    model = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.Flatten(), nn.Linear(2 * 25, 4))
    DG = build(model, x)
    group = DG.get_pruning_group(model[0], OUT, [1])
    fc = next(it for it in group.items if it.dep.target.module is model[2])
    assert fc.idxs == list(range(25, 50)) and fc.root_idxs == [1] * 25


def test_details_format(net, x):
    DG = build(net, x)
    group = DG.get_pruning_group(net.stem[0], OUT, [0, 2])
    text = group.details()
    assert str(group) == text
    rows = [line for line in text.splitlines() if line.startswith("[")]
    assert len(rows) == len(group)
    row = re.compile(r"^\[(\d+)\] (prune_\w+) on ([\w.]+) \((.+)\) => (prune_\w+) on ([\w.]+) \((.+)\), "
                     r"idxs \((\d+)\) = \[([\d, ]*)\]( \(root\))?$")
    for i, (line, (dep, idxs)) in enumerate(zip(rows, group, strict=True)):
        m = row.match(line)
        assert m, line
        assert int(m[1]) == i and m[2] == "prune_conv_out_channels" and m[3] == "stem.0"
        assert m[6] == dep.target.name and int(m[8]) == len(idxs) and m[9] == ", ".join(map(str, idxs))
        assert bool(m[10]) == (i == 0)
    assert "stem.0 (Conv2d(3, 6, kernel_size=(3, 3)" in rows[0]
    assert "prune_batchnorm_out_channels on stem.1" in text
    assert repr(group) == f"<Group stem.0, 2 channels, {len(group)} members>"
    assert repr(group[1].dep).startswith("[DEP] prune_conv_out_channels on stem.0 => ")


def test_details_says_why_a_group_is_refused(net, x):
    DG = build(net, x, frozen_layers=[net.head])
    group = DG.get_pruning_group(net.head, IN, [0])
    assert "not prunable: head is in frozen_layers" in group.details()


def test_prune_with_new_root_idxs(net, x):
    DG = build(net, x)
    group = next(g for g in DG.get_all_groups() if g[0].dep.target.module is net.stem[0])
    assert group[0].idxs == list(range(6))
    group.prune(idxs=[4])
    assert net.stem[0].out_channels == 5 and net.a.in_channels == 5 and net.b.in_channels == 5
    assert DG.pruning_history() == [["stem.0", True, [4]]]


def test_duplicate_idxs_are_deduplicated(net, x):
    DG = build(net, x)
    group = DG.get_pruning_group(net.b, OUT, [3, 1, 3, 1])
    assert group[0].idxs == [1, 3] and member(group, net.head, out=False) == [5, 7]
    model = Net()
    prune_and_verify(model, x, model.b, OUT, [3, 1, 3, 1])
    assert model.b.out_channels == 3 and model.head.in_channels == 7


def test_tensor_idxs(net, x):
    DG = build(net, x)
    group = DG.get_pruning_group(net.b, OUT, torch.tensor([[4], [0]]))
    assert group[0].idxs == [0, 4]


def test_empty_idxs_are_a_no_op(net, x):
    DG = build(net, x)
    before = model_state(net)
    group = DG.get_pruning_group(net.b, OUT, [])
    assert DG.check_pruning_group(group)
    group.prune()
    assert model_state(net) == before and DG.pruning_history() == []


def test_indices_are_current_after_earlier_prunes():
    """After removing channel 1, the old channel 4 is channel 3."""
    net = Net()
    x = torch.randn(2, 3, 5, 5)
    done = prune_and_verify(net, x, net.stem[0], OUT, [1])
    group = done.DG.get_pruning_group(net.stem[0], OUT, [3])
    assert group[0].idxs == [3]
    group.prune()
    assert net.stem[0].out_channels == 4 and net.stem[0].__dict__["_depgraph_kept"]["out"].tolist() == [0, 2, 3, 5]


# -- refusals -------------------------------------------------------------------------------


@pytest.mark.parametrize(("idxs", "match"), [
    ([-1], r"index -1 is out of range for the 5 output channels of b"),
    ([0, 5], r"index 5 is out of range for the 5 output channels of b"),
])
def test_bad_indices(net, x, idxs, match):
    DG = build(net, x)
    assert_refused_unchanged(net, lambda: DG.get_pruning_group(net.b, OUT, idxs), tp.InvalidIndicesError, match, DG)


def test_input_side_bad_indices(net, x):
    DG = build(net, x)
    assert_refused_unchanged(net, lambda: DG.get_pruning_group(net.head, IN, [9]), tp.InvalidIndicesError,
                             "index 9 is out of range for the 9 input channels of head", DG)


def test_float_indices_are_refused(net, x):
    DG = build(net, x)
    with pytest.raises(tp.InvalidIndicesError, match="must be integers"):
        DG.get_pruning_group(net.b, OUT, [1.7])


def test_pruning_every_channel(net, x):
    DG = build(net, x)
    group = DG.get_pruning_group(net.b, OUT, range(5))
    assert not DG.check_pruning_group(group)
    info = assert_refused_unchanged(net, group.prune, tp.OverPruningError, r"b would lose all 5 channels", DG)
    assert "group rooted at b" in str(info.value)


def test_pruning_every_channel_of_one_member_only(net, x):
    """head keeps 5 of its 9 inputs, but a (the first 4, via the cat) would be emptied."""
    DG = build(net, x)
    group = DG.get_pruning_group(net.head, IN, [0, 1, 2, 3])
    assert not DG.check_pruning_group(group)
    info = assert_refused_unchanged(net, group.prune, tp.OverPruningError, r"a would lose all 4 channels", DG)
    assert "head would" not in str(info.value)


def test_module_not_in_graph(net, x):
    DG = build(net, x)
    for module in (nn.Conv2d(2, 2, 1), net.unused):
        assert_refused_unchanged(net, lambda m=module: DG.get_pruning_group(m, OUT, [0]), tp.UnknownModuleError,
                                 r"Conv2d is not in the dependency graph.*called during the traced forward", DG)


def test_module_without_handler(net, x):
    DG = build(net, x)
    with pytest.raises(tp.UnknownModuleError, match="ReLU is not in the dependency graph"):
        DG.get_pruning_group(net.stem[2], OUT, [0])


@pytest.mark.parametrize(("target", "fn", "match"), [
    ("stem.0", tp.prune_linear_out_channels, r"LinearPruner does not fit stem.0 \(Conv2d\)"),
    ("stem.1", tp.prune_conv_out_channels, r"ConvPruner does not fit stem.1 \(BatchNorm2d\)"),
    ("head", tp.prune_batchnorm_in_channels, r"does not fit head \(Conv2d\); use the pruning function for Conv2d"),
])
def test_pruning_function_that_does_not_fit(net, x, target, fn, match):
    DG = build(net, x)
    module = net.get_submodule(target)
    assert_refused_unchanged(net, lambda: DG.get_pruning_group(module, fn, [0]), tp.HandlerMismatchError, match, DG)


def test_example_inputs_the_model_cannot_run(net):
    with pytest.raises(tp.TraceError, match=r"the model failed on the example inputs \(RuntimeError: .*channels"):
        build(net, torch.randn(1, 4, 5, 5))
    with pytest.raises(tp.TraceError, match=r"failed on the example inputs \(TypeError: .*unexpected keyword"):
        build(net, {"image": torch.randn(1, 3, 5, 5)})


def test_queries_before_build(net):
    DG = tp.DependencyGraph()
    with pytest.raises(tp.DepgraphError, match=r"call build_dependency\(model, example_inputs\) first"):
        DG.get_pruning_group(net.b, OUT, [0])
    with pytest.raises(tp.DepgraphError, match="call build_dependency"):
        list(DG.get_all_groups())


def test_errors_are_one_family():
    for exc in (tp.TraceError, tp.UnsupportedOpError, tp.InvalidIndicesError, tp.OverPruningError,
                tp.UnknownModuleError, tp.HandlerMismatchError):
        assert issubclass(exc, tp.DepgraphError) and issubclass(exc, RuntimeError)
    assert issubclass(tp.InvalidIndicesError, IndexError) and issubclass(tp.UnknownModuleError, KeyError)
    assert issubclass(tp.HandlerMismatchError, TypeError)
