"""depgraph.integrations._hf_numerics: a head-dim prune reloads with the same logits, not merely close ones.

Markers:
    zoo   real architectures from transformers (tiny random weights, offline).

The family tests reload at 8 tokens with small weights, where RoPE rounding
hides. Here the weights are larger and the sequence longer (64 positions):
before the pruned model adopted the frequencies ``from_pretrained`` computes
from the re-derived ``rope_theta``, one float32 ulp of frequency gave logit
differences of 4e-5 (Llama) to 2e-4 (Gemma). The other kinds were already
exact and must stay so. Head dims pruned at pairs other than the last ones
reload through ``rope_type="longrope"``, also after two prunes in one graph
and after a pruner chose the pairs.
"""

from __future__ import annotations

import copy

import pytest
import torch

import depgraph as tp
from tests.integrations._hf import FAMILIES, logits, output_of, prune_uniformly

transformers = pytest.importorskip("transformers")
from depgraph.integrations._hf_numerics import fresh_inv_freq  # noqa: E402
from depgraph.integrations.transformers import check_config  # noqa: E402

pytestmark = [pytest.mark.zoo, pytest.mark.filterwarnings("ignore:depgraph. after this prune")]


def _loud(family: str, seed: int):
    """The family's tiny model with weights of std 0.5 (sharp attention) and 64-token inputs."""
    model = FAMILIES[family].build()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model, {"input_ids": torch.randint(3, 96, (2, 64), generator=g)}


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral", "gemma"])
def test_head_dim_prune_reloads_bit_for_bit(family: str, seed: int, tmp_path) -> None:
    model, inputs = _loud(family, seed)
    original = copy.deepcopy(model)
    with torch.no_grad():
        DG = tp.DependencyGraph().build_dependency(model, inputs, output_transform=output_of)
    prune_uniformly(DG, model, "head_dims")  # the last rotary pair of every head
    check_config(model)
    rotary = model.model.rotary_emb
    assert rotary.inv_freq.numel() == 3
    assert torch.equal(rotary.inv_freq, fresh_inv_freq(rotary))  # what a reload computes, exactly

    model.save_pretrained(tmp_path)
    reloaded = type(model).from_pretrained(tmp_path).eval()
    torch.testing.assert_close(logits(reloaded, inputs), logits(model, inputs), rtol=0, atol=1e-5)
    # Adopting the reload's frequencies moved the pruned model by float32 rounding only (that the
    # prune is otherwise exact, verify shows in test_transformers_families at ordinary weight scales).
    torch.testing.assert_close(rotary.inv_freq, original.model.rotary_emb.inv_freq[:3], rtol=5e-7, atol=0)


