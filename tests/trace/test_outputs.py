"""Default outputs: a transformers model's caches and per-layer tuples do not freeze anything.

Markers:
    zoo   the test on a Hugging Face causal LM (tiny, random weights, offline).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

import depgraph as tp
from depgraph.trace.outputs import primary_outputs
from tests.integrations._hf import FAMILIES, logits


def test_plain_outputs_are_taken_whole():
    out = (torch.zeros(2, 3), {"a": torch.ones(1)})
    assert primary_outputs(nn.Linear(1, 1), out) is out


def test_model_output_keeps_the_result_only():
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_outputs import BaseModelOutputWithPooling, CausalLMOutputWithPast

    h = (torch.zeros(1, 2, 4),) * 3
    out = CausalLMOutputWithPast(logits=torch.zeros(1, 2, 5), hidden_states=h, attentions=h)
    assert list(primary_outputs(None, out)) == ["logits"]
    out = BaseModelOutputWithPooling(last_hidden_state=h[0], pooler_output=torch.zeros(1, 4), hidden_states=h)
    assert list(primary_outputs(None, out)) == ["last_hidden_state", "pooler_output"]
    del transformers



@pytest.mark.zoo
def test_hf_causal_lm_without_output_transform_prunes_heads_mlp_and_hidden(tmp_path):
    """Hidden states and attention maps in the output would freeze the hidden size and the heads."""
    transformers = pytest.importorskip("transformers")
    fam = FAMILIES["llama"]
    model = fam.build()
    inputs = {**fam.example_inputs(), "output_hidden_states": True}
    original = copy.deepcopy(model)
    pruner = tp.pruner.BasePruner(
        model, inputs, tp.importance.GroupMagnitudeImportance(), pruning_ratio=0.25, prune_num_heads=True,
        head_pruning_ratio=0.5, prune_head_dims=False, root_module_types=(nn.Linear, nn.Embedding),
    )
    pruner.step()
    cfg = model.config
    assert (cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads, cfg.num_key_value_heads) == (24, 36, 2, 1)
    assert model.model.layers[0].self_attn.q_proj.weight.shape == (16, 24)
    result = tp.verify(original, model, inputs)
    assert result.shapes_match and not result.applies  # RMSNorm over the pruned hidden dims
    with torch.no_grad():
        out = model(**inputs)
    assert out.logits.shape == (2, 8, cfg.vocab_size) and out.hidden_states[-1].shape[-1] == 24

    model.save_pretrained(tmp_path)
    reloaded = transformers.LlamaForCausalLM.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(logits(reloaded, fam.example_inputs()), logits(model, fam.example_inputs()))
