"""``BasePruner(prune_num_heads=True)``: whole attention heads, found from the trace.

Markers:
    zoo   the tests on timm and transformers architectures (tiny, random weights, offline).

Removing whole heads is exact (the rest of the network computes what it computed
with those heads' output columns zeroed), so every head-only prune is proven
with ``tp.verify``. Under GQA the unit removed is a key/value head with exactly
the query heads that share it; the tests find which heads survived by matching
the pruned weights against the original's, head by head.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

import depgraph as tp
from depgraph.dependency.heads import find_attention_heads
from tests.integrations._hf import FAMILIES, logits, output_of

MAG = tp.importance.GroupMagnitudeImportance


def prune_heads(model, inputs, output_transform=None, importance=None, **kwargs):
    """Prune with ``prune_num_heads=True`` (head dims and other channels left alone unless asked)."""
    original = copy.deepcopy(model)
    kwargs = {"pruning_ratio": 0.0, "prune_num_heads": True, **kwargs}
    pruner = tp.pruner.BasePruner(model, inputs, importance or MAG(), output_transform=output_transform, **kwargs)
    pruner.step()
    return original, pruner


def kept_heads(pruned: torch.Tensor, original: torch.Tensor, head_dim: int) -> list[int]:
    """Which original heads (row blocks of ``head_dim``) a pruned projection weight kept, in order."""
    blocks = original.view(-1, head_dim, original.shape[-1])
    out = []
    for block in pruned.view(-1, head_dim, pruned.shape[-1]):
        match = [h for h in range(blocks.shape[0]) if torch.equal(blocks[h][:, : block.shape[-1]], block)]
        assert len(match) == 1
        out.append(match[0])
    return out


# -- Hugging Face ------------------------------------------------------------------------------



def _hf(name: str, **overrides):
    pytest.importorskip("transformers")
    fam = FAMILIES[name]
    return fam, fam.build(**overrides), fam.example_inputs()


@pytest.mark.zoo
@pytest.mark.parametrize("heads,kv_heads,ratio,kv_left", [(4, 2, 0.5, 1), (9, 3, 0.34, 2)])
def test_llama_gqa_removes_a_kv_head_with_exactly_its_query_heads(heads, kv_heads, ratio, kv_left, tmp_path):
    import transformers

    fam, model, inputs = _hf("llama", num_attention_heads=heads, num_key_value_heads=kv_heads,
                             hidden_size=4 * heads, head_dim=4)
    original, _ = prune_heads(model, inputs, output_of, head_pruning_ratio=ratio)
    group = heads // kv_heads
    for layer, ref in zip(model.model.layers, original.model.layers, strict=True):
        attn, ref_attn = layer.self_attn, ref.self_attn
        kv = kept_heads(attn.k_proj.weight, ref_attn.k_proj.weight, 4)
        assert len(kv) == kv_left and kept_heads(attn.v_proj.weight, ref_attn.v_proj.weight, 4) == kv
        q = kept_heads(attn.q_proj.weight, ref_attn.q_proj.weight, 4)
        assert q == [j * group + i for j in kv for i in range(group)]  # exactly the query heads of kept KV heads
        o_cols = attn.o_proj.weight.T.reshape(-1, 4, attn.o_proj.out_features)
        ref_cols = ref_attn.o_proj.weight.T.reshape(-1, 4, attn.o_proj.out_features)
        assert all(torch.equal(o_cols[i], ref_cols[h]) for i, h in enumerate(q))
        assert attn.num_key_value_groups == group and attn.head_dim == 4
    assert model.config.num_attention_heads == kv_left * group and model.config.num_key_value_heads == kv_left
    assert tp.verify(original, model, inputs, output_transform=output_of).exact

    from depgraph.integrations.transformers import check_config

    check_config(model)
    model.save_pretrained(tmp_path)
    reloaded = transformers.LlamaForCausalLM.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(logits(reloaded, inputs), logits(model, inputs), rtol=1e-5, atol=1e-5)
    ids = inputs["input_ids"][:1]
    with torch.no_grad():
        out = reloaded.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert out.shape == (1, ids.shape[1] + 4)


@pytest.mark.zoo
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_num_heads_follows_a_gqa_block_down_to_one_kv_head(attn):
    """Once a block keeps one key/value head it is no longer offered for head pruning (its last
    head cannot go), but ``pruner.num_heads`` must still report its counts, not the original ones."""
    fam, model, inputs = _hf("llama", attn_implementation=attn, num_attention_heads=8, num_key_value_heads=4,
                             hidden_size=32, head_dim=4)
    num_heads = {}
    for layer in model.model.layers:
        num_heads.update({layer.self_attn.q_proj: 8, layer.self_attn.k_proj: 4, layer.self_attn.v_proj: 4})
    pruner = tp.pruner.BasePruner(model, inputs, MAG(), pruning_ratio=0.0, prune_num_heads=True,
                                  head_pruning_ratio=0.75, iterative_steps=2, num_heads=num_heads)
    seen = []
    for _ in range(2):
        pruner.step()
        attn_0 = model.model.layers[0].self_attn
        seen.append((pruner.num_heads[attn_0.q_proj], pruner.num_heads[attn_0.k_proj],
                     attn_0.q_proj.out_features // 4, attn_0.k_proj.out_features // 4))
        assert {pruner.num_heads[layer.self_attn.v_proj] for layer in model.model.layers} == {seen[-1][1]}
    # (reported query heads, reported KV heads, query heads in q_proj, KV heads in k_proj) after each step:
    # 4 KV heads -> 3 (half of the 0.75 schedule) -> 1
    assert seen == [(6, 3, 6, 3), (2, 1, 2, 1)]
    assert model.config.num_attention_heads == 2 and model.config.num_key_value_heads == 1


@pytest.mark.zoo
@pytest.mark.parametrize("name", ["llama", "gemma"])
def test_eager_gqa_repeat_kv_removes_kv_heads_with_their_query_heads(name):
    """Eager attention repeats K/V (repeat_kv's expand + reshape): the unit still starts at the KV head."""
    fam, model, inputs = _hf(name, attn_implementation="eager", num_attention_heads=6, num_key_value_heads=3,
                             hidden_size=24, head_dim=4)
    original, _ = prune_heads(model, inputs, head_pruning_ratio=0.34)
    attn, ref = model.model.layers[0].self_attn, original.model.layers[0].self_attn
    kv = kept_heads(attn.k_proj.weight, ref.k_proj.weight, 4)
    assert len(kv) == 2 and kept_heads(attn.q_proj.weight, ref.q_proj.weight, 4) == [2 * j + i for j in kv for i in (0, 1)]
    assert attn.num_key_value_groups == 2 and model.config.num_key_value_heads == 2
    assert tp.verify(original, model, inputs, output_transform=output_of).exact


@pytest.mark.zoo
def test_qwen2_heads_with_qkv_biases():
    fam, model, inputs = _hf("qwen2")
    original, _ = prune_heads(model, inputs, output_of, head_pruning_ratio=0.5)
    attn = model.model.layers[0].self_attn
    assert (attn.q_proj.out_features, attn.k_proj.out_features, attn.q_proj.bias.numel()) == (16, 8, 16)
    assert model.config.num_key_value_heads == 1
    assert tp.verify(original, model, inputs, output_transform=output_of).exact


@pytest.mark.zoo
def test_bert_heads_inexpressible_config_still_runs_and_verifies():
    fam, model, inputs = _hf("bert")
    original, _ = prune_heads(model, inputs, output_of, head_pruning_ratio=0.5)
    attn = model.bert.encoder.layer[0].attention.self
    assert (attn.num_attention_heads, attn.all_head_size, attn.query.out_features) == (2, 16, 16)
    assert tp.verify(original, model, inputs, output_transform=output_of).exact
    from depgraph.integrations.transformers import check_config

    with pytest.raises(tp.DepgraphError, match="config cannot describe the pruned model"):
        check_config(model)  # BertConfig derives the head size as hidden_size / num_attention_heads


@pytest.mark.zoo
@pytest.mark.parametrize("name", ["roberta", "vit", "swin", "clip_vision", "opt", "mistral", "gemma", "t5"])
def test_hf_families_lose_half_their_heads_exactly(name):
    """No output_transform: the default outputs leave heads free in every family. Configs that
    derive the head size from the hidden size cannot describe fewer heads (check_config says so)."""
    from depgraph.integrations.transformers import attention_layers, check_config

    fam, model, inputs = _hf(name)
    before = [a.heads for a in attention_layers(model)]
    original, _ = prune_heads(model, inputs, head_pruning_ratio=0.5)
    assert [a.heads for a in attention_layers(model)] == [h // 2 for h in before]
    assert tp.verify(original, model, inputs, output_transform=output_of).exact
    if name in ("roberta", "swin", "clip_vision", "opt"):
        with pytest.raises(tp.DepgraphError, match="config cannot describe the pruned model"):
            check_config(model)
    else:
        check_config(model)


@pytest.mark.zoo
def test_head_pruning_ratio_dict_overrides_per_block():
    fam, model, inputs = _hf("llama")
    with pytest.warns(UserWarning, match="config cannot describe"):
        prune_heads(model, inputs, output_of, head_pruning_ratio=0.0,
                    head_pruning_ratio_dict={model.model.layers[1].self_attn: 0.5})
    widths = [layer.self_attn.k_proj.out_features for layer in model.model.layers]
    assert widths == [16, 8]


@pytest.mark.zoo
def test_num_heads_is_checked_against_the_trace():
    fam, model, inputs = _hf("llama")
    attn = model.model.layers[0].self_attn
    ok = {attn.q_proj: 4, attn.k_proj: 2, attn.v_proj: 2}
    tp.pruner.BasePruner(model, inputs, MAG(), output_transform=output_of, num_heads=ok, prune_num_heads=True)
    with pytest.raises(tp.DepgraphError, match=r"num_heads\[model.layers.0.self_attn.k_proj\] = 3.*2 key/value"):
        tp.pruner.BasePruner(model, inputs, MAG(), output_transform=output_of,
                             num_heads={attn.k_proj: 3}, prune_num_heads=True)


@pytest.mark.zoo
def test_heads_frozen_by_outputs_are_reported():
    fam, model, inputs = _hf("bert", attn_implementation="eager")
    inputs = {**inputs, "output_attentions": True}
    with pytest.warns(UserWarning, match=r"heads of 2 attention op\(s\) cannot be removed\n  - torch.matmul in "
                      r"bert.encoder.layer.0.attention.self: model output"):
        prune_heads(model, inputs, output_transform=lambda o: (o.logits, *o.attentions), head_pruning_ratio=0.5)
    assert model.bert.encoder.layer[0].attention.self.num_attention_heads == 4


@pytest.mark.zoo
def test_ratio_one_keeps_one_head_per_block():
    fam, model, inputs = _hf("bert")
    original, _ = prune_heads(model, inputs, output_of, head_pruning_ratio=1.0)
    for layer in model.bert.encoder.layer:
        assert layer.attention.self.num_attention_heads == 1
    assert tp.verify(original, model, inputs, output_transform=output_of).exact


# -- nn.MultiheadAttention ------------------------------------------------------------------------


class _Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Linear(8, 32)
        layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True, dropout=0.0)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(x)))


