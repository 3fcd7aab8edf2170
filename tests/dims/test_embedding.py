"""``F.embedding`` called directly (depgraph/dims/embedding.py)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

import depgraph as tp

from .._checks import build, member, prune_and_verify

IDS = torch.tensor([[1, 4, 0, 9, 3], [2, 2, 7, 8, 5]])


class ScaledEmbedding(nn.Embedding):
    """Gemma-style: an nn.Embedding subclass with its own forward (so not a leaf) calling F.embedding."""

    def forward(self, ids):
        return F.embedding(ids, self.weight, self.padding_idx) * 2.0


class ShiftedPositions(nn.Embedding):
    """OPT-style: positions offset by 2, looked up through ``super().forward``."""

    def forward(self, ids):
        return super().forward(ids + 2)


class Lm(nn.Module):
    """Token + position embeddings, a norm-free MLP and an lm_head tied to the token table."""

    def __init__(self, tie: bool = True):
        super().__init__()
        self.tok = ScaledEmbedding(10, 6)
        self.pos = ShiftedPositions(12, 6)
        self.fc = nn.Linear(6, 6)
        self.lm_head = nn.Linear(6, 10, bias=False)
        if tie:
            self.lm_head.weight = self.tok.weight

    def forward(self, ids):
        h = self.tok(ids) + self.pos(ids)
        return self.lm_head(torch.relu(self.fc(h)) + h)


def test_embedding_subclass_with_own_forward_is_pruned_through_its_layer():
    model = Lm(tie=False)
    done = prune_and_verify(model, IDS, model.tok, tp.prune_embedding_out_channels, [0, 3])
    group = done.groups[0]
    assert member(group, model.pos, out=True) == [0, 3]
    assert member(group, model.fc, out=False) == [0, 3]
    assert member(group, model.lm_head, out=False) == [0, 3]
    assert model.tok.embedding_dim == 4 and model.pos.weight.shape == (12, 4)


def test_tied_lm_head_follows_a_functional_embedding():
    model = Lm(tie=True)
    prune_and_verify(model, IDS, model.pos, tp.prune_embedding_out_channels, [5])
    assert model.lm_head.weight is model.tok.weight
    assert model.tok.weight.shape == (10, 5) and model.lm_head.in_features == 5


class BareTable(nn.Module):
    """A table held as a bare parameter of a module without a handler."""

    def __init__(self):
        super().__init__()
        self.table = nn.Parameter(torch.randn(10, 6))
        self.fc = nn.Linear(6, 3)

    def forward(self, ids):
        return self.fc(F.embedding(ids, self.table))


def test_bare_table_width_is_a_parameter_endpoint():
    model = BareTable()
    done = prune_and_verify(model, IDS, model.fc, tp.prune_linear_in_channels, [1, 2])
    assert member(done.groups[0], model.table) == [1, 2]
    assert model.table.shape == (10, 4)


def test_table_rows_and_index_dims_are_frozen():
    """Rows are addressed by the ids (data); the ids' dims are the model input's."""
    model = BareTable()
    DG = build(model, IDS)
    frozen = DG.slot_graph.frozen
    nodes = {n.pruning_dim: n for n in DG.param_nodes(model.table)}
    assert nodes[0].out_slot in frozen and nodes[1].out_slot not in frozen
    assert DG.module2node[model.fc].in_slot not in frozen


def test_max_norm_marks_the_width_inexact():
    class Renormed(BareTable):
        def forward(self, ids):
            return self.fc(F.embedding(ids, self.table, max_norm=1.0))

    model = Renormed()
    DG = build(model, IDS)
    group = DG.get_pruning_group(model.fc, tp.prune_linear_in_channels, [0])
    assert any("max_norm" in r for r in group.inexact_reasons)
