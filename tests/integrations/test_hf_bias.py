"""Bias compensation on Hugging Face models: the config describes the new biases.

Tests depgraph/integrations/hf_bias.py.

Markers:
    zoo   every test here (transformers tiny configs, random weights, offline).
"""

from __future__ import annotations

import pytest
import torch

import depgraph as tp
from tests.integrations._hf import FAMILIES, logits, prune_uniformly

transformers = pytest.importorskip("transformers")
from depgraph.integrations.transformers import check_config  # noqa: E402

pytestmark = [pytest.mark.zoo, pytest.mark.filterwarnings("ignore:depgraph. after this prune")]


def compensated(family: str):
    fam = FAMILIES[family]
    model, inputs = fam.build(), fam.example_inputs()
    imp = tp.importance.FluctuationImportance().calibrate(model, [fam.example_inputs(batch=3)])
    DG = tp.DependencyGraph().build_dependency(model, inputs)
    tp.importance.enable_bias_compensation(DG, imp.stats)
    return fam, model, inputs, DG


@pytest.mark.parametrize("kind,flag,family_names", [
    ("mlp", "mlp_bias", ("gate_proj", "up_proj", "down_proj")),
    ("heads", "attention_bias", ("q_proj", "k_proj", "v_proj", "o_proj")),
])
def test_llama_config_flag_set_and_reload_is_exact(kind, flag, family_names, tmp_path):
    fam, model, inputs, DG = compensated("llama")
    assert getattr(model.config, flag) is False
    prune_uniformly(DG, model, kind)
    assert getattr(model.config, flag) is True
    layers = [layer.mlp if kind == "mlp" else layer.self_attn for layer in model.model.layers]
    consumer = "down_proj" if kind == "mlp" else "o_proj"
    assert all(bool(getattr(block, consumer).bias.abs().sum() > 0) for block in layers)  # compensated
    assert all(getattr(block, n).bias is not None for block in layers for n in family_names)
    check_config(model)
    model.save_pretrained(tmp_path)
    reloaded = transformers.LlamaForCausalLM.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(logits(reloaded, inputs), logits(model, inputs), rtol=1e-5, atol=1e-5)


def test_rolled_back_prune_restores_flag_and_biases():
    fam, model, inputs, DG = compensated("llama")

    def fail(graph, plan):
        if plan is not None:
            raise RuntimeError("refused")

    DG.register_prune_hook(fail, when="after")  # runs after the bias-flag sync, so it rolls it back
    mlp = model.model.layers[0].mlp
    with pytest.raises(tp.DepgraphError, match="refused"):
        DG.get_pruning_group(mlp.down_proj, tp.prune_linear_in_channels, [0, 1]).prune()
    assert model.config.mlp_bias is False
    assert all(m.bias is None for layer in model.model.layers for m in layer.mlp.modules()
               if isinstance(m, torch.nn.Linear))


def test_config_without_a_flag_warns_once():
    fam, model, inputs, DG = compensated("mistral")
    with pytest.warns(UserWarning, match="bias compensation gave model.layers.0.mlp.down_proj a bias") as rec:
        prune_uniformly(DG, model, "mlp")
    assert sum("bias compensation gave" in str(w.message) for w in rec) == 1