def test_multihead_attention_heads_removed_exactly():
    model, x = _Encoder().eval(), torch.randn(2, 6, 8)
    original, pruner = prune_heads(model, x, head_pruning_ratio=0.5)
    for layer in model.encoder.layers:
        mha = layer.self_attn
        assert (mha.embed_dim, mha.num_heads, mha.head_dim) == (32, 2, 8)
        assert mha.in_proj_weight.shape == (3 * 16, 32) and mha.out_proj.in_features == 16
    assert model(x).shape == (2, 6, 5)
    result = tp.verify(original, model, x)
    assert result.applies and result.exact, str(result)


def test_multihead_attention_heads_with_hidden_dims():
    model, x = _Encoder().eval(), torch.randn(2, 6, 8)
    original, pruner = prune_heads(model, x, head_pruning_ratio=0.5, pruning_ratio=0.25, ignored_layers=[])
    for layer in model.encoder.layers:
        mha = layer.self_attn
        assert (mha.embed_dim, mha.num_heads, mha.head_dim) == (24, 2, 6)
        assert mha.out_proj.weight.shape == (24, 12)
    assert model(x).shape == (2, 6, 5)
    assert tp.verify(original, model, x).shapes_match
    with pytest.raises(tp.DepgraphError, match=r"num_heads\[encoder.layers.0.self_attn\] = 3"):
        fresh = _Encoder().eval()
        tp.pruner.BasePruner(fresh, x, MAG(), num_heads={fresh.encoder.layers[0].self_attn: 3})


