"""What a pruner computes once and reuses while the graph is unchanged, and what a group holds.

Listing every group and finding every attention block each cost a propagation
per group or per key/value head; on an LLM they are most of the analysis. A
step made right after construction reuses both (the graph has not changed),
and the first prune makes them stale. Group members' index lists share their
int objects, so holding all groups of a wide model costs a pointer per index.

Markers:
    zoo   a tiny Llama from transformers (random weights, offline).
"""

from __future__ import annotations

import copy

import pytest

import depgraph as tp
import depgraph.pruner.heads as heads_module
from tests._checks import count_calls
from tests.integrations._hf import FAMILIES, output_of

pytestmark = pytest.mark.zoo


def _llama(**overrides):
    pytest.importorskip("transformers")
    fam = FAMILIES["llama"]
    return fam.build(**overrides), fam.example_inputs()



def test_first_step_reuses_the_groups_and_heads_found_at_construction(monkeypatch):
    model, inputs = _llama(attn_implementation="eager")
    original = copy.deepcopy(model)
    imp = tp.importance.GroupMagnitudeImportance(p=2)
    pruner = tp.pruner.BasePruner(
        model, inputs, imp, pruning_ratio=0.5, prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=0.5,
        iterative_steps=2, ignored_layers=[model.get_input_embeddings(), model.get_output_embeddings()],
        output_transform=output_of,
    )
    listed = pruner.prunable_groups()
    assert pruner.prunable_groups() is listed  # unchanged graph: the same list
    group_calls = count_calls(monkeypatch, pruner.DG, "get_all_groups")
    head_calls = count_calls(monkeypatch, heads_module, "find_attention_heads")

    pruner.step()
    assert group_calls == [] and head_calls == []  # planned entirely from what __init__ found
    layer = model.model.layers[0]
    # step 1 of 2: a quarter of the MLP channels; a quarter of 2 KV heads rounds to none
    assert layer.mlp.gate_proj.out_features == 36 and layer.self_attn.k_proj.out_features == 16
    assert pruner.num_heads == {} and head_calls == []  # the counts are read without a search
    fresh = pruner.prunable_groups()
    assert fresh is not listed and group_calls == [1]  # the prune made the list stale
    widths = {g[0].dep.target.module: len(g[0].idxs) for g in fresh}
    assert widths[layer.mlp.gate_proj] == 36

    pruner.step()  # the groups just listed are reused; the blocks are found once on the pruned graph
    assert head_calls == [1] and group_calls == [1]
    assert layer.mlp.gate_proj.out_features == 24 and layer.self_attn.k_proj.out_features == 8
    assert tp.verify(original, model, inputs, output_transform=output_of).exact


def test_heads_found_once_per_graph_state_and_counts_follow_prunes():
    model, inputs = _llama(attn_implementation="eager", num_attention_heads=8, num_key_value_heads=4, head_dim=4)
    attn = model.model.layers[0].self_attn
    num_heads = {a: 8 for a in (layer.self_attn.q_proj for layer in model.model.layers)}
    pruner = tp.pruner.BasePruner(
        model, inputs, tp.importance.GroupMagnitudeImportance(p=2), pruning_ratio=0.0, prune_num_heads=True,
        head_pruning_ratio=0.5, num_heads=num_heads, output_transform=output_of,
    )
    assert pruner.num_heads[attn.q_proj] == 8
    original = copy.deepcopy(model)
    pruner.step()
    assert pruner.num_heads[attn.q_proj] == 4 and attn.q_proj.out_features == 4 * attn.head_dim
    assert attn.k_proj.out_features == 2 * attn.head_dim  # 2 of 4 KV heads, each with its 2 query heads
    assert tp.verify(original, model, inputs, output_transform=output_of).exact


