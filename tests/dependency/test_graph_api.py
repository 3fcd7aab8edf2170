"""The public graph API (dependency/graph.py, hooks.py, node.py, group.py).

* plans know their version: stale and re-pruned groups are refused;
* a dependency stores its side when built; pruning functions are recognised by
  identity (a handler with other method names works, a lambda is refused);
* queries: slots, alive positions, widths, translation, coupling, planning in
  original indices; prune hooks with removable handles;
* ``GroupItem`` is a named tuple as in Torch-Pruning.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

import depgraph as tp
from depgraph.dependency import GroupItem
from depgraph.dependency.records import kept_indices
from depgraph.functional import BasePruningFunc, keep_index, prune_tensor

from .._checks import assert_refused_unchanged, build, check_result, output_shapes


def _two_convs() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)).eval(), torch.randn(1, 3, 4, 4)


# -- 3: plans know their version -------------------------------------------------------------


def test_pruning_a_group_twice_is_refused():
    model, x = _two_convs()
    DG = build(model, x)
    g = DG.get_pruning_group(model[0], tp.prune_conv_out_channels, [2, 6])
    g.prune()
    kept = model[0].weight.detach().clone()
    assert_refused_unchanged(model, g.prune, tp.StaleGroupError, "planned on version 0 .* \\(now version 1\\)", DG)
    assert model[0].out_channels == 6 and torch.equal(model[0].weight, kept)
    assert kept_indices(model[0])["out"].tolist() == [0, 1, 3, 4, 5, 7]


def test_a_group_planned_before_another_prune_is_refused():
    model, x = _two_convs()
    DG = build(model, x)
    first = DG.get_pruning_group(model[0], tp.prune_conv_out_channels, [1])
    second = DG.get_pruning_group(model[0], tp.prune_conv_out_channels, [5])
    assert second.version == DG.version == 0
    first.prune()
    assert DG.is_stale(second) and DG.version == 1
    assert_refused_unchanged(model, second.prune, tp.StaleGroupError, "Plan it again", DG)
    fresh = second.replan()  # the same original channel, planned on the model as it is now
    assert fresh.version == 1 and fresh[0].idxs == [4]
    fresh.prune()
    assert model[0].out_channels == 6


def test_groups_of_unrelated_layers_stay_valid_after_each_other():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 1), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    x = torch.randn(1, 3, 4, 4)
    original, shapes = copy.deepcopy(model), output_shapes(model, x)
    DG = build(model, x)
    groups = [DG.get_pruning_group(model[0], tp.prune_conv_out_channels, [1, 2]),
              DG.get_pruning_group(model[2], tp.prune_conv_out_channels, [0, 7])]
    for g in groups:  # a list planned up front, as Torch-Pruning scripts do: disjoint groups both prune
        g.prune()
    assert (model[0].out_channels, model[2].out_channels) == (6, 6)
    check_result(original, model, x, shapes)


def test_a_stale_head_group_is_refused():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.TransformerEncoderLayer(16, 4, 32, batch_first=True)).eval()
    DG = build(model, torch.randn(2, 5, 8))
    from depgraph.dependency import find_module_heads

    block = find_module_heads(DG)[0]
    g = block.group([1])
    g.prune()
    assert_refused_unchanged(model, g.prune, tp.StaleGroupError, "removed heads since", DG)
    assert model[1].self_attn.num_heads == 3


# -- 4, 5: sides by identity, validated pruning functions --------------------------------------


class Gain(nn.Module):
    def __init__(self, n: int):
        super().__init__()
        self.gain = nn.Parameter(torch.rand(n) + 0.5)

    def forward(self, x):
        return x * self.gain.view(1, -1, 1, 1)


class GainPruner(BasePruningFunc):
    """A handler whose methods are named differently from the protocol's."""

    TARGET_MODULES = (Gain,)

    def shrink(self, layer, idxs):
        idxs = self.check_idxs(layer, idxs, "out")
        prune_tensor(layer.gain, 0, keep_index(layer.gain.numel(), idxs))
        return layer

    def width(self, layer):
        return layer.gain.numel()

    prune_out_channels = shrink
    prune_in_channels = shrink
    get_out_channels = width
    get_in_channels = width


class Rows(nn.Module):
    """Like a Linear over channels, with its own handler whose methods have other names."""

    def __init__(self, i: int, o: int):
        super().__init__()
        self.w = nn.Parameter(torch.randn(o, i))

    def forward(self, x):
        return torch.einsum("oi,bihw->bohw", self.w, x)


