"""Block-by-block calibration: the hidden states walked through a real stack, on pruned blocks, and refusals."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

import depgraph as tp
from depgraph.errors import DepgraphError
from depgraph.importance import BlockwiseCalibration, collect_input_covariance, find_blocks

transformers = pytest.importorskip("transformers")


def _llama(layers: int = 3) -> nn.Module:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=layers,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   use_cache=True)
    return transformers.LlamaForCausalLM(cfg).eval()


def _batches(n: int = 3) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [{"input_ids": torch.randint(0, 64, (2, 12), generator=g)} for _ in range(n)]


def test_find_blocks_picks_the_decoder_stack() -> None:
    model = _llama()
    name, blocks = find_blocks(model)
    assert name == "model.layers" and blocks == list(model.model.layers)
    with pytest.raises(DepgraphError, match="no stack of repeated blocks"):
        find_blocks(nn.Sequential(nn.Linear(3, 3), nn.ReLU()))


@torch.no_grad()
def test_the_stream_through_an_unpruned_llama_equals_one_calibration_pass() -> None:
    """With nothing pruned, each block's covariance equals the whole-model pass's: the stream, the recorded
    arguments (rotary embeddings, masks) and the cache switch-off are right, batch after batch."""
    model = _llama()
    batches = _batches()
    downs = [layer.mlp.down_proj for layer in model.model.layers]
    o_proj = model.model.layers[1].self_attn.o_proj
    whole = collect_input_covariance(model, batches, layers=[*downs, o_proj])
    calib = BlockwiseCalibration(model, batches)
    assert len(calib) == 3 and calib.name == "model.layers"
    assert model.config.use_cache is True  # restored after recording
    for i in range(len(calib)):
        layers = [downs[i]] + ([o_proj] if i == 1 else [])
        cov = calib.covariance(layers)
        for m in layers:
            torch.testing.assert_close(cov[m].gram, whole[m].gram, rtol=1e-5, atol=1e-4)
            assert cov[m].count == whole[m].count == 3 * 2 * 12
        calib.advance()
    with pytest.raises(DepgraphError, match="already passed"):
        calib.advance()


@torch.no_grad()
def test_later_blocks_are_measured_on_the_pruned_blocks_outputs() -> None:
    model = _llama()
    reference = copy.deepcopy(model)
    batches = _batches(2)
    calib = BlockwiseCalibration(model, batches)
    tp.pruner.BasePruner(model, batches[0], tp.importance.GroupMagnitudeImportance(), pruning_ratio=0.5,
                         ignored_layers=[model.lm_head, model.model.embed_tokens, *model.model.layers[1:],
                                         model.model.layers[0].self_attn]).step()
    assert model.model.layers[0].mlp.down_proj.in_features == 24
    calib.advance()
    down = model.model.layers[1].mlp.down_proj
    measured = calib.covariance([down])[down]
    on_pruned = collect_input_covariance(model, batches, layers=[down])[down]
    on_reference = collect_input_covariance(reference, batches, layers=[reference.model.layers[1].mlp.down_proj])
    torch.testing.assert_close(measured.gram, on_pruned.gram, rtol=1e-5, atol=1e-4)
    assert not torch.allclose(measured.gram, next(iter(on_reference.values())).gram, rtol=1e-3)


def test_layers_outside_the_current_block_are_refused() -> None:
    model = _llama(2)
    calib = BlockwiseCalibration(model, _batches(1))
    with pytest.raises(DepgraphError, match="is not an nn.Linear of block 0"):
        calib.covariance([model.model.layers[1].mlp.down_proj])
    with pytest.raises(DepgraphError, match="is not an nn.Linear of block 0"):
        calib.covariance([model.lm_head])


class _Scaled(nn.Module):
    """Blocks in a ModuleList, but the model scales the hidden states between them: not a chain."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8)) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = 2 * block(x)
        return x


def test_blocks_that_are_not_a_chain_are_refused() -> None:
    torch.manual_seed(0)
    with pytest.raises(DepgraphError, match="does not give what the model feeds block 1"):
        BlockwiseCalibration(_Scaled(), [torch.randn(4, 8)])


def test_a_model_that_runs_a_block_twice_is_refused() -> None:
    class Twice(_Scaled):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for block in [*self.blocks, self.blocks[0]]:
                x = block(x)
            return x

    with pytest.raises(DepgraphError, match="block 0 of 'blocks' ran twice in one forward pass"):
        BlockwiseCalibration(Twice(), [torch.randn(4, 8)])