def test_multihead_attention_heads_replay_from_the_pruning_history():
    from depgraph.functional.pruned_mha import PrunedMultiheadAttention

    model, x = _Encoder().eval(), torch.randn(2, 6, 8)
    with torch.no_grad():  # heads 0 and 2 weakest: the kept heads are not simply the first ones
        for layer in model.encoder.layers:
            rows = torch.cat([torch.arange(h * 8, h * 8 + 8) + j * 32 for h in (0, 2) for j in range(3)])
            layer.self_attn.in_proj_weight[rows] *= 0.01
    reference = copy.deepcopy(model)
    _, pruner = prune_heads(model, x, head_pruning_ratio=0.5, pruning_ratio=0.5)
    history = pruner.pruning_history()
    assert ["encoder.layers.0.self_attn", "heads", [0, 2]] in history
    assert any(name == "encoder.layers.1.linear1" and kind is True for name, kind, _ in history)

    fresh = copy.deepcopy(reference)
    replay = tp.pruner.BasePruner(fresh, x, MAG(), prune_num_heads=True)
    replay.load_pruning_history(history)
    assert replay.pruning_history() == history
    for a, b in zip(fresh.encoder.layers, model.encoder.layers, strict=True):
        assert type(a.self_attn) is PrunedMultiheadAttention
        assert a.self_attn._heads_kept.tolist() == b.self_attn._heads_kept.tolist() == [1, 3]
        assert vars(a.self_attn)["num_heads"] == 2 and a.linear1.out_features == b.linear1.out_features == 32
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))

    wrong = _Encoder().eval()  # one layer: the entries of layer 0 would apply, those of layer 1 cannot
    wrong.encoder.layers, wrong.encoder.num_layers = wrong.encoder.layers[:1], 1
    with pytest.raises(tp.DepgraphError, match=r"'encoder.layers.1.linear1', .* from the pruning history are not modules"):
        tp.pruner.BasePruner(wrong, x, MAG()).load_pruning_history(history)
    layer = wrong.encoder.layers[0]
    assert type(layer.self_attn) is nn.MultiheadAttention and layer.self_attn.num_heads == 4
    assert layer.linear1.out_features == 64


