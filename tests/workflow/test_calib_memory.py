"""The sized language-model default: reconstruction + lstsq when its Gram matrices fit the budget, else
fluctuation + bias, with the reason in the report and the command's table.

The estimate is checked against the Gram tensors the calibrated criterion really holds; the choice
on both sides of the budget boundary (budget = the estimate, and one byte less); ``--calib-memory``
refusals before any model loads; a named criterion or compensation never replaced. Every model is a
tiny transformers Llama the test writes with ``save_pretrained``.
"""

from __future__ import annotations

import json

import pytest
import torch

import depgraph.workflow as workflow
from depgraph.errors import OptionError
from depgraph.workflow import load_source, prune_model
from depgraph.workflow.calib_memory import (
    DEFAULT_BUDGET_FRACTION,
    calibration_budget,
    format_bytes,
    gram_bytes,
    plan_reconstruction_memory,
)
from depgraph.workflow.keep import hf_prune_settings
from depgraph.workflow.recipes import Recipe, build_scoring, choose_by_memory, resolve_recipe

from ._files import write_text, write_tiny_llama

pytest.importorskip("transformers")

OVER = "language-model default: fluctuation + bias, as reconstruction + lstsq would need"
FITS = "language-model default: reconstruction + lstsq needs"


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    # MLP 48 wide, attention 32: the two consumer widths differ, so a wrong per-layer formula shows
    return write_tiny_llama(tmp_path_factory.mktemp("llama") / "ckpt", intermediate_size=48, num_hidden_layers=3)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_text(tmp_path_factory.mktemp("text") / "corpus.txt")


def _plan(llama_dir, budget=None, head_ratio=0.0):
    source = load_source(llama_dir, seq_len=16)
    hf = hf_prune_settings(source.model, head_ratio=head_ratio)
    attention = {k: v for k, v in hf.pruner_kwargs().items() if k != "ignored_layers"}
    memory, layers = plan_reconstruction_memory(source.model, source.example_inputs, hf.ignored_layers, budget,
                                                attention)
    return source, hf.ignored_layers, memory, layers, attention


def test_estimate_equals_the_gram_bytes_the_calibrated_criterion_holds(llama_dir, corpus) -> None:
    from depgraph.workflow.calibration_data import load_calibration

    source, keep, memory, layers, attention = _plan(llama_dir)
    batches = load_calibration(corpus, source.spec, num_samples=8, batch_size=4, seq_len=16)
    recipe = Recipe("reconstruction", "lstsq", False, "test")
    scoring = build_scoring(recipe, source.model, batches, source.example_inputs, keep, pruner_kwargs=attention)
    cov = scoring.importance.cov
    assert scoring.compensation.cov is cov  # one set of Gram matrices serves both
    held = sum(rec.gram.numel() * rec.gram.element_size() for rec in cov.values())
    # heads kept whole and none removed: only the MLP down projections (48 inputs) lose inputs
    assert memory.gram_bytes == held == 3 * 49 ** 2 * 8
    assert set(cov) == set(layers) == {layer.mlp.down_proj for layer in source.model.model.layers}
    assert memory.layers == 3 and memory.working_bytes == 10 * 49 ** 2 * 8  # copies of the largest
    assert gram_bytes([]) == 0


def test_attention_output_projections_are_measured_only_when_heads_go(llama_dir) -> None:
    source, _, memory, layers, _ = _plan(llama_dir, head_ratio=0.5)
    o_projs = {layer.self_attn.o_proj for layer in source.model.model.layers}
    assert o_projs <= set(layers) and memory.gram_bytes == (3 * 49 ** 2 + 3 * 33 ** 2) * 8


def test_leaving_unpruned_attention_unmeasured_changes_no_weight(llama_dir, corpus) -> None:
    """The pruned model is bit for bit the one the covariances of every Linear consumer gave."""
    from depgraph.pruner import BasePruner
    from depgraph.workflow.calibration_data import load_calibration

    source, keep, _, layers, attention = _plan(llama_dir)
    everything = layers + [layer.self_attn.o_proj for layer in source.model.model.layers]
    batches = load_calibration(corpus, source.spec, num_samples=8, batch_size=4, seq_len=16)
    recipe = Recipe("reconstruction", "lstsq", False, "test")
    pruned = []
    for consumers in (layers, everything):
        scoring = build_scoring(recipe, source.model, batches, source.example_inputs, keep, consumers)
        model, s, k = scoring.copy_with(source.model, keep)
        BasePruner(model, source.example_inputs, s.importance, pruning_ratio=0.3, ignored_layers=k,
                   compensation=s.compensation, **attention).step()
        pruned.append(model.state_dict())
    assert pruned[0].keys() == pruned[1].keys()
    assert pruned[0]["model.layers.0.mlp.down_proj.weight"].shape[1] < 48
    for name, tensor in pruned[0].items():
        assert torch.equal(tensor, pruned[1][name]), name


