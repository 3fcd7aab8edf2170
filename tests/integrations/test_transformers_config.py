"""depgraph.integrations.transformers: what the config sync writes, refuses, warns about and undoes."""

from __future__ import annotations

import copy
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn as nn

import depgraph as tp
from tests.integrations._hf import FAMILIES, logits, output_of, prune_uniformly

transformers = pytest.importorskip("transformers")
from depgraph.integrations import transformers as hf  # noqa: E402

LLAMA = FAMILIES["llama"]


def _build(fam=LLAMA, **kwargs):
    model, inputs = fam.build(**kwargs), fam.example_inputs()
    with torch.no_grad():
        DG = tp.DependencyGraph().build_dependency(model, inputs, output_transform=output_of)
    return model, inputs, DG


def _prune(DG, module, fn, idxs):
    group = DG.get_pruning_group(module, fn, idxs)
    assert DG.check_pruning_group(group), group.details()
    group.prune()


def _reload(model, tmp_path):
    model.save_pretrained(tmp_path)
    return type(model).from_pretrained(tmp_path).eval()


def test_attached_to_transformers_models_only() -> None:
    model, _, DG = _build()
    assert hf.is_transformers_model(model)
    assert sum(isinstance(h, hf.ConfigSync) for h in DG.prune_hooks("after")) == 1
    assert hf.attach(DG) is DG.prune_hooks("after")[0]  # attaching again adds nothing
    plain = tp.DependencyGraph().build_dependency(nn.Sequential(nn.Linear(4, 4)), torch.randn(1, 4))
    assert not plain.prune_hooks("after")
    with pytest.raises(tp.DepgraphError, match="not a transformers model"):
        hf.check_config(nn.Linear(2, 2))


def test_gqa_heads_and_mlp_written_to_config(tmp_path) -> None:
    model, inputs, DG = _build()
    prune_uniformly(DG, model, "heads")
    prune_uniformly(DG, model, "mlp")
    cfg = model.config
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.intermediate_size) == (2, 1, 8, 47)
    for layer in model.model.layers:
        assert layer.self_attn.num_key_value_groups == 2
        assert layer.mlp.intermediate_size == 47
    hf.check_config(model)
    torch.testing.assert_close(logits(_reload(model, tmp_path), inputs), logits(model, inputs))


def test_uneven_layers_warn_once_then_check_config_explains(tmp_path) -> None:
    model, inputs, DG = _build()
    attn0 = model.model.layers[0].self_attn
    with pytest.warns(UserWarning, match="differs between layers") as record:
        _prune(DG, attn0.k_proj, tp.prune_linear_out_channels, range(8))
    assert len([w for w in record if "config cannot describe" in str(w.message)]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # already warned for this model: silent now
        _prune(DG, model.model.layers[0].mlp.down_proj, tp.prune_linear_in_channels, [0])
    assert model.config.num_attention_heads == 4  # the config keeps its value while layers differ
    with pytest.raises(tp.DepgraphError, match=r"(?s)attention heads differs between layers.*"
                       r"2 in model\.layers\.0\.self_attn; 4 in model\.layers\.1\.self_attn.*Prune uniformly"):
        hf.check_config(model)
    # the same prune in the other layer makes them agree again
    _prune(DG, model.model.layers[1].self_attn.k_proj, tp.prune_linear_out_channels, range(8))
    _prune(DG, model.model.layers[1].mlp.down_proj, tp.prune_linear_in_channels, [0])
    hf.check_config(model)
    assert (model.config.num_attention_heads, model.config.intermediate_size) == (2, 47)
    torch.testing.assert_close(logits(_reload(model, tmp_path), inputs), logits(model, inputs))


def test_rolled_back_prune_restores_config_and_attributes() -> None:
    model, inputs = LLAMA.build(num_hidden_layers=1), LLAMA.example_inputs()

    def forward_fn(m, x):
        if m.config.num_attention_heads != 4:
            raise RuntimeError("this deployment only runs 4 heads")
        return m(**x)

    DG = tp.DependencyGraph().build_dependency(model, inputs, forward_fn=forward_fn, output_transform=output_of)
    before = copy.deepcopy(model.state_dict())
    attn = model.model.layers[0].self_attn
    with pytest.raises(tp.UnsupportedOpError, match="only runs 4 heads"):
        _prune(DG, attn.k_proj, tp.prune_linear_out_channels, range(8))  # the hook writes 2 heads
    assert (model.config.num_attention_heads, model.config.num_key_value_heads) == (4, 2)
    assert attn.num_key_value_groups == 2
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_head_dim_prune_folds_the_scale_and_rethetas_rope(tmp_path) -> None:
    model, inputs, DG = _build()
    theta = model.config.rope_parameters["rope_theta"]
    original = copy.deepcopy(model)
    prune_uniformly(DG, model, "head_dims")  # the last rotary pair: dims 3 and 7 of every head
    attn = model.model.layers[0].self_attn
    assert attn.head_dim == 6 and model.config.head_dim == 6
    assert attn.scaling == pytest.approx(6 ** -0.5)
    assert model.config.rope_parameters["rope_theta"] == pytest.approx(theta ** (3 / 4))
    result = tp.verify(original, model, inputs, output_transform=output_of)
    assert result.exact, str(result)
    hf.check_config(model)
    torch.testing.assert_close(logits(_reload(model, tmp_path), inputs), logits(model, inputs),
                               rtol=1e-5, atol=1e-5)


def test_rope_pairs_other_than_the_last_become_longrope() -> None:
    model, _, DG = _build()
    _prune(DG, model.model.layers[0].self_attn.q_proj, tp.prune_linear_out_channels, [0])  # pair (0, 4)
    hf.check_config(model)
    params = model.config.rope_parameters
    assert params["rope_type"] == "longrope" and params["short_factor"] == params["long_factor"]
    assert len(params["short_factor"]) == 3 and params["attention_factor"] == 1.0


def test_scaled_rope_types_cannot_be_rewritten() -> None:
    rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16, "rope_theta": 10000.0}
    model, _, DG = _build(rope_parameters=rope)
    _prune(DG, model.model.layers[0].self_attn.q_proj, tp.prune_linear_out_channels, [3])  # the last pair
    with pytest.raises(tp.DepgraphError, match="not rope_type 'llama3'.*depgraph.save"):
        hf.check_config(model)


