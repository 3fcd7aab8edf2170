"""Hugging Face architectures, one per pruning mechanism that used to refuse or break.

Markers:
    zoo   every test here (random weights, tiny configs, offline).

Mechanisms:
    weight norm   wav2vec2's positional convolution is a grouped ``Conv1d`` under
                  ``parametrizations.weight_norm(dim=2)``: its weight is computed from g and v,
                  so the hidden size (the feature projection's output) was refused. g and v now
                  follow the pruned weight; the hand-built reproduction is in
                  ``tests/functional/test_parametrized.py``.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

import depgraph as tp
from tests._checks import check_result, output_shapes

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.zoo


def _wav2vec2() -> torch.nn.Module:
    cfg = transformers.Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, conv_dim=(16, 16),
        conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
        classifier_proj_size=8, num_labels=3)
    torch.manual_seed(0)
    return transformers.Wav2Vec2ForSequenceClassification(cfg).eval()


def test_wav2vec2_hidden_size_prunes_through_the_weight_normed_positional_conv() -> None:
    model, x = _wav2vec2(), torch.randn(1, 400)
    original, shapes = copy.deepcopy(model), output_shapes(model, x)
    before = sum(p.numel() for p in model.parameters())
    pruner = tp.pruner.BasePruner(model, x, tp.importance.GroupMagnitudeImportance(), pruning_ratio=0.5,
                                  ignored_layers=[model.classifier], prune_num_heads=True, head_pruning_ratio=0.5)
    with warnings.catch_warnings():
        # nothing left unpruned: the step used to keep the hidden-size group, whose conv broke the forward
        warnings.filterwarnings("error", message=r"(?s).*(left the group|cannot be removed)")
        pruner.step()
    conv = model.wav2vec2.encoder.pos_conv_embed.conv
    assert model.config.hidden_size == 16 == conv.out_channels == conv.in_channels
    assert tuple(conv.parametrizations.weight.original1.shape) == (16, 4, 16)
    assert sum(p.numel() for p in model.parameters()) < 0.5 * before
    result = check_result(original, model, x, shapes, exact=False)
    assert any("LayerNorm" in r for r in result.reasons), result.reasons
