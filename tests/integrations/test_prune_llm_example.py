"""examples/prune_llm.py on a tiny random Llama checkpoint (GQA) saved to a temporary folder."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from tests.integrations._hf import FAMILIES

transformers = pytest.importorskip("transformers")

pytestmark = [pytest.mark.zoo, pytest.mark.filterwarnings("ignore:depgraph. after this prune")]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "prune_llm.py"


def _example():
    spec = importlib.util.spec_from_file_location("prune_llm", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prune_llm_example(tmp_path, capsys) -> None:
    checkpoint, out = tmp_path / "tiny", tmp_path / "pruned"
    FAMILIES["llama"].build(num_hidden_layers=2).save_pretrained(checkpoint)
    report = _example().main(["--model", str(checkpoint), "--ratio", "0.5", "--seq-len", "64", "--save", str(out)])
    before, after = report["before"], report["after"]
    assert after["params"] < before["params"] and after["macs"] < before["macs"]
    assert math.isfinite(after["ppl"])
    assert "saved to" in capsys.readouterr().out
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    cfg = reloaded.config
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.intermediate_size) == (2, 1, 24)
    ids = torch.randint(0, cfg.vocab_size, (1, 6))
    assert reloaded.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0).shape == (1, 9)


def test_prune_llm_example_mlp_only_on_gpt2(tmp_path) -> None:
    """GPT-2's config derives the head size from n_embd: with --head-ratio 0 only MLPs shrink, and it reloads."""
    checkpoint, out = tmp_path / "gpt2", tmp_path / "pruned"
    FAMILIES["gpt2"].build().save_pretrained(checkpoint)
    report = _example().main(["--model", str(checkpoint), "--ratio", "0.25", "--head-ratio", "0", "--save", str(out)])
    assert report["after"]["params"] < report["before"]["params"]
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert (reloaded.config.n_head, reloaded.config.n_inner) == (4, 96)


def test_prune_llm_example_rejects_bad_ratio(tmp_path) -> None:
    with pytest.raises(SystemExit):
        _example().main(["--model", str(tmp_path), "--ratio", "1.5"])


def test_prune_llm_example_bias_compensation_reloads(tmp_path) -> None:
    """Compensated biases are saved with the config flags that make from_pretrained build them."""
    checkpoint, out = tmp_path / "tiny", tmp_path / "pruned"
    FAMILIES["llama"].build(num_hidden_layers=2).save_pretrained(checkpoint)
    example = _example()
    example.main(["--model", str(checkpoint), "--ratio", "0.5", "--criterion", "activation",
                  "--bias-compensation", "--seq-len", "64", "--save", str(out)])
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert reloaded.config.mlp_bias and reloaded.model.layers[0].mlp.down_proj.bias.abs().sum() > 0
    ids = torch.randint(0, reloaded.config.vocab_size, (1, 6))
    assert reloaded.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0).shape == (1, 9)
