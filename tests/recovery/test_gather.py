"""``depgraph.recovery.gather``: the student rebuilt from a gathered state dict after a sharded run.

The sharded runs themselves (FSDP1 / FSDP2 on two CPU processes) are in
``test_sharded.py``; here the two steps are checked on one process, on a tiny
Llama with tied embeddings (the case where assigning names one by one would
split one parameter into two).
"""

from __future__ import annotations

import pytest
import torch

from depgraph.errors import RecoveryError
from depgraph.recovery.gather import load_full, meta_skeleton

pytest.importorskip("transformers")


def _tied_llama() -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=True)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    return model


def test_the_skeleton_holds_no_parameter_memory_and_keeps_ties() -> None:
    model = _tied_llama()
    skeleton = meta_skeleton(model)
    assert all(p.is_meta for p in skeleton.parameters())
    assert skeleton.lm_head.weight is skeleton.model.embed_tokens.weight  # still one parameter
    assert not skeleton.model.rotary_emb.inv_freq.is_meta  # buffers (in no state dict here) are real copies
    assert all(not p.is_meta for p in model.parameters())  # the original is untouched


@pytest.mark.parametrize("drop_alias", [False, True])
def test_the_gathered_weights_make_the_same_model(drop_alias) -> None:
    """Trained weights (here: the original's, changed) assigned to a skeleton give the same outputs, tied."""
    model = _tied_llama()
    skeleton = meta_skeleton(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    if drop_alias:  # a gatherer that names a tied parameter once
        del state["lm_head.weight"]
    rebuilt = load_full(skeleton, state)
    assert rebuilt is skeleton and not any(p.is_meta for p in rebuilt.parameters())
    assert rebuilt.lm_head.weight is rebuilt.model.embed_tokens.weight
    x = torch.randint(0, 64, (2, 8))
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x).logits, model(x).logits)


def test_weights_of_another_model_are_refused() -> None:
    model = _tied_llama()
    state = model.state_dict()
    del state["model.norm.weight"]
    state["model.extra.weight"] = torch.zeros(1)
    with pytest.raises(RecoveryError, match=r"missing \['model.norm.weight'\], unexpected \['model.extra.weight'\]"):
        load_full(meta_skeleton(model), state)