def test_trial_copies_share_the_gram_matrices(llama_dir, corpus) -> None:
    from depgraph.workflow.calibration_data import load_calibration

    source, keep, _, _, _ = _plan(llama_dir)
    batches = load_calibration(corpus, source.spec, num_samples=8, batch_size=4, seq_len=16)
    scoring = build_scoring(Recipe("reconstruction", "lstsq", False, "test"), source.model, batches,
                            source.example_inputs, keep)
    model2, scoring2, _ = scoring.copy_with(source.model, keep)
    down, down2 = source.model.model.layers[0].mlp.down_proj, model2.model.layers[0].mlp.down_proj
    assert down2 is not down and down2 in scoring2.importance.cov and down not in scoring2.importance.cov
    assert scoring2.importance.cov[down2].gram is scoring.importance.cov[down].gram  # shared, not copied
    assert scoring2.compensation.cov is scoring2.importance.cov
    assert model2.model.layers[0].mlp.down_proj.weight is not down.weight


def test_choice_flips_at_the_budget_boundary_and_the_report_says_why(llama_dir, corpus, tmp_path) -> None:
    _, _, memory, _, _ = _plan(llama_dir)
    need = memory.needed_bytes
    source = load_source(llama_dir, seq_len=16)
    fits = prune_model(source, ratio=0.25, calib=corpus, calib_memory=need, latency=False,
                       report=tmp_path / "fits.md").report
    assert fits.criterion == "reconstruction + lstsq compensation, per group"
    assert fits.why.startswith(FITS) and f"within the {format_bytes(need)} budget (set by calib_memory {need})" \
        in fits.why
    assert f"- criterion: reconstruction + lstsq compensation, per group ({fits.why})" in \
        (tmp_path / "fits.md").read_text()
    over = prune_model(source, ratio=0.25, calib=corpus, calib_memory=need - 1, latency=False,
                       report=tmp_path / "over.json").report
    assert over.criterion == "fluctuation + bias compensation, per group"
    assert over.why.startswith(OVER) and "pass --importance reconstruction to force it" in over.why
    assert json.loads((tmp_path / "over.json").read_text())["why"] == over.why
    assert over.verified and over.after.params < over.before.params


def test_block_by_block_when_one_pass_does_not_fit_but_one_block_does(tmp_path, corpus) -> None:
    from depgraph.workflow.calib_memory import hidden_state_bytes
    from depgraph.workflow.calibration_data import load_calibration

    # wide MLPs, many layers, few tokens: the Gram matrices of all layers dominate
    folder = write_tiny_llama(tmp_path / "wide", intermediate_size=256, num_hidden_layers=6)
    source = load_source(folder, seq_len=16)
    batches = load_calibration(corpus, source.spec, num_samples=4, batch_size=2, seq_len=16)
    stream = hidden_state_bytes(source.model, batches)
    assert stream == 2 * (4 * 16) * 32 * 4  # tokens x hidden x float32, twice
    hf = hf_prune_settings(source.model)
    attention = {k: v for k, v in hf.pruner_kwargs().items() if k != "ignored_layers"}
    memory, _ = plan_reconstruction_memory(source.model, source.example_inputs, hf.ignored_layers, None, attention,
                                           stream)
    one_block = 257 ** 2 * 8
    assert memory.gram_bytes == 6 * one_block and memory.blockwise_bytes == one_block + 10 * one_block + stream
    budget = memory.blockwise_bytes
    assert budget < memory.needed_bytes
    kwargs = dict(ratio=0.25, calib=corpus, num_samples=4, calib_batch_size=2, seq_len=16, latency=False)
    rep = prune_model(source, calib_memory=budget, **kwargs).report
    assert rep.criterion == "reconstruction + lstsq compensation, per group, block by block"
    assert rep.why.startswith("language-model default: reconstruction + lstsq block by block, as one pass would "
                              f"need {format_bytes(memory.needed_bytes)}")
    assert f"block by block {format_bytes(budget)} (largest block, working copies, hidden states)" in rep.why
    assert rep.verified and {r.in_after for r in rep.layers if r.name.endswith("down_proj")} == {192}
    over = prune_model(source, calib_memory=budget - 1, **kwargs).report
    assert over.criterion == "fluctuation + bias compensation, per group"
    assert over.why.startswith(OVER) and f", block by block {format_bytes(budget)}" in over.why
    # a global ranking cannot run block by block: not offered
    ranked = prune_model(source, calib_memory=budget, global_pruning=True, save_format="depgraph", **kwargs).report
    assert ranked.criterion == "fluctuation + bias compensation, global" and "block by block" not in ranked.why