# -- timm -----------------------------------------------------------------------------------------


def _timm(name: str, **kwargs):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    return timm.create_model(name, img_size=32, depth=2, **kwargs).eval(), torch.randn(2, 3, 32, 32)


@pytest.mark.zoo
@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "deit_tiny_distilled_patch16_224"])
def test_timm_vit_heads_removed_exactly(name):
    model, x = _timm(name)
    original, _ = prune_heads(model, x, head_pruning_ratio=0.34)
    for blk in model.blocks:
        assert (blk.attn.num_heads, blk.attn.head_dim, blk.attn.qkv.out_features) == (2, 64, 384)
        assert blk.attn.proj.in_features == 128
    assert tp.verify(original, model, x).exact


@pytest.mark.zoo
def test_timm_heads_and_head_dims_in_one_step():
    model, x = _timm("vit_tiny_patch16_224", num_heads=4)  # head_dim 48
    prune_heads(model, x, head_pruning_ratio=0.5, pruning_ratio=0.25, prune_head_dims=True,
                ignored_layers=[model.head], root_module_types=[nn.Linear])
    for blk in model.blocks:
        assert blk.attn.num_heads == 2
        assert blk.attn.qkv.out_features == 3 * 2 * blk.attn.head_dim and blk.attn.head_dim < 48
    assert model(x).shape == (2, 1000)


@pytest.mark.zoo
def test_iterative_heads_and_head_dims_each_follow_their_schedule():
    model, x = _timm("vit_tiny_patch16_224", num_heads=4)
    pruner = tp.pruner.BasePruner(model, x, MAG(), pruning_ratio=0.5, prune_num_heads=True, head_pruning_ratio=0.5,
                                  iterative_steps=2, ignored_layers=[model.head], root_module_types=[nn.Linear])
    seen = []
    for _ in range(2):
        pruner.step()
        seen.append([(blk.attn.num_heads, blk.attn.head_dim) for blk in model.blocks])
    # removing heads does not count as removing head dims: 48 -> 36 -> 24 dims while 4 -> 3 -> 2 heads
    assert seen == [[(3, 36)] * 2, [(2, 24)] * 2]
    assert model(x).shape == (2, 1000)


