"""``hf_prune_settings``: the layers kept whole and the attention settings, one answer for both checkpoint paths.

``prune_model`` (in memory) and ``prune_checkpoint`` (streamed or loaded) take them from the
same function, so the same options give the same files; ``prune_hidden`` means the same on
both. Checkpoints are tiny random Llamas and a ViT written by the test.
"""

from __future__ import annotations

import pytest
import torch

from depgraph.errors import OptionError
from depgraph.streaming import PruneOptions, prune_checkpoint
from depgraph.workflow import hf_prune_settings, load_source, prune_model

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.zoo


def _llama(**kw) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=96, intermediate_size=128, num_attention_heads=8, num_key_value_heads=4,
                                   num_hidden_layers=2, vocab_size=100, max_position_embeddings=64, **kw)
    return transformers.LlamaForCausalLM(cfg).eval()


def test_kept_layers_and_pruner_settings() -> None:
    model = _llama(tie_word_embeddings=False)
    s = hf_prune_settings(model, head_ratio=0.25, ignore=["model.layers.1.mlp"])
    assert s.ignored_layers == [model.model.embed_tokens, model.lm_head, model.model.layers[1].mlp]
    kwargs = s.pruner_kwargs()
    assert kwargs.pop("ignored_layers") == s.ignored_layers
    assert kwargs == dict(prune_num_heads=True, head_pruning_ratio=0.25, prune_head_dims=False)
    hidden = hf_prune_settings(model, prune_hidden=True)  # the embedding's outputs are the hidden size: pruned
    assert hidden.ignored_layers == [model.lm_head]
    assert hidden.pruner_kwargs()["prune_num_heads"] is False  # head_ratio 0: every head stays, attention not ignored
    # the streamed options object delegates to it
    opts = PruneOptions(ratio=0.2, head_ratio=0.25, ignore=("model.layers.1.mlp",))
    assert opts.ignored_layers(model) == s.ignored_layers


def test_task_head_is_kept() -> None:
    from tests.integrations._hf import FAMILIES

    vit = FAMILIES["vit"].build()
    kept = hf_prune_settings(vit).ignored_layers
    assert vit.classifier in kept and vit.get_input_embeddings() in kept


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(ignore=["model.layers.1.mlpp"]), r"ignore names no layer of the model \(LlamaForCausalLM\): "
                                               r"'model\.layers\.1\.mlpp' \(did you mean model\.layers\.1\.mlp"),
        (dict(head_ratio=1.0), r"head_ratio must be in \[0, 1\), got 1.0"),
        (dict(head_ratio=True), r"head_ratio must be in \[0, 1\), got True"),
    ],
)
def test_bad_settings_are_refused(kwargs, match) -> None:
    with pytest.raises(OptionError, match=match):
        hf_prune_settings(_llama(), **kwargs)


@pytest.mark.parametrize("head_ratio", [0.25, 0.0])
def test_prune_hidden_in_memory_equals_the_checkpoint_path(tmp_path, head_ratio) -> None:
    """``prune_model(prune_hidden=True)`` writes the tensors ``prune_checkpoint`` streams, bit for bit."""
    _llama(tie_word_embeddings=False).save_pretrained(tmp_path / "src", max_shard_size="60KB")
    result = prune_model(load_source(tmp_path / "src"), ratio=0.25, head_ratio=head_ratio, prune_hidden=True,
                         output=tmp_path / "memory", latency=False)
    assert result.report.verified
    assert result.report.kept_layers == ["lm_head"]
    prune_checkpoint(tmp_path / "src", tmp_path / "stream", ratio=0.25, head_ratio=head_ratio, prune_hidden=True,
                     max_memory="1MB", progress=False)
    a = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "memory").state_dict()
    b = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "stream").state_dict()
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert a["model.embed_tokens.weight"].shape == (100, 72)
    assert a["model.layers.0.self_attn.k_proj.weight"].shape == (12 * (3 if head_ratio else 4), 72)


def test_prune_hidden_is_refused_for_a_vision_model() -> None:
    with pytest.raises(OptionError, match=r"prune_hidden prunes the hidden size of a Hugging Face model; "
                                          r"squeezenet1_1 is a torchvision model"):
        prune_model(load_source("squeezenet1_1", input_size=32), ratio=0.3, prune_hidden=True, latency=False)