class RowsPruner(BasePruningFunc):
    TARGET_MODULES = (Rows,)

    def drop_rows(self, layer, idxs):
        idxs = self.check_idxs(layer, idxs, "out")
        prune_tensor(layer.w, 0, keep_index(layer.w.shape[0], idxs))
        return layer

    def drop_cols(self, layer, idxs):
        idxs = self.check_idxs(layer, idxs, "in")
        prune_tensor(layer.w, 1, keep_index(layer.w.shape[1], idxs))
        return layer

    prune_out_channels, prune_in_channels = drop_rows, drop_cols
    get_out_channels = staticmethod(lambda layer: layer.w.shape[0])
    get_in_channels = staticmethod(lambda layer: layer.w.shape[1])


def test_a_handler_with_other_method_names_records_the_right_side():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 1), Gain(8), Rows(8, 6), nn.Conv2d(6, 2, 1)).eval()
    x = torch.randn(1, 3, 5, 5)
    original, shapes = copy.deepcopy(model), output_shapes(model, x)
    rows = RowsPruner()
    DG = build(model, x, customized_pruners={Gain: GainPruner(), Rows: rows})
    assert DG.is_out_channel_pruning_fn(rows.prune_out_channels)
    assert DG.is_in_channel_pruning_fn(rows.prune_in_channels)
    assert not DG.is_out_channel_pruning_fn(rows.prune_in_channels)
    g = DG.get_pruning_group(model[2], rows.prune_out_channels, [0, 4])
    assert {(it.dep.target.name, it.dep.side) for it in g} == {("2", "out"), ("3", "in")}
    g.prune()
    DG.get_pruning_group(model[0], tp.prune_conv_out_channels, [1, 3, 6]).prune()
    assert model[2].w.shape == (4, 5)
    assert kept_indices(model[2])["out"].tolist() == [1, 2, 3, 5]  # on the out side, though named drop_rows
    assert kept_indices(model[2])["in"].tolist() == [0, 2, 4, 5, 7]
    check_result(original, model, x, shapes)  # verify: exact


@pytest.mark.parametrize("fn", [lambda layer, idxs: layer, print, "prune_out_channels", None],
                         ids=["lambda", "builtin", "string", "none"])
def test_any_callable_is_not_a_pruning_function(fn):
    model, x = _two_convs()
    DG = build(model, x)
    assert not DG.is_out_channel_pruning_fn(fn) and not DG.is_in_channel_pruning_fn(fn)
    with pytest.raises(tp.HandlerMismatchError, match="is not a pruning function.* for 0 \\(Conv2d\\)"):
        DG.get_pruning_group(model[0], fn, [0])


def test_sides_are_read_by_identity_not_by_name():
    out = tp.prune_conv_out_channels

    def prune_out_channels(layer, idxs):  # the right name, but no handler behind it
        return out(layer, idxs)

    assert tp.DependencyGraph.is_out_channel_pruning_fn(out)
    assert not tp.DependencyGraph.is_out_channel_pruning_fn(prune_out_channels)
    assert tp.DependencyGraph.is_in_channel_pruning_fn(tp.prune_linear_in_channels)


@pytest.mark.parametrize("idxs", [None, "01"], ids=["none", "string"])
def test_indices_that_are_no_sequence_are_refused(idxs):
    model, x = _two_convs()
    DG = build(model, x)
    with pytest.raises(tp.InvalidIndicesError, match="must be a list, tuple, range or tensor of integers"):
        DG.get_pruning_group(model[0], tp.prune_conv_out_channels, idxs)


# -- 6: public queries and hooks ----------------------------------------------------------------


def test_slot_queries_follow_prunes():
    model, x = _two_convs()
    DG = build(model, x)
    slot = DG.slot_of(model[0], tp.prune_conv_out_channels)
    assert slot == DG.module2node[model[0]].out_slot
    assert DG.slot_of(model[1], tp.prune_conv_in_channels) == DG.module2node[model[1]].in_slot
    assert (DG.current_width(slot), DG.original_width(slot)) == (8, 8)
    DG.get_pruning_group(model[0], tp.prune_conv_out_channels, [2, 6]).prune()
    assert DG.alive_positions(slot).tolist() == [0, 1, 3, 4, 5, 7]
    assert DG.current_width(slot) == 6 and DG.original_width(slot) == 8
    assert DG.to_current(slot, torch.tensor([3, 7])).tolist() == [2, 5]
    assert DG.to_original(slot, [2, 5]).tolist() == [3, 7]
    assert DG.is_alive(slot, torch.tensor([2, 3])).tolist() == [False, True]
    with pytest.raises(tp.InvalidIndicesError, match="already pruned"):
        DG.to_current(slot, torch.tensor([2]))
    assert DG.dead_positions[slot].sum() == 2