def test_group_index_lists_share_ints_and_root_lists():
    model, inputs = _llama(intermediate_size=320)
    DG = tp.DependencyGraph().build_dependency(model, inputs, output_transform=output_of)
    first = list(DG.get_all_groups(ignored_layers=[model.get_input_embeddings(), model.get_output_embeddings()]))
    again = list(DG.get_all_groups(ignored_layers=[model.get_input_embeddings(), model.get_output_embeddings()]))
    mlp = [g for g in first if g[0].dep.target.module is model.model.layers[0].mlp.gate_proj][0]
    mlp_again = [g for g in again if g[0].dep.target.module is model.model.layers[0].mlp.gate_proj][0]
    root = mlp[0]
    assert type(root.idxs) is list and root.idxs == list(range(320))
    assert root.root_idxs is root.idxs  # a member that follows the root position for position
    assert root.idxs[300] is mlp_again[0].idxs[300]  # one int object per value, not one per list
    mlp_again[0].idxs.append(5)  # the lists themselves are still each group's own
    assert len(root.idxs) == 320
    members = {(it.dep.target.name, it.dep.side): it for it in mlp}
    down = members[("model.layers.0.mlp.down_proj", "in")]
    assert down.idxs == list(range(320)) and down.root_idxs == down.idxs
    # pruning through the shared lists is exact
    original = copy.deepcopy(model)
    with pytest.warns(UserWarning, match="MLP width differs between layers"):
        DG.get_pruning_group(model.model.layers[0].mlp.gate_proj, tp.prune_linear_out_channels, [3, 300]).prune()
    assert model.model.layers[0].mlp.down_proj.in_features == 318
    assert tp.verify(original, model, inputs, output_transform=output_of).exact


def test_a_step_syncs_the_hf_config_once_and_a_lone_prune_at_once(monkeypatch):
    """The config sync measures every layer: once per step (before its forward check), not once per group."""
    import depgraph.integrations.transformers as hf

    model, inputs = _llama(num_hidden_layers=3)
    original = copy.deepcopy(model)
    syncs = count_calls(monkeypatch, hf, "_sync")
    pruner = tp.pruner.BasePruner(
        model, inputs, tp.importance.GroupMagnitudeImportance(p=2), pruning_ratio=0.5, prune_num_heads=True,
        prune_head_dims=False, head_pruning_ratio=0.5,
        ignored_layers=[model.get_input_embeddings(), model.get_output_embeddings()], output_transform=output_of,
    )
    pruner.step()
    assert len(pruner.pruning_history()) == 6 and syncs == [1]  # 3 MLP + 3 head groups, one sync
    assert model.config.intermediate_size == 24 and model.config.num_key_value_heads == 1
    assert all(layer.self_attn.num_key_value_groups == 2 for layer in model.model.layers)
    assert tp.verify(original, model, inputs, output_transform=output_of).exact
    hf.check_config(model)

    DG = tp.DependencyGraph().build_dependency(model, inputs, output_transform=output_of)
    syncs.clear()
    with pytest.warns(UserWarning, match="MLP width differs between layers"):  # synced (and judged) at once
        DG.get_pruning_group(model.model.layers[0].mlp.gate_proj, tp.prune_linear_out_channels, [0]).prune()
    assert syncs == [1] and model.model.layers[0].mlp.gate_proj.out_features == 23


class _CountedWalks(dict):
    """A dict that counts walks over all of its entries (``items``, ``values``, ``keys``, iteration)."""

    walks = 0

    def _walk(self):
        type(self).walks += 1

    def items(self):
        self._walk()
        return super().items()

    def values(self):
        self._walk()
        return super().values()

    def keys(self):
        self._walk()
        return super().keys()

    def __iter__(self):
        self._walk()
        return super().__iter__()


def test_a_prune_updates_the_bound_attributes_of_its_own_slots_without_walking_every_binding(monkeypatch):
    """Each layer's ``head_dim`` is bound to its slots; a step pruning head dims in every layer looks up
    only the slots each group reaches (before: every binding of the model per group, O(L^2) per step)."""
    model, inputs = _llama(num_hidden_layers=4)
    pruner = tp.pruner.BasePruner(model, inputs, tp.importance.GroupMagnitudeImportance(p=2), pruning_ratio=0.5,
                                  ignored_layers=[model.get_input_embeddings(), model.get_output_embeddings()],
                                  output_transform=output_of)
    graph = pruner.DG.slot_graph
    assert len(graph.bindings) >= 3 * 4  # head_dim of each layer, bound on q, k and v
    monkeypatch.setattr(graph, "bindings", _CountedWalks(graph.bindings))
    monkeypatch.setattr(_CountedWalks, "walks", 0)
    looked_up = count_calls(monkeypatch, graph, "bindings_of")
    dims = [layer.self_attn.head_dim for layer in model.model.layers]
    pruner.step()
    assert _CountedWalks.walks == 0
    assert len(looked_up) == len(pruner.pruning_history())  # one lookup per pruned group
    for layer, before in zip(model.model.layers, dims, strict=True):
        attn = layer.self_attn
        assert attn.head_dim < before and attn.q_proj.out_features == attn.head_dim * 4  # kept current
    assert model(**inputs).logits.shape[-1] == model.config.vocab_size