def test_default_budget_is_a_share_of_the_free_memory(monkeypatch) -> None:
    import depgraph.streaming.memory as memory

    monkeypatch.setattr(memory, "available_memory", lambda: 12_000_000_000)
    assert calibration_budget("cpu") == (int(12e9 * DEFAULT_BUDGET_FRACTION), "50% of the 12.0 GB available")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (8_000_000_000, 80_000_000_000))
    assert calibration_budget("cuda:0", fraction=0.25) == (2_000_000_000, "25% of the 8.00 GB free on cuda:0")
    assert calibration_budget("cuda:0", "1.5GiB") == (int(1.5 * 2 ** 30), "set by calib_memory 1.5GiB")
    with pytest.raises(OptionError, match=r"'lots' is not a memory size"):
        calibration_budget("cpu", "lots")


def test_explicit_choices_are_never_replaced(llama_dir, corpus) -> None:
    _, _, fits, _, _ = _plan(llama_dir, budget="1TB")
    _, _, over, _, _ = _plan(llama_dir, budget="1KB")
    assert fits.fits and not over.fits
    for importance, compensation in (("fluctuation", None), ("reconstruction", None), (None, "bias"),
                                     (None, "none"), ("activation", "lstsq")):
        recipe = resolve_recipe(importance, compensation, False, language_model=True, has_data=True)
        assert not recipe.sized
        assert choose_by_memory(recipe, fits) is recipe and choose_by_memory(recipe, over) is recipe
    sized = resolve_recipe(None, None, False, language_model=True, has_data=True)
    assert sized.sized and (sized.importance, sized.compensation) == ("fluctuation", "bias")
    assert (choose_by_memory(sized, fits).importance, choose_by_memory(sized, over).importance) == \
        ("reconstruction", "fluctuation")
    assert not resolve_recipe(None, None, False, language_model=False, has_data=True).sized
    assert not resolve_recipe(None, None, False, language_model=True, has_data=False).sized
    # through prune_model: reconstruction named with a budget it does not fit still runs
    source = load_source(llama_dir, seq_len=16)
    rep = prune_model(source, ratio=0.25, calib=corpus, importance="reconstruction", calib_memory="1KB",
                      latency=False).report
    assert rep.criterion.startswith("reconstruction + lstsq") and rep.why == "chosen"


@pytest.mark.parametrize(("size", "message"), [
    ("8 parsecs", r"OptionError: '8 parsecs' is not a memory size; write e.g. 600MB"),
    ("0", r"OptionError: a memory size must be positive, got '0'"),
    ("-2GB", r"OptionError: '-2GB' is not a memory size"),
])
def test_cli_refuses_a_bad_calib_memory_before_any_model_loads(llama_dir, corpus, monkeypatch, capsys, size,
                                                               message) -> None:
    import re

    from depgraph.cli import main

    monkeypatch.setattr(workflow, "load_source", lambda *a, **k: pytest.fail("the model was loaded"))
    argv = ["prune", str(llama_dir), "--ratio", "0.25", "--calib", str(corpus), f"--calib-memory={size}",
            "--output", "-", "--plain", "--no-latency"]
    assert main(argv) == 2
    assert re.search(message, capsys.readouterr().err)


@pytest.mark.parametrize(("size", "criterion", "why"), [("1GB", "reconstruction + lstsq", FITS),
                                                        ("2KB", "fluctuation + bias", OVER)])
def test_cli_calib_memory_decides_and_the_table_says_why(llama_dir, corpus, tmp_path, capsys, size, criterion,
                                                         why) -> None:
    from depgraph.cli import main

    report = tmp_path / "r.json"
    argv = ["prune", str(llama_dir), "--ratio", "0.25", "--calib", str(corpus), "--calib-memory", size,
            "--seq-len", "16", "--output", "-", "--plain", "--no-latency", "--report", str(report)]
    assert main(argv) == 0
    data = json.loads(report.read_text())
    assert data["criterion"].startswith(criterion) and data["why"].startswith(why)
    assert f"(set by calib_memory {size})" in data["why"]
    out = capsys.readouterr().out
    assert f"criterion: {data['criterion']} ({data['why']})" in out
