"""Tiny, randomly initialised Hugging Face models, one per family, built offline.

Each :class:`Family` knows how to build its model and its example inputs. Sizes
are small but keep the structure that matters: several heads, GQA where the
family has it (fewer key/value heads than query heads), an MLP wider than the
hidden size, two layers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

VOCAB = 96
SEQ = 8


@dataclass(frozen=True)
class Family:
    name: str
    model_cls: str          # class name in transformers
    config_cls: str
    config: dict[str, Any]
    inputs: str = "text"    # "text", "image" or "seq2seq"
    causal_lm: bool = False
    marks: tuple = field(default=())

    def build(self, **overrides: Any) -> torch.nn.Module:
        import transformers

        cfg = getattr(transformers, self.config_cls)(**{**self.config, **overrides})
        cfg._attn_implementation = "sdpa" if cfg._attn_implementation is None else cfg._attn_implementation
        torch.manual_seed(0)
        model = getattr(transformers, self.model_cls)(cfg).eval()
        _randomize_norms(model)
        return model

    def example_inputs(self, batch: int = 2) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(1)
        if self.inputs == "image":
            size = self.config.get("image_size", 32)
            return {"pixel_values": torch.randn(batch, 3, size, size, generator=g)}
        ids = torch.randint(3, VOCAB, (batch, SEQ), generator=g)
        if self.inputs == "seq2seq":
            return {"input_ids": ids, "decoder_input_ids": torch.randint(3, VOCAB, (batch, SEQ // 2), generator=g)}
        return {"input_ids": ids}


def _randomize_norms(model: torch.nn.Module) -> None:
    """Norm weights of 1 and biases of 0 hide a wrong channel mapping; give them random values."""
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name.lower() or "ln" in name.lower():
                p.copy_(torch.rand(p.shape, generator=g) + 0.5 if name.endswith("weight") else
                        torch.randn(p.shape, generator=g) * 0.1)


_LLAMA_LIKE = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)

FAMILIES: dict[str, Family] = {f.name: f for f in [
    Family("bert", "BertForMaskedLM", "BertConfig", dict(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
        max_position_embeddings=64)),
    Family("roberta", "RobertaForMaskedLM", "RobertaConfig", dict(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
        max_position_embeddings=64)),
    Family("vit", "ViTForImageClassification", "ViTConfig", dict(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=48, num_labels=5), inputs="image"),
    Family("swin", "SwinForImageClassification", "SwinConfig", dict(
        image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 4], window_size=4,
        num_labels=5), inputs="image"),
    Family("clip_vision", "CLIPVisionModelWithProjection", "CLIPVisionConfig", dict(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=48, projection_dim=16), inputs="image"),
    Family("gpt2", "GPT2LMHeadModel", "GPT2Config", dict(
        vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64), causal_lm=True),
    Family("opt", "OPTForCausalLM", "OPTConfig", dict(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, ffn_dim=48, num_attention_heads=4,
        max_position_embeddings=64, word_embed_proj_dim=32), causal_lm=True),
    Family("llama", "LlamaForCausalLM", "LlamaConfig", dict(_LLAMA_LIKE), causal_lm=True),
    Family("qwen2", "Qwen2ForCausalLM", "Qwen2Config", dict(_LLAMA_LIKE), causal_lm=True),
    Family("mistral", "MistralForCausalLM", "MistralConfig", dict(_LLAMA_LIKE, head_dim=8), causal_lm=True),
    Family("phi3", "Phi3ForCausalLM", "Phi3Config", dict(_LLAMA_LIKE, pad_token_id=0), causal_lm=True),
    Family("gemma", "GemmaForCausalLM", "GemmaConfig", dict(_LLAMA_LIKE, head_dim=8), causal_lm=True),
    Family("t5", "T5ForConditionalGeneration", "T5Config", dict(
        vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=2, num_heads=4,
        relative_attention_num_buckets=8, decoder_start_token_id=0), inputs="seq2seq"),
]}


def logits(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        out = model(**inputs)
    return out.logits if getattr(out, "logits", None) is not None else out[0]


Builder = Callable[..., torch.nn.Module]


KINDS = ("heads", "head_dims", "mlp", "hidden")


def _prune(DG, root, fn, idxs) -> None:
    import depgraph as tp

    group = DG.get_pruning_group(root, fn, idxs)
    assert DG.check_pruning_group(group), group.details()
    group.prune()
    assert isinstance(group, tp.Group)


def prune_uniformly(DG, model: torch.nn.Module, kind: str) -> None:
    """Prune ``kind`` the same way in every layer, so one config value can describe the result.

    heads: the first key/value head of every attention (with its query heads under GQA);
    head_dims: the last rotary pair (dims 3 and 7 of 8), or dim 3 where there is no RoPE;
    mlp: one channel per 32 of every MLP (Swin's stages keep one mlp_ratio);
    hidden: four embedding dims (a multiple of the head count).
    A layer already shrunk by an earlier group (RoPE and T5's shared position bias couple
    every layer of a stack) is not pruned again.
    """
    import depgraph as tp
    from depgraph.integrations._hf_layers import find_attention, find_mlps

    if kind == "hidden":
        emb = model.get_input_embeddings()
        if isinstance(emb, torch.nn.Embedding):
            _prune(DG, _called_embedding(DG, model, emb), tp.prune_embedding_out_channels, [0, 1, 2, 3])
        else:
            conv = next(m for m in emb.modules() if isinstance(m, torch.nn.Conv2d))
            _prune(DG, conv, tp.prune_conv_out_channels, [0, 1, 2, 3])
        return
    if kind == "mlp":
        start = {m.name: m.width for m in find_mlps(model)}
        for name, width in start.items():
            now = next(m for m in find_mlps(model) if m.name == name)
            if now.width == width:
                _prune_in(DG, _down(now.module), list(range(max(1, width // 32))))
        return
    start = {a.name: (a.q_width, a.head_dim) for a in find_attention(model)}
    for name, size in start.items():
        a = next(x for x in find_attention(model) if x.name == name)
        if (a.q_width, a.head_dim) != size:
            continue
        hd = a.head_dim
        if kind == "heads" and not a.fused:
            _prune(DG, a.k, tp.prune_linear_out_channels, list(range(hd)))
        elif kind == "heads":  # fused qkv: through the output projection's input
            _prune_in(DG, _out_proj(a.module), list(range(hd)))
        elif not a.fused:
            _prune(DG, a.q, tp.prune_linear_out_channels, [hd // 2 - 1])
        else:
            _prune_in(DG, _out_proj(a.module), [hd // 2 - 1])


def _out_proj(attn):
    return getattr(attn, "c_proj", None) or attn.o_proj


def _called_embedding(DG, model, emb):
    """T5 ties ``shared`` to the encoder's and decoder's own embeddings; the graph knows the called ones."""
    if emb in DG.module2node:
        return emb
    return next(m for m in model.modules() if isinstance(m, torch.nn.Embedding) and m.weight is emb.weight
                and m in DG.module2node)


def _down(mlp):
    for name in ("down_proj", "fc2", "wo", "c_proj", "output"):
        m = getattr(mlp, name, None)
        if m is not None:
            return getattr(m, "dense", m)
    return None


def _prune_in(DG, layer, idxs) -> None:
    import depgraph as tp

    # GPT-2's Conv1D acts as a Linear: the Linear functions hand it to its own handler.
    _prune(DG, layer, tp.prune_linear_in_channels, idxs)


def output_of(out):
    """The tensor the tests compare: logits, or CLIP's image embeddings."""
    return out.logits if getattr(out, "logits", None) is not None else out.image_embeds