def test_hidden_size_must_stay_valid_for_the_config() -> None:
    model, _, DG = _build()
    _prune(DG, model.model.embed_tokens, tp.prune_embedding_out_channels, [0, 1])  # 30 % 4 heads != 0
    assert model.config.hidden_size == 30
    with pytest.raises(tp.DepgraphError, match="LlamaConfig rejects the pruned sizes.*round_to"):
        hf.check_config(model)


def test_size_attributes_follow_the_widths() -> None:
    bert, _, DG = _build(FAMILIES["bert"])
    prune_uniformly(DG, bert, "heads")
    for layer in bert.bert.encoder.layer:
        assert (layer.attention.self.num_attention_heads, layer.attention.self.all_head_size) == (3, 24)
    gpt2, _, DG = _build(FAMILIES["gpt2"])
    prune_uniformly(DG, gpt2, "hidden")
    assert gpt2.config.n_embd == 28 and gpt2.transformer.h[0].attn.embed_dim == 28
    t5, _, DG = _build(FAMILIES["t5"])
    prune_uniformly(DG, t5, "hidden")
    assert t5.shared.embedding_dim == 28 and t5.model_dim == 28  # tied but never called; decoder scale
    assert t5.encoder.config.d_model == t5.decoder.config.d_model == t5.config.d_model == 28


def test_sync_config_after_low_level_pruning(tmp_path) -> None:
    model, inputs = LLAMA.build(), LLAMA.example_inputs()
    for layer in model.model.layers:  # the low-level functions run no hooks
        tp.prune_linear_out_channels(layer.mlp.gate_proj, [0, 5])
        tp.prune_linear_out_channels(layer.mlp.up_proj, [0, 5])
        tp.prune_linear_in_channels(layer.mlp.down_proj, [0, 5])
    assert model.config.intermediate_size == 48
    assert hf.sync_config(model) == []
    assert model.config.intermediate_size == 46 and model.model.layers[1].mlp.intermediate_size == 46
    hf.check_config(model)
    torch.testing.assert_close(logits(_reload(model, tmp_path), inputs), logits(model, inputs))


def test_import_depgraph_does_not_import_transformers() -> None:
    code = (
        "import sys, torch, depgraph as tp, depgraph.integrations.transformers\n"
        "tp.DependencyGraph().build_dependency(torch.nn.Linear(3, 3), torch.randn(1, 3))\n"
        "assert 'transformers' not in sys.modules, 'transformers was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
