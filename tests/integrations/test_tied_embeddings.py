"""Tied weights: one Parameter held by an embedding and an output layer is pruned once, coupled.

The trace sees two layers; only the shared tensor couples them. The graph pairs
their channels (so the group reaches both, even when the output layer reads the
hidden state through other layers, as BERT's MLM head does), and the shared
tensor is pruned by the first handler only.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

import depgraph as tp
from depgraph.functional.base import keep_index, prune_tensor
from tests.integrations._hf import FAMILIES, logits, output_of


class TiedLM(nn.Module):
    """embedding -> block -> transform (Linear + LayerNorm) -> head tied to the embedding."""

    def __init__(self, vocab: int = 20, dim: int = 8) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.block = nn.Linear(dim, dim)
        self.transform = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids)
        h = h + torch.relu(self.block(h))
        return self.head(self.norm(self.transform(h)))


def test_tied_head_behind_a_transform_is_coupled() -> None:
    model, ids = TiedLM().eval(), torch.randint(0, 20, (2, 5))
    original = copy.deepcopy(model)
    DG = tp.DependencyGraph().build_dependency(model, ids)
    group = DG.get_pruning_group(model.embed, tp.prune_embedding_out_channels, [1, 6])
    names = {dep.target.name for dep, _ in group}
    assert {"embed", "head", "block", "transform"} <= names  # head's input pulls in the transform's output
    group.prune()
    assert model.head.weight is model.embed.weight
    assert tuple(model.embed.weight.shape) == (20, 6) and model.head.in_features == 6
    torch.testing.assert_close(model.embed.weight, original.embed.weight[:, keep_index(8, torch.tensor([1, 6]))])
    assert model(ids).shape == (2, 5, 20)
    assert tp.verify(original, model, ids).shapes_match


def test_shared_tensor_pruned_at_different_positions_is_refused() -> None:
    a, b = nn.Linear(4, 3), nn.Linear(4, 3)
    b.weight = a.weight
    tp.prune_linear_out_channels(a, [0])
    with pytest.raises(tp.DepgraphError, match="shared by several layers would lose different positions"):
        tp.prune_linear_out_channels(b, [1])
    prune_tensor(a.weight, 0, keep_index(3, torch.tensor([0])))  # the same positions again: left alone
    assert tuple(a.weight.shape) == (2, 4)


@pytest.mark.zoo
@pytest.mark.parametrize("family", ["llama", "gpt2", "t5", "bert"])
def test_hf_tied_embeddings_pruned_once(family: str, tmp_path) -> None:
    pytest.importorskip("transformers")
    fam = FAMILIES[family]
    model = fam.build(**({"tie_word_embeddings": True} if family == "llama" else {}))
    inputs, original = fam.example_inputs(), None
    original = copy.deepcopy(model)
    emb = model.encoder.embed_tokens if family == "t5" else model.get_input_embeddings()
    head = model.get_output_embeddings()
    assert head.weight is emb.weight
    DG = tp.DependencyGraph().build_dependency(model, inputs, output_transform=output_of)
    group = DG.get_pruning_group(emb, tp.prune_embedding_out_channels, [0, 1, 2, 3])
    assert DG.check_pruning_group(group), group.details()
    group.prune()
    assert head.weight is emb.weight and tuple(emb.weight.shape) == (96, 28) and head.in_features == 28
    orig_emb = original.encoder.embed_tokens if family == "t5" else original.get_input_embeddings()
    torch.testing.assert_close(emb.weight, orig_emb.weight[:, 4:])
    assert output_of(model(**inputs)).shape == output_of(original(**inputs)).shape
    if family == "llama":  # its config can describe a smaller hidden size: reload, still tied
        model.save_pretrained(tmp_path)
        reloaded = type(model).from_pretrained(tmp_path).eval()
        assert reloaded.lm_head.weight is reloaded.model.embed_tokens.weight
        torch.testing.assert_close(logits(reloaded, inputs), logits(model, inputs))
