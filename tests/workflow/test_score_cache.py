"""A target search scores each group of the unpruned model once, and finds exactly what it found before.

The reconstruction criterion's greedy least-squares pass is counted (``count_calls``): without the
cache it runs once per consumer in every search trial, with it once per consumer in all. The
pruned models, ratios and trial histories are compared bit for bit with and without the cache.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch

import depgraph as tp
from depgraph.dependency import DependencyGraph
from depgraph.importance import GroupMagnitudeImportance, reconstruction
from depgraph.workflow import load_source, prune_model
from depgraph.workflow import prune as prune_module
from depgraph.workflow.score_cache import TrialScores, group_key

from .._checks import count_calls
from ._files import write_text, write_tiny_llama

torchvision = pytest.importorskip("torchvision")


_PRUNE_TO_TARGET = prune_module.prune_to_target


def _run(source, monkeypatch, reuse: bool, **kwargs):
    with monkeypatch.context() as m:
        m.setattr(prune_module, "prune_to_target", functools.partial(_PRUNE_TO_TARGET, reuse_scores=reuse))
        return prune_model(source, latency=False, **kwargs)


def _assert_same_result(a, b) -> None:
    assert a.report.ratio == b.report.ratio and a.report.result == b.report.result
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].shape == sb[k].shape and torch.equal(sa[k], sb[k]), k


def test_reconstruction_greedy_runs_once_per_consumer_for_the_whole_search(tmp_path, monkeypatch) -> None:
    pytest.importorskip("transformers")
    folder = write_tiny_llama(tmp_path / "llama")
    corpus = write_text(tmp_path / "corpus.txt")
    options = dict(target="params=0.8", importance="reconstruction", calib=corpus)

    calls = count_calls(monkeypatch, reconstruction, "greedy_removal_costs")
    cached = _run(load_source(folder, seq_len=16), monkeypatch, True, **options)
    with_cache = len(calls)

    calls = count_calls(monkeypatch, reconstruction, "greedy_removal_costs")
    plain = _run(load_source(folder, seq_len=16), monkeypatch, False, **options)
    without = len(calls)

    trials = int(cached.report.result.split("after ")[1].split(" trial")[0])
    consumers = 2  # the tiny Llama's two down_proj (heads are kept whole by default: no o_proj inputs go)
    assert trials > 2, cached.report.result
    assert with_cache == consumers  # once, on the first trial
    assert without == consumers * trials  # once per consumer per trial
    _assert_same_result(cached, plain)


def test_magnitude_search_scores_each_group_once_and_keeps_its_result(monkeypatch) -> None:
    source = load_source("resnet18", input_size=32)
    groups = len(list(DependencyGraph().build_dependency(source.model, source.example_inputs).get_all_groups(
        ignored_layers=list(source.keep))))
    options = dict(target="macs=0.5", global_pruning=True)

    calls = count_calls(monkeypatch, GroupMagnitudeImportance, "__call__")
    cached = _run(source, monkeypatch, True, **options)
    with_cache = len(calls)
    calls = count_calls(monkeypatch, GroupMagnitudeImportance, "__call__")
    plain = _run(source, monkeypatch, False, **options)
    without = len(calls)

    reach = 1  # prune_model's reachability check: one magnitude trial of its own
    trials = int(cached.report.result.split("after ")[1].split(" trial")[0])
    assert with_cache == reach * groups + groups  # the search scored every group once
    assert without == reach * groups + trials * groups
    _assert_same_result(cached, plain)


def test_group_key_follows_names_across_copies_and_only_unpruned_groups() -> None:
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(1, 3, 32, 32)
    twin = copy.deepcopy(model)
    g1 = DependencyGraph().build_dependency(model, x).get_pruning_group(model.conv1, tp.prune_conv_out_channels, [0, 1])
    dg2 = DependencyGraph().build_dependency(twin, x)
    g2 = dg2.get_pruning_group(twin.conv1, tp.prune_conv_out_channels, [0, 1])
    g3 = dg2.get_pruning_group(twin.conv1, tp.prune_conv_out_channels, [0, 2])
    assert group_key(g1) is not None and group_key(g1) == group_key(g2)  # same names and indices, other objects
    assert group_key(g3) != group_key(g2)
    g3.prune()
    after = dg2.get_pruning_group(twin.layer1[0].conv1, tp.prune_conv_out_channels, [0])
    assert after.version == 1 and group_key(after) is None  # planned after a commit: never cached


def test_the_store_hands_out_copies_and_forwards_attributes() -> None:
    model = torchvision.models.resnet18(weights=None).eval()
    dg = DependencyGraph().build_dependency(model, torch.randn(1, 3, 32, 32))
    group = dg.get_pruning_group(model.conv1, tp.prune_conv_out_channels, list(range(64)))
    magnitude = GroupMagnitudeImportance(p=2)
    magnitude.stats = "calibration stats"
    store = TrialScores()
    wrapped = store.wrap(magnitude)
    first = wrapped(group)
    first.zero_()  # a caller scribbling on its scores
    second = store.wrap(copy.deepcopy(magnitude))(group)
    assert (store.hits, store.misses, len(store)) == (1, 1, 1)
    torch.testing.assert_close(second, magnitude(group), rtol=0, atol=0)
    assert wrapped.stats == "calibration stats"  # bias compensation reads the criterion's stats
