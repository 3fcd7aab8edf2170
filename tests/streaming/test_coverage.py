"""Mixture of Experts: what cannot be streamed or pruned is refused by name; the rest prunes as by hand.

Markers: zoo (tiny random Mixtral checkpoints written by the test).

transformers 5 stores Mixtral's experts as fused 3-D parameters run by ``torch._grouped_mm``
after a ``topk``/``sort`` routing; the graph has no dimension rule for those ops, so in memory
too neither whole experts nor expert channels form a group (only attention heads do). And
``save_pretrained`` writes them back per expert (``block_sparse_moe.experts.N.w1``), fused again
by ``from_pretrained``: a conversion the streamed path does not replay, so it refuses such a
checkpoint; ``mode="memory"`` prunes its attention heads.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

import depgraph as tp
from depgraph.streaming import CheckpointError, prune_checkpoint

from .test_prune_checkpoint import _SIZES, _assert_same, _load

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.zoo


@pytest.fixture(scope="module")
def mixtral_src(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("mixtral") / "src"
    torch.manual_seed(0)
    config = transformers.MixtralConfig(**_SIZES, num_local_experts=4, num_experts_per_tok=2,
                                        tie_word_embeddings=False)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(folder, max_shard_size="60KB")
    return folder


def test_a_checkpoint_transformers_converts_on_load_is_refused_before_reading(mixtral_src, tmp_path) -> None:
    with pytest.raises(CheckpointError, match=r"stores 39 tensor\(s\) the model built from its config lacks .*"
                                              r"block_sparse_moe\.experts\.0\.w1\.weight.* and lacks 9 it has .*"
                                              r"mlp\.experts\.down_proj.*renames or fuses .*mode='memory'"):
        prune_checkpoint(mixtral_src, tmp_path / "out", ratio=0.0, head_ratio=0.25, max_memory="1MB",
                         progress=False)
    assert not (tmp_path / "out").exists()


def test_unreachable_experts_are_refused_by_name(mixtral_src, tmp_path) -> None:
    with pytest.raises(tp.errors.UnsupportedOpError,
                       match=r"ratio=0.25 asks for MLP channels of every layer, but no prunable group reaches 6 "
                             r"layer\(s\) of MixtralForCausalLM: model\.layers\.0\.mlp\.gate, "
                             r"model\.layers\.0\.mlp\.experts, .*Pass ratio=0"):
        prune_checkpoint(mixtral_src, tmp_path / "out", ratio=0.25, mode="memory", progress=False)
    assert not (tmp_path / "out").exists()


def test_mixtral_attention_heads_prune_in_memory_mode(mixtral_src, tmp_path) -> None:
    report = prune_checkpoint(mixtral_src, tmp_path / "out", ratio=0.0, head_ratio=0.25, mode="memory",
                              progress=False)
    model = transformers.AutoModelForCausalLM.from_pretrained(mixtral_src).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tp.pruner.BasePruner(
            model, {"input_ids": torch.zeros(1, 8, dtype=torch.long)}, tp.importance.GroupMagnitudeImportance(p=2),
            pruning_ratio=0.0, ignored_layers=[model.get_input_embeddings(), model.get_output_embeddings()],
            prune_num_heads=True, head_pruning_ratio=0.25, prune_head_dims=False,
        ).step()
    got = _load(tmp_path / "out")
    _assert_same(model, got)
    assert (got.config.num_key_value_heads, got.config.num_local_experts, got.config.intermediate_size) == (3, 4, 128)
    assert report.mode == "memory"
