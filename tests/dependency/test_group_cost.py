"""Listing groups and planning a step do bounded work per group (issue #12: no work per group
that walks the whole graph, no per-channel Python objects).

* a concatenation read back from its output touches only the input that owns the positions
  (DenseNet: without it a dense block cost O(L^3) index ops);
* the one-channel closures get_all_groups computed are reused by the planner
  (``DG.closed_positions``) until a prune changes the graph;
* group members hand criteria the index tensors they were planned with.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torchvision

import depgraph as tp
from depgraph.dependency import GroupItem
from depgraph.dims.indexmap import Offset
from depgraph.importance.base import member_indices

from .._checks import build, count_calls


def test_densenet_concat_pushes_touch_only_the_owning_input(monkeypatch):
    torch.manual_seed(0)
    model = torchvision.models.densenet121().eval()
    DG = build(model, torch.randn(1, 3, 64, 64))
    applied = count_calls(monkeypatch, Offset, "apply")
    groups = list(DG.get_all_groups(ignored_layers=[model.classifier]))
    members = sum(len(g) for g in groups)
    assert len(groups) == 120 and members == 1431
    # Every push through a cat offset whose positions all fall inside (or all outside) the
    # input's window is answered without an index op; before, 17732 ops (15344 of them empty).
    assert len(applied) == 0


def _grouped() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.Conv2d(8, 4, 1)).eval()
    return model, torch.randn(1, 3, 6, 6)


def test_closed_positions_is_the_root_of_the_one_channel_group_and_follows_prunes():
    model, x = _grouped()
    DG = build(model, x)
    slot = DG.slot_of(model[0], tp.prune_conv_out_channels)
    for c in range(8):
        want = DG.get_pruning_group(model[0], tp.prune_conv_out_channels, [c])[0].idxs
        assert DG.closed_positions(slot, c).tolist() == want
    assert DG.closed_positions(slot, 1).tolist() == [1, 5]  # the same position in both conv groups
    DG.get_pruning_group(model[0], tp.prune_conv_out_channels, [0, 4]).prune()
    assert DG.closed_positions(slot, 1).tolist() == [1, 5]  # original positions, still alive
    assert DG.to_current(slot, DG.closed_positions(slot, 1)).tolist() == [0, 3]


def test_the_first_step_plans_channel_classes_without_new_single_channel_propagations(monkeypatch):
    model, x = _grouped()
    pruner = tp.pruner.BasePruner(model, x, tp.importance.GroupMagnitudeImportance(), pruning_ratio=0.5,
                                  ignored_layers=[model[2]])
    planned: list[list[int]] = []
    original = tp.DependencyGraph.propagate

    def counted(self, slot, positions, *args, **kwargs):
        planned.append(torch.as_tensor(positions).tolist())
        return original(self, slot, positions, *args, **kwargs)

    monkeypatch.setattr(tp.DependencyGraph, "propagate", counted)
    pruner.step()
    # Two groups (conv0 out, conv1 out), both closed over the two conv groups (stride 4): per group
    # the strided-class check probes channels 3 and 2 (channel 0 was memoised by the listing),
    # then one final group each.
    assert planned == [[2], [3], [2], [3], [2, 3, 6, 7], [0, 3, 4, 7]]
    assert model[0].out_channels == 4 and model[1].weight.shape == (4, 2, 3, 3)
    model(x)


def test_members_carry_their_index_tensors_and_hand_built_items_convert_their_lists():
    model, x = _grouped()
    DG = build(model, x)
    group = DG.get_pruning_group(model[0], tp.prune_conv_out_channels, [1])
    for item in group:
        idxs, roots = member_indices(item)
        assert idxs.dtype == torch.long and idxs.tolist() == list(item.idxs)
        assert roots.tolist() == list(item.root_idxs)
    dep = group[0].dep
    by_hand = GroupItem(dep, [5, 2])
    idxs, roots = member_indices(by_hand)
    assert idxs.tolist() == [5, 2] and roots is idxs
    mixed = GroupItem(dep, [1, 3], [1, 1], tensors=(torch.tensor([1, 3]), torch.tensor([1, 1])))
    mixed.idxs.append(5)  # a list changed in place no longer matches its tensors: converted again
    mixed.root_idxs.append(1)
    assert member_indices(mixed)[0].tolist() == [1, 3, 5]


def test_scores_sum_every_member_onto_its_root_channel_including_many_to_one():
    """One index_add for the whole group: a flatten maps 4 linear columns onto each conv channel."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 1, bias=False), nn.Flatten(), nn.Linear(16, 3)).eval()
    DG = build(model, torch.randn(1, 3, 2, 2))
    group = DG.get_pruning_group(model[0], tp.prune_conv_out_channels, [3, 1])
    scores = tp.importance.GroupMagnitudeImportance(p=2, group_reduction="sum", normalizer=None)(group)
    w0, w2 = model[0].weight.detach(), model[2].weight.detach()
    want = torch.stack([w0[c].pow(2).sum() + w2[:, 4 * c:4 * c + 4].pow(2).sum() for c in group[0].idxs])
    torch.testing.assert_close(scores, want)
