"""Bias and least-squares compensation streamed equal the in-memory pruner's, bit for bit.

Markers: zoo (tiny random transformers checkpoints written by the test); slow (the
data-aware criteria with compensation, and the resume check, each a few whole prunes).

The reference is the whole model loaded and pruned by a ``BasePruner`` step with
``compensation=BiasMean(stats)`` / ``LeastSquares(cov)`` written out here, the
covariance measured on every layer whose inputs are pruned (down and output projections).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

import depgraph as tp
from depgraph.streaming import prune_checkpoint

from .test_prune_checkpoint import RATIO, _assert_same, _load, _save

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.zoo

CALIB = [torch.randint(0, 100, (2, 16), generator=torch.Generator().manual_seed(1)),
         {"input_ids": torch.randint(0, 100, (1, 24), generator=torch.Generator().manual_seed(2))}]


def _criterion(name: str) -> tp.importance.Importance:
    return tp.importance.GroupMagnitudeImportance(p=2) if name == "magnitude" else tp.importance.create_importance(name)


def _in_memory(src: Path, kind: str | None, criterion: str, calib=CALIB) -> torch.nn.Module:
    model = transformers.AutoModelForCausalLM.from_pretrained(src).eval()
    imp = _criterion(criterion)
    with torch.no_grad():
        if criterion != "magnitude":
            imp.calibrate(model, calib)
        if kind == "bias":  # a calibrated criterion's own statistics, else measured for the compensation
            mode = (tp.importance.BiasMean() if criterion != "magnitude"
                    else tp.importance.BiasMean(tp.importance.collect_activation_stats(model, calib)))
        elif kind == "lstsq":
            layers = [m for layer in model.model.layers for m in (layer.mlp.down_proj, layer.self_attn.o_proj)]
            mode = tp.importance.LeastSquares(tp.importance.collect_input_covariance(model, calib, layers=layers))
        else:
            mode = None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tp.pruner.BasePruner(
                model, {"input_ids": torch.zeros(1, 8, dtype=torch.long)}, imp, pruning_ratio=RATIO,
                ignored_layers=[model.get_input_embeddings(), model.get_output_embeddings()],
                prune_num_heads=True, head_pruning_ratio=RATIO, prune_head_dims=False, compensation=mode,
            ).step()
    return model


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    return _save(tmp_path_factory.mktemp("llama") / "src", "llama", tie_word_embeddings=False)


@pytest.mark.parametrize(
    ("kind", "criterion"),
    [("bias", "magnitude"), ("lstsq", "magnitude"),
     pytest.param("bias", "fluctuation", marks=pytest.mark.slow),
     pytest.param("lstsq", "activation_weight", marks=pytest.mark.slow)],
)
def test_compensated_stream_equals_in_memory(src, tmp_path, kind, criterion) -> None:
    report = prune_checkpoint(src, tmp_path / "out", ratio=RATIO, importance=criterion, calib=CALIB,
                              compensation=kind, max_memory="1MB", progress=False)
    got = _load(tmp_path / "out")  # from_pretrained: the config describes the new biases
    ref = _in_memory(src, kind, criterion)
    _assert_same(ref, got)  # every tensor bit for bit, config sizes, greedy tokens
    assert report.peak_materialized <= 1_000_000 and report.seconds["calibrate"] > 0
    # the compensation really ran: biases created (and declared), values unlike a plain prune
    assert got.config.mlp_bias is True and got.config.attention_bias is True
    down = got.model.layers[0].mlp.down_proj
    assert down.bias is not None and bool(down.bias.abs().sum() > 0)
    assert bool((got.model.layers[0].mlp.gate_proj.bias == 0).all())  # a family member: a zero bias
    plain = _in_memory(src, None, criterion)
    assert not torch.equal(plain.model.layers[0].mlp.down_proj.weight, down.weight) or kind == "bias"
    assert report.params_after == sum(p.numel() for p in got.parameters())


@pytest.mark.slow
def test_other_calibration_data_is_another_plan(src, tmp_path) -> None:
    """Compensated values depend on the data, not only on the pruned positions: nothing is reused."""
    out = tmp_path / "out"
    first = prune_checkpoint(src, out, ratio=RATIO, calib=CALIB, compensation="bias", max_memory="1MB",
                             progress=False)
    again = prune_checkpoint(src, out, ratio=RATIO, calib=CALIB, compensation="bias", max_memory="1MB",
                             progress=False)
    assert again.plan_hash == first.plan_hash and not again.shards_written
    other = prune_checkpoint(src, out, ratio=RATIO, calib=[CALIB[0] % 50], compensation="bias",
                             max_memory="1MB", progress=False)
    assert other.plan_hash != first.plan_hash and not other.shards_reused


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(compensation="bias"), r"compensation='bias' is calibrated on data: pass calib="),
        (dict(compensation="obs", calib=CALIB), r"compensation must be one of bias, lstsq or None, got 'obs'"),
        (dict(compensation="lstsq", calib=CALIB, damping=-1.0), "damping must be a non-negative number"),
    ],
)
def test_bad_compensation_is_refused_before_writing(src, tmp_path, kwargs, match) -> None:
    with pytest.raises(tp.errors.OptionError, match=match):
        prune_checkpoint(src, tmp_path / "out", mode="stream", **kwargs)
    assert not (tmp_path / "out").exists()


def test_memory_mode_compensates_the_same_way(src, tmp_path) -> None:
    prune_checkpoint(src, tmp_path / "mem", ratio=RATIO, calib=CALIB, compensation="lstsq", mode="memory",
                     progress=False)
    _assert_same(_in_memory(src, "lstsq", "magnitude"), _load(tmp_path / "mem"))
