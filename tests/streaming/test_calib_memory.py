"""Least squares streamed measures what the in-memory path measures, and honours ``calib_memory``.

Markers: zoo (a tiny random Llama, GQA, written by the test with ``save_pretrained`` into many
safetensors shards, plus a word-level tokenizer for the command line).

The streamed path asks its own meta-model pruner which Linears lose inputs
(``shrinkable_linears``, the rule ``prune_model`` uses): the MLP down projections, and the
attention output projections only when heads go. The reference is the loaded model pruned by a
``BasePruner`` step whose covariance measured *both* (what the streamed path measured before), so
leaving the output projections out is shown to change no weight. The Gram matrices are all held
at once, so the budget is checked against their sum plus one layer's working copies
(``reconstruction_memory``), before any tensor is read.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

import depgraph as tp
import depgraph.importance as importance_module
from depgraph.cli import main
from depgraph.errors import OptionError
from depgraph.streaming import MemoryBudgetError, prune_checkpoint
from depgraph.streaming.shards import Checkpoint
from depgraph.workflow.calib_memory import WORKING_COPIES, format_bytes

from ..workflow._files import write_text, write_tokenizer
from .test_compensate import CALIB
from .test_prune_checkpoint import _SIZES, RATIO, _assert_same, _load, _save

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.zoo

LAYERS, MLP, HIDDEN = _SIZES["num_hidden_layers"], _SIZES["intermediate_size"], _SIZES["hidden_size"]
DOWN = (MLP + 1) ** 2 * 8  # one down projection's float64 Gram matrix
NEED = LAYERS * DOWN + WORKING_COPIES * DOWN  # heads kept: the down projections only


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    folder = _save(tmp_path_factory.mktemp("llama") / "src", "llama", tie_word_embeddings=False)
    assert len(list(folder.glob("*.safetensors"))) > 3  # sharded: every layer is read from its shards
    write_tokenizer(folder)
    return folder


@pytest.fixture
def measured(monkeypatch) -> list[dict]:
    """Each covariance the prune collects: the layers measured (by name) and the bytes held."""
    calls: list[dict] = []
    real = importance_module.collect_input_covariance

    def spy(model, data, layers=None, **kw):
        cov = real(model, data, layers=layers, **kw)
        names = {m: n for n, m in model.named_modules()}
        calls.append({"layers": sorted(names[m] for m in layers),
                      "held": sum(rec.gram.numel() * rec.gram.element_size() for rec in cov.values())})
        return cov

    monkeypatch.setattr(importance_module, "collect_input_covariance", spy)
    return calls


def _reference(src: Path, head_ratio: float) -> torch.nn.Module:
    """The loaded model pruned in memory, its covariance measured on down *and* output projections."""
    model = transformers.AutoModelForCausalLM.from_pretrained(src).eval()
    layers = [m for layer in model.model.layers for m in (layer.mlp.down_proj, layer.self_attn.o_proj)]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cov = tp.importance.collect_input_covariance(model, CALIB, layers=layers)
        tp.pruner.BasePruner(
            model, {"input_ids": torch.zeros(1, 8, dtype=torch.long)}, tp.importance.GroupMagnitudeImportance(p=2),
            pruning_ratio=RATIO, ignored_layers=[model.get_input_embeddings(), model.get_output_embeddings()],
            prune_num_heads=head_ratio > 0, head_pruning_ratio=head_ratio, prune_head_dims=False,
            compensation=tp.importance.LeastSquares(cov),
        ).step()
    return model


@pytest.mark.parametrize("head_ratio", [0.0, RATIO])
def test_output_projections_are_measured_only_when_heads_go(src, tmp_path, measured, head_ratio) -> None:
    o_proj = (HIDDEN + 1) ** 2 * 8
    need = NEED + (LAYERS * o_proj if head_ratio else 0)
    # a budget of exactly the estimate fits (the boundary itself is tested below)
    prune_checkpoint(src, tmp_path / "out", ratio=RATIO, head_ratio=head_ratio, calib=CALIB, compensation="lstsq",
                     max_memory="1MB", calib_memory=need, progress=False)
    downs = [f"model.layers.{i}.mlp.down_proj" for i in range(LAYERS)]
    o_projs = [f"model.layers.{i}.self_attn.o_proj" for i in range(LAYERS)] if head_ratio else []
    assert len(measured) == 1 and measured[0]["layers"] == sorted(downs + o_projs)
    # the estimate is what the streamed pass really holds (plus the working copies)
    assert measured[0]["held"] == need - WORKING_COPIES * DOWN
    got = _load(tmp_path / "out")
    _assert_same(_reference(src, head_ratio), got)  # bit for bit as when o_proj was measured too
    assert got.config.num_key_value_heads == (3 if head_ratio else 4)
    assert bool(got.model.layers[0].mlp.down_proj.bias.abs().sum() > 0)  # really refit (a bias was fitted)


def _no_reads(monkeypatch) -> None:
    def fail(*a, **k):
        pytest.fail("a tensor was read")

    monkeypatch.setattr(Checkpoint, "load", fail)
    monkeypatch.setattr(Checkpoint, "raw_chunks", fail)


@pytest.mark.parametrize("importance", ["magnitude", "activation_weight"])  # refused before calibrating too
def test_one_byte_under_the_estimate_is_refused_before_any_read(src, tmp_path, monkeypatch, measured,
                                                                 importance) -> None:
    _no_reads(monkeypatch)
    with pytest.raises(MemoryBudgetError) as info:
        prune_checkpoint(src, tmp_path / "out", ratio=RATIO, head_ratio=0.0, importance=importance, calib=CALIB,
                         compensation="lstsq", max_memory="1MB", calib_memory=NEED - 1, progress=False)
    assert str(info.value) == (
        f"compensation='lstsq' would need {format_bytes(NEED)} (Gram matrices of {LAYERS} layers "
        f"{format_bytes(LAYERS * DOWN)} + {format_bytes(WORKING_COPIES * DOWN)} working), over the "
        f"{format_bytes(NEED - 1)} budget (set by calib_memory {NEED - 1}); pass --calib-memory (calib_memory=) to "
        "raise the budget, or use compensation='bias' (--compensation bias), which keeps two numbers per channel")
    assert not measured and not (tmp_path / "out").exists()


def test_default_budget_is_half_the_available_memory(src, tmp_path, monkeypatch) -> None:
    import depgraph.streaming.memory as memory

    _no_reads(monkeypatch)
    monkeypatch.setattr(memory, "available_memory", lambda: 2 * NEED - 2)
    with pytest.raises(MemoryBudgetError, match=rf"over the {format_bytes(NEED - 1)} budget \(50% of the "
                                                rf"{format_bytes(2 * NEED - 2)} available\); pass --calib-memory"):
        prune_checkpoint(src, tmp_path / "out", ratio=RATIO, head_ratio=0.0, calib=CALIB, compensation="lstsq",
                         max_memory="1MB", progress=False)
    assert not (tmp_path / "out").exists()


def test_memory_mode_bad_sizes_and_bias(src, tmp_path) -> None:
    with pytest.raises(MemoryBudgetError, match=r"compensation='lstsq' would need .* over the 1.00 KB budget"):
        prune_checkpoint(src, tmp_path / "mem", ratio=RATIO, calib=CALIB, compensation="lstsq", mode="memory",
                         calib_memory="1KB", progress=False)
    assert not (tmp_path / "mem").exists()
    # the message prune_model gives, before the folder is even looked at
    with pytest.raises(OptionError, match=r"'lots' is not a memory size; write e.g. 600MB"):
        prune_checkpoint(tmp_path / "nowhere", tmp_path / "out", calib=CALIB, compensation="lstsq",
                         calib_memory="lots")
    # bias keeps two numbers per channel: the budget has nothing to bound
    prune_checkpoint(src, tmp_path / "bias", ratio=RATIO, calib=CALIB, compensation="bias", max_memory="1MB",
                     calib_memory="1KB", progress=False)
    assert _load(tmp_path / "bias").config.mlp_bias is True


def test_cli_calib_memory_on_a_streamed_checkpoint(src, tmp_path, capsys) -> None:
    corpus = write_text(tmp_path / "corpus.txt")
    base = ["prune", str(src), "--ratio", "0.25", "--head-ratio", "0", "--compensation", "lstsq", "--calib",
            str(corpus), "--calib-samples", "4", "--seq-len", "16", "--max-memory", "1MB", "--plain"]
    assert main([*base, "--calib-memory", "1KB", "--output", str(tmp_path / "no")]) == 1
    err = capsys.readouterr().err
    assert "MemoryBudgetError: compensation='lstsq' would need" in err and "(set by calib_memory 1KB)" in err
    assert not (tmp_path / "no").exists()
    assert main([*base, "--calib-memory", "wide", "--output", str(tmp_path / "no")]) == 2
    assert "OptionError: 'wide' is not a memory size" in capsys.readouterr().err
    assert main([*base, "--calib-memory", f"{NEED}", "--output", str(tmp_path / "yes")]) == 0
    assert "(stream)" in capsys.readouterr().out and _load(tmp_path / "yes").config.mlp_bias is True