@pytest.mark.zoo
def test_global_head_pruning_ranks_across_blocks():
    model, x = _timm("vit_tiny_patch16_224", num_heads=4)
    with torch.no_grad():  # make block 0's heads clearly weaker: global ranking takes them first
        model.blocks[0].attn.qkv.weight.mul_(0.01)
        model.blocks[0].attn.proj.weight.mul_(0.01)
    # normalizer=None: the default "mean" would rescale each block's scores to the same mean
    original, _ = prune_heads(model, x, head_pruning_ratio=0.5, global_pruning=True, importance=MAG(normalizer=None))
    heads = [blk.attn.num_heads for blk in model.blocks]
    assert sum(heads) == 4 and heads == [1, 3]  # 4 of 8 go; block 0 keeps one head
    assert tp.verify(original, model, x).exact


@pytest.mark.zoo
def test_iterative_steps_and_round_to_for_heads():
    model, x = _timm("vit_tiny_patch16_224", num_heads=4)
    pruner = tp.pruner.BasePruner(model, x, MAG(), pruning_ratio=0.0, prune_num_heads=True,
                                  head_pruning_ratio=0.5, iterative_steps=2)
    pruner.step()
    assert [blk.attn.num_heads for blk in model.blocks] == [3, 3]
    pruner.step()
    assert [blk.attn.num_heads for blk in model.blocks] == [2, 2]

    model, x = _timm("vit_tiny_patch16_224", num_heads=4)  # 48 dims a head: keep 2 heads for round_to=32
    prune_heads(model, x, head_pruning_ratio=0.25, round_to=32)
    assert [blk.attn.num_heads for blk in model.blocks] == [4, 4]
    model, x = _timm("vit_tiny_patch16_224", num_heads=4)
    prune_heads(model, x, head_pruning_ratio=0.5, round_to=32)
    assert [blk.attn.num_heads for blk in model.blocks] == [2, 2]


@pytest.mark.zoo
def test_soft_head_pruning_zeroes_and_counts_heads():
    model, x = _timm("vit_tiny_patch16_224", num_heads=4)
    pruner = tp.pruner.BasePruner(model, x, MAG(), pruning_ratio=0.0, prune_num_heads=True, head_pruning_ratio=0.5,
                                  iterative_steps=2, soft_pruning=True)
    for _ in range(2):
        pruner.step()
        assert model.blocks[0].attn.qkv.out_features == 576  # shapes stay
    rows = model.blocks[0].attn.qkv.weight.view(3, 4, 48, -1)
    zero_heads = [h for h in range(4) if bool((rows[:, h] == 0).all())]
    assert len(zero_heads) == 2  # one head per step, the first one not chosen again
    assert bool((model.blocks[0].attn.proj.weight.view(192, 4, 48)[:, zero_heads] == 0).all())


def test_soft_head_pruning_of_multihead_attention():
    model, x = _Encoder().eval(), torch.randn(2, 6, 8)
    tp.pruner.BasePruner(model, x, MAG(), pruning_ratio=0.0, prune_num_heads=True, head_pruning_ratio=0.5,
                         soft_pruning=True).step()
    mha = model.encoder.layers[0].self_attn
    assert type(mha) is nn.MultiheadAttention and mha.num_heads == 4
    zero = [h for h in range(4) if bool((mha.out_proj.weight[:, h * 8:(h + 1) * 8] == 0).all())]
    assert len(zero) == 2


@pytest.mark.zoo
def test_interactive_step_yields_head_groups():
    model, x = _timm("vit_tiny_patch16_224", num_heads=4)
    pruner = tp.pruner.BasePruner(model, x, MAG(), pruning_ratio=0.0, prune_num_heads=True, head_pruning_ratio=0.5)
    groups = list(pruner.step(interactive=True))
    assert [g[0].dep.target.name for g in groups] == ["blocks.0.attn.qkv", "blocks.1.attn.qkv"]
    assert all(len(g[0].idxs) == 2 * 3 * 48 for g in groups)  # two heads of q, k and v
    groups[1].prune()
    assert [blk.attn.num_heads for blk in model.blocks] == [4, 2]


def test_discovery_reports_units_of_each_block():
    model, x = _timm("vit_tiny_patch16_224")
    DG = tp.DependencyGraph().build_dependency(model, x)
    blocks = find_attention_heads(DG)
    assert [b.name for b in blocks] == ["blocks.0.attn.qkv", "blocks.1.attn.qkv"]
    assert all(b.query_heads == b.kv_heads == 3 and len(b.units) == 3 for b in blocks)
    assert blocks[0].root_idxs([1]) == [64 * 0 + 64 + i for i in range(64)] + [192 + 64 + i for i in range(64)] + [
        384 + 64 + i for i in range(64)]  # head 1 of q, k and v in the fused qkv rows