def test_plan_group_in_original_indices_skips_removed_positions():
    model, x = _two_convs()
    DG = build(model, x)
    slot = DG.slot_of(model[0], tp.prune_conv_out_channels)
    DG.get_pruning_group(model[0], tp.prune_conv_out_channels, [2, 6]).prune()
    g = DG.plan_group(slot, torch.tensor([2, 3, 7]))  # 2 is gone already
    assert g[0].idxs == [2, 5]  # original 3 and 7, as current indices
    g.prune()
    assert model[0].out_channels == 4 and DG.alive_positions(slot).tolist() == [0, 1, 4, 5]


def test_coupled_names_every_layer_that_moves_together():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 1)).eval()
    DG = build(model, torch.randn(1, 3, 4, 4))
    got = {(node.name, side) for node, side in DG.coupled(model[0], tp.prune_conv_out_channels)}
    assert got == {("0", "out"), ("1", "out"), ("2", "in")}


def test_prune_hooks_run_in_order_and_detach():
    model, x = _two_convs()
    DG = build(model, x)
    calls = []
    h1 = DG.register_prune_hook(lambda graph, items: calls.append(("before", len(items))), when="before")
    h2 = DG.register_prune_hook(lambda graph, plan: calls.append(("after", plan is not None)), when="after")
    assert DG.prune_hooks("before") and DG.prune_hooks("after")
    DG.get_pruning_group(model[0], tp.prune_conv_out_channels, [0]).prune()
    assert calls == [("before", 2), ("after", True)]
    h1.remove()
    h2.remove()
    assert not DG.prune_hooks("before") and not DG.prune_hooks("after")
    DG.get_pruning_group(model[0], tp.prune_conv_out_channels, [0]).prune()
    assert len(calls) == 2


def test_an_after_hook_is_undone_when_the_prune_rolls_back():
    model, x = _two_convs()
    DG = build(model, x)
    calls = []
    DG.register_prune_hook(lambda graph, plan: calls.append(plan is not None), when="after")
    DG.register_prune_hook(lambda graph, plan: (_ for _ in ()).throw(ValueError("no")) if plan else None,
                           when="after")
    with pytest.raises(tp.PruneFailedError, match="ValueError: no") as info:
        DG.get_pruning_group(model[0], tp.prune_conv_out_channels, [0]).prune()
    assert isinstance(info.value.__cause__, ValueError)
    assert calls == [True, False] and model[0].out_channels == 8


@pytest.mark.parametrize("when, hook, match", [("during", lambda g, p: None, "is not one of"),
                                               ("after", "hook", "must be callable")])
def test_bad_hook_registrations_are_refused(when, hook, match):
    model, x = _two_convs()
    DG = build(model, x)
    with pytest.raises(tp.DepgraphError, match=match):
        DG.register_prune_hook(hook, when=when)


# -- 7: GroupItem is Torch-Pruning's named tuple ----------------------------------------------------


def test_group_items_are_named_tuples():
    model, x = _two_convs()
    DG = build(model, x)
    g = DG.get_pruning_group(model[0], tp.prune_conv_out_channels, [1, 3])
    for item in g:
        assert isinstance(item, GroupItem) and isinstance(item, tuple)
        dep, idxs = item
        assert (dep, idxs) == (item.dep, item.idxs)
        assert item._asdict() == {"dep": dep, "idxs": idxs}
        assert item.root_idxs == [1, 3]
        assert dep.pruning_fn is dep.handler and dep.index_mapping == [None, None]
    assert g[0].dep.is_triggered_by(tp.prune_conv_out_channels)
    assert g.items is g.items and len(g.items) == 2


def test_add_dep_and_add_and_merge():
    model, x = _two_convs()
    DG = build(model, x)
    g = DG.get_pruning_group(model[0], tp.prune_conv_out_channels, [1])
    dep = g[1].dep
    g.add_and_merge(dep, [1, 5])
    assert g[1].idxs == [1, 5] and len(g) == 2
    g2 = tp.Group()
    g2.add_dep(dep, [0])
    assert len(g2) == 1 and g2[0].idxs == [0] and g2.version is None
