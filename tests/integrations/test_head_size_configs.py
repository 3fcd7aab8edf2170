"""Configs that derive the head size from the width: the prunes they can describe do round-trip.

Markers:
    zoo   real architectures from transformers (tiny random weights, offline).

BERT, RoBERTa, GPT-2, OPT, CLIP and Swin build ``head size = width // heads``
(transformers 5 reads no ``head_dim`` for them, and ``config.pruned_heads`` /
``prune_heads`` are gone). Pruning heads or head dims alone is refused with
that reason (``INEXPRESSIBLE`` in test_transformers_families.py); pruning the
hidden size along with them, so that heads x head dim stays equal to the
width, is what the refusal suggests, and ``save_pretrained`` then
``from_pretrained`` must rebuild exactly that model.
"""

from __future__ import annotations

import copy

import pytest
import torch

import depgraph as tp
from tests.integrations._hf import FAMILIES, _called_embedding, _prune, logits, output_of, prune_uniformly

transformers = pytest.importorskip("transformers")
from depgraph.integrations.transformers import check_config  # noqa: E402

pytestmark = [pytest.mark.zoo, pytest.mark.filterwarnings("ignore:depgraph. after this prune")]


def _prune_hidden(DG, model: torch.nn.Module, n: int) -> None:
    """The first ``n`` dims of the residual stream (from the token embedding or the patch conv)."""
    emb = model.get_input_embeddings()
    if isinstance(emb, torch.nn.Embedding):
        _prune(DG, _called_embedding(DG, model, emb), tp.prune_embedding_out_channels, list(range(n)))
    else:
        conv = next(m for m in emb.modules() if isinstance(m, torch.nn.Conv2d))
        _prune(DG, conv, tp.prune_conv_out_channels, list(range(n)))


def _check_round_trip(model, original, inputs, tmp_path) -> None:
    result = tp.verify(original, model, inputs, output_transform=output_of)
    assert result.shapes_match, str(result)
    check_config(model)
    model.save_pretrained(tmp_path)
    reloaded = type(model).from_pretrained(tmp_path).eval()
    assert [p.shape for p in reloaded.parameters()] == [p.shape for p in model.parameters()]
    torch.testing.assert_close(logits(reloaded, inputs), logits(model, inputs), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind,hidden_dims", [("heads", 8), ("head_dims", 4)])
@pytest.mark.parametrize("family", ["bert", "roberta", "gpt2", "opt", "clip_vision"])
def test_heads_with_hidden_round_trip(family: str, kind: str, hidden_dims: int, tmp_path) -> None:
    fam = FAMILIES[family]
    model, inputs = fam.build(), fam.example_inputs()
    original = copy.deepcopy(model)
    with torch.no_grad():
        DG = tp.DependencyGraph().build_dependency(model, inputs, output_transform=output_of)
    prune_uniformly(DG, model, kind)        # 4 heads x 8 dims -> 3 x 8 (heads) or 4 x 7 (head dims)
    with pytest.raises(tp.DepgraphError, match="heads x head dim equals the layer width"):
        check_config(model)                 # alone: the config cannot describe it
    _prune_hidden(DG, model, hidden_dims)   # hidden 32 -> 24 or 28: heads x head dim again
    _check_round_trip(model, original, inputs, tmp_path)
    want = (3, 24) if kind == "heads" else (4, 28)
    assert (model.config.num_attention_heads, model.config.hidden_size) == want
    if fam.causal_lm:
        reloaded = type(model).from_pretrained(tmp_path).eval()
        ids, kwargs = inputs["input_ids"][:1], dict(max_new_tokens=4, do_sample=False, pad_token_id=0)
        with torch.no_grad():
            assert torch.equal(model.generate(ids, **kwargs), reloaded.generate(ids, **kwargs))


def test_swin_head_dims_with_stage_widths_round_trip(tmp_path) -> None:
    """Swin: one dim per head, each stage's width by heads x 1, each MLP by mlp_ratio x that."""
    fam = FAMILIES["swin"]
    model, inputs = fam.build(), fam.example_inputs()
    original = copy.deepcopy(model)
    with torch.no_grad():
        DG = tp.DependencyGraph().build_dependency(model, inputs, output_transform=output_of)
    prune_uniformly(DG, model, "head_dims")  # stage 0: 2 heads x 7, stage 1: 4 heads x 7
    stages = model.swin.encoder.layers
    _prune_hidden(DG, model, 2)              # stage 0: 16 -> 14
    _prune(DG, stages[0].downsample.reduction, tp.prune_linear_out_channels, [0, 1, 2, 3])  # stage 1: 32 -> 28
    for stage, n in zip(stages, (8, 16), strict=True):  # mlp_ratio 4
        _prune(DG, stage.blocks[0].mlp.fc2, tp.prune_linear_in_channels, list(range(n)))
    _check_round_trip(model, original, inputs, tmp_path)
    assert (model.config.embed_dim, model.config.hidden_size) == (14, 28)


@pytest.mark.parametrize("family", ["bert", "opt", "clip_vision"])
def test_uniform_pruner_ratio_round_trips(family: str, tmp_path) -> None:
    """One pruning_ratio for every group shrinks hidden size and head dims alike: heads x head dim = width."""
    fam = FAMILIES[family]
    model, inputs = fam.build(), fam.example_inputs()
    original = copy.deepcopy(model)
    head = model.get_output_embeddings()
    tp.pruner.BasePruner(model, inputs, tp.importance.GroupMagnitudeImportance(p=2), pruning_ratio=0.25,
                         ignored_layers=[head] if head is not None else None, output_transform=output_of).step()
    assert (model.config.hidden_size, model.config.num_attention_heads) == (24, 4)
    _check_round_trip(model, original, inputs, tmp_path)
