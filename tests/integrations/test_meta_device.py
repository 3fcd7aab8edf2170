"""Graph build and prune on the meta device: a Llama-7B-shaped model with no weight memory.

Markers:
    zoo   a real architecture from transformers (random init on meta, offline).

Pruning must not need tensor values: handlers select indices of meta tensors,
the forward check runs on meta (shapes only), and the config sync skips the
checks that compare RoPE frequencies by value.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import depgraph as tp

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.zoo

_7B = dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=8,
           vocab_size=32000, num_hidden_layers=2)


def _meta_llama():
    cfg = transformers.LlamaConfig(**_7B)
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(cfg).eval()
    return model, {"input_ids": torch.zeros(1, 8, dtype=torch.long, device="meta")}


def test_build_and_prune_llama_on_meta() -> None:
    model, inputs = _meta_llama()
    with torch.no_grad():
        DG = tp.DependencyGraph().build_dependency(model, inputs)
    assert any(True for _ in DG.get_all_groups())
    layer = model.model.layers[1]
    with warnings.catch_warnings():  # one layer pruned: the config cannot describe it (tested elsewhere)
        warnings.simplefilter("ignore")
        DG.get_pruning_group(layer.mlp.down_proj, tp.prune_linear_in_channels, list(range(256))).prune()
        # key/value head 0 of layer 1 and the 4 query heads sharing it (GQA 32/8)
        DG.get_pruning_group(layer.self_attn.k_proj, tp.prune_linear_out_channels, list(range(128))).prune()

    assert (layer.mlp.up_proj.out_features, layer.mlp.gate_proj.out_features) == (11008 - 256,) * 2
    assert layer.mlp.down_proj.weight.shape == (4096, 11008 - 256)
    attn = layer.self_attn
    assert attn.q_proj.weight.shape == (4096 - 4 * 128, 4096)
    assert attn.k_proj.weight.shape == attn.v_proj.weight.shape == (7 * 128, 4096)
    assert attn.o_proj.weight.shape == (4096, 4096 - 4 * 128)
    assert attn.num_key_value_groups == 4
    assert all(p.is_meta for p in model.parameters())
    assert model.model.layers[0].self_attn.q_proj.weight.shape == (4096, 4096)  # the other layer is untouched
    with torch.no_grad():
        assert model(**inputs).logits.shape == (1, 8, 32000)


def test_head_dim_prune_on_meta_skips_value_checks() -> None:
    """RoPE frequencies have no values on meta: the pair is removed, nothing is compared or re-derived."""
    model, inputs = _meta_llama()
    with torch.no_grad():
        DG = tp.DependencyGraph().build_dependency(model, inputs)
    attn = model.model.layers[0].self_attn
    theta = model.config.rope_parameters["rope_theta"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # dims 63 and 127 (a rotate-half pair) of every query and key/value head of every layer
        DG.get_pruning_group(attn.q_proj, tp.prune_linear_out_channels, [63, 127]).prune()
    assert model.model.rotary_emb.inv_freq.shape == (63,) and model.model.rotary_emb.inv_freq.is_meta
    assert attn.head_dim == 126 and attn.q_proj.weight.shape == (32 * 126, 4096)
    assert model.config.rope_parameters["rope_theta"] == theta  # values unknown: not re-derived
    with torch.no_grad():
        assert model(**inputs).logits.shape == (1, 8, 32000)


def test_random_pruner_step_on_meta() -> None:
    """A whole pruner step needs no data when its criterion reads none (RandomImportance)."""
    model, inputs = _meta_llama()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tp.pruner.BasePruner(model, inputs, tp.importance.RandomImportance(), pruning_ratio=0.25,
                             ignored_layers=[model.lm_head]).step()
    mlp = model.model.layers[0].mlp
    assert mlp.down_proj.in_features < 11008 and model.model.norm.weight.shape[0] < 4096
    with torch.no_grad():
        assert model(**inputs).logits.shape == (1, 8, 32000)


def test_weight_criteria_refuse_meta_with_the_way_out() -> None:
    model, inputs = _meta_llama()
    pruner = tp.pruner.BasePruner(model, inputs, tp.importance.GroupMagnitudeImportance(p=2), pruning_ratio=0.25,
                                  ignored_layers=[model.lm_head])
    with pytest.raises(tp.DepgraphError, match="GroupMagnitudeImportance .* meta device .*RandomImportance"):
        pruner.step()
    assert model.model.layers[0].mlp.down_proj.in_features == 11008  # nothing changed