@pytest.mark.parametrize("pairs,rope_type", [
    (([3, 7], [2, 5]), "default"),   # the last pair twice: rope_theta re-derived
    (([1, 5], [0, 3]), "longrope"),  # pairs 1, then 0: one longrope factor per kept pair
], ids=["last-pairs", "any-pairs"])
@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral", "gemma"])
def test_two_head_dim_prunes_in_one_graph_reload(family: str, pairs, rope_type: str, tmp_path) -> None:
    fam = FAMILIES[family]
    model, inputs = fam.build(), fam.example_inputs()
    original = copy.deepcopy(model)
    with torch.no_grad():
        DG = tp.DependencyGraph().build_dependency(model, inputs, output_transform=output_of)
    q = model.model.layers[0].self_attn.q_proj
    for idxs in pairs:  # the rotary buffer is the same object the graph prunes the second time too
        DG.get_pruning_group(q, tp.prune_linear_out_channels, idxs).prune()
    assert model.model.layers[1].self_attn.head_dim == 4
    kept = original.model.rotary_emb.inv_freq[[2, 3] if rope_type == "longrope" else [0, 1]]
    torch.testing.assert_close(model.model.rotary_emb.inv_freq, kept, rtol=5e-7, atol=0)
    result = tp.verify(original, model, inputs, output_transform=output_of)
    assert result.applies and result.exact, str(result)

    check_config(model)
    assert model.config.rope_parameters["rope_type"] == rope_type
    model.save_pretrained(tmp_path)
    reloaded = type(model).from_pretrained(tmp_path).eval()
    torch.testing.assert_close(logits(reloaded, inputs), logits(model, inputs), rtol=0, atol=1e-5)
    ids, kwargs = inputs["input_ids"][:1], dict(max_new_tokens=4, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        assert torch.equal(model.generate(ids, **kwargs), reloaded.generate(ids, **kwargs))


def test_llama_pruned_by_one_ratio_reloads(tmp_path) -> None:
    """BasePruner picks head-dim pairs by magnitude, anywhere in the head: longrope describes them."""
    fam = FAMILIES["llama"]
    model, inputs = fam.build(), fam.example_inputs()
    tp.pruner.BasePruner(model, inputs, tp.importance.GroupMagnitudeImportance(p=2), pruning_ratio=0.25,
                         ignored_layers=[model.lm_head], output_transform=output_of).step()
    assert model.model.layers[0].self_attn.head_dim == 6
    check_config(model)
    model.save_pretrained(tmp_path)
    reloaded = type(model).from_pretrained(tmp_path).eval()
    torch.testing.assert_close(logits(reloaded, inputs), logits(model, inputs), rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", ["heads", "mlp", "hidden"])
@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral", "gemma"])
def test_other_kinds_reload_at_64_positions(family: str, kind: str, tmp_path) -> None:
    """Heads, MLP and hidden prunes change no recomputed number but Gemma's embedding scale: equal logits."""
    model, inputs = _loud(family, 0)
    with torch.no_grad():
        DG = tp.DependencyGraph().build_dependency(model, inputs, output_transform=output_of)
    prune_uniformly(DG, model, kind)
    check_config(model)
    model.save_pretrained(tmp_path)
    reloaded = type(model).from_pretrained(tmp_path).eval()
    torch.testing.assert_close(logits(reloaded, inputs), logits(model, inputs), rtol=0, atol=1e-5)


_GEMMA_2_3 = dict(head_dim=8, query_pre_attn_scalar=8, sliding_window=4, attn_implementation="eager")


@pytest.mark.parametrize("model_cls,config_cls,extra", [
    ("Gemma2ForCausalLM", "Gemma2Config", {}),
    ("Gemma3ForCausalLM", "Gemma3TextConfig", dict(layer_types=["sliding_attention", "full_attention"])),
])
def test_gemma_2_3_head_dims_reload(model_cls: str, config_cls: str, extra: dict, tmp_path) -> None:
    """The scale comes from query_pre_attn_scalar (stays); Gemma 3 keeps RoPE per layer type."""
    from tests.integrations._hf import _LLAMA_LIKE, Family

    fam = Family(model_cls, model_cls, config_cls, dict(_LLAMA_LIKE, **_GEMMA_2_3, **extra), causal_lm=True)
    model, inputs = fam.build(), fam.example_inputs()
    original = copy.deepcopy(model)
    with torch.no_grad():
        DG = tp.DependencyGraph().build_dependency(model, inputs, output_transform=output_of)
    prune_uniformly(DG, model, "head_dims")
    attn = model.model.layers[0].self_attn
    assert attn.head_dim == 6 and attn.scaling == 8 ** -0.5  # not folded: the config still gives it
    if model_cls == "Gemma2ForCausalLM":  # no q/k norms over the head dim: exact
        result = tp.verify(original, model, inputs, output_transform=output_of)
        assert result.applies and result.exact, str(result)
    else:
        rope = model.config.rope_parameters
        assert all(rope[t]["rope_theta"] < original.config.rope_parameters[t]["rope_theta"]
                   for t in ("sliding_attention", "full_attention"))
    check_config(model)
    model.save_pretrained(tmp_path)
    reloaded = type(model).from_pretrained(tmp_path).eval()
    torch.testing.assert_close(logits(reloaded, inputs), logits(model, inputs), rtol=0, atol=1e-5)
