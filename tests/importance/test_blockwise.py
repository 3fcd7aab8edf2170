"""Block-by-block calibration: the reference cross moment, the two streams through a real stack, refusals."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

import depgraph as tp
from depgraph.errors import DepgraphError
from depgraph.importance import BlockwiseCalibration, InputCovariance, collect_input_covariance, find_blocks
from depgraph.importance.reconstruction import Refit

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


@torch.no_grad()
def test_refit_with_reference_inputs_is_the_least_squares_fit_to_the_reference_outputs() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(6, 4)
    x_ref = torch.randn(500, 6)
    x = x_ref + 0.3 * torch.randn(500, 6)  # the inputs after earlier, pruned layers
    cov = InputCovariance()
    cov.add(layer, x[:300], reference=x_ref[:300])
    cov.add(layer, x[300:], reference=x_ref[300:])
    target = layer(x_ref)
    removed = torch.tensor([1, 4])
    keep = torch.tensor([0, 2, 3, 5])
    Refit(removed, cov[layer], cov.positions(layer), damping=0.0).apply(layer)
    design = torch.cat([x[:, keep], torch.ones(500, 1)], 1).double()
    best = torch.linalg.lstsq(design, target.double()).solution  # (5, 4)
    torch.testing.assert_close(layer.weight[:, keep].double(), best[:-1].T, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(layer.bias.double(), best[-1], rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_reference_equal_to_the_inputs_changes_nothing() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(5, 3)
    x = torch.randn(200, 5)
    plain, paired = InputCovariance(), InputCovariance()
    plain.add(layer, x)
    paired.add(layer, x, reference=x)
    torch.testing.assert_close(paired[layer].cross, plain[layer].gram)
    torch.testing.assert_close(paired.lookup_target(layer), plain.lookup(layer))
    imp_plain, imp_paired = tp.importance.ReconstructionImportance(plain), tp.importance.ReconstructionImportance(paired)
    torch.testing.assert_close(imp_paired.costs(layer), imp_plain.costs(layer), rtol=1e-3, atol=1e-6)


def test_reference_inputs_must_match_and_be_given_for_every_batch() -> None:
    layer = nn.Linear(4, 2)
    cov = InputCovariance()
    with pytest.raises(DepgraphError, match="must be the same samples"):
        cov.add(layer, torch.randn(3, 4), reference=torch.randn(2, 4))
    cov.add(layer, torch.randn(3, 4), reference=torch.randn(3, 4))
    with pytest.raises(DepgraphError, match="for some batches only"):
        cov.add(layer, torch.randn(3, 4))


def test_find_blocks_picks_the_decoder_stack() -> None:
    model = _llama()
    name, blocks = find_blocks(model)
    assert name == "model.layers" and blocks == list(model.model.layers)
    with pytest.raises(DepgraphError, match="no stack of repeated blocks"):
        find_blocks(nn.Sequential(nn.Linear(3, 3), nn.ReLU()))


@torch.no_grad()
def test_streams_through_an_unpruned_llama_equal_one_calibration_pass() -> None:
    """With nothing pruned, each block's covariance equals the whole-model pass's, and so does the cross moment
    (the reference and pruned streams are the same inputs): the streams, the recorded arguments (rotary
    embeddings, masks) and the cache switch-off are right, batch after batch."""
    ref = _llama()
    model = copy.deepcopy(ref)
    batches = _batches()
    downs = [layer.mlp.down_proj for layer in model.model.layers]
    whole = collect_input_covariance(model, batches, layers=downs + [model.model.layers[1].self_attn.o_proj])
    calib = BlockwiseCalibration(ref, model, batches)
    assert len(calib) == 3 and calib.name == "model.layers"
    assert ref.config.use_cache is True  # restored after recording
    for i in range(len(calib)):
        layers = [downs[i]] + ([model.model.layers[1].self_attn.o_proj] if i == 1 else [])
        cov = calib.covariance(layers)
        for m in layers:
            torch.testing.assert_close(cov[m].gram, whole[m].gram, rtol=1e-5, atol=1e-4)
            torch.testing.assert_close(cov[m].cross, whole[m].gram, rtol=1e-5, atol=1e-4)
            assert cov[m].count == whole[m].count == 3 * 2 * 12
        calib.advance()
    with pytest.raises(DepgraphError, match="already passed"):
        calib.advance()


@torch.no_grad()
def test_a_pruned_block_changes_the_later_blocks_stream_not_the_reference() -> None:
    ref = _llama()
    model = copy.deepcopy(ref)
    batches = _batches(2)
    calib = BlockwiseCalibration(ref, model, batches)
    model.model.layers[0].mlp.down_proj.weight.mul_(0.5)  # stands for block 0's prune
    calib.advance()
    cov = calib.covariance([model.model.layers[1].mlp.down_proj])[model.model.layers[1].mlp.down_proj]
    whole = collect_input_covariance(ref, batches, layers=[ref.model.layers[1].mlp.down_proj])
    n = cov.index.numel()
    assert not torch.allclose(cov.gram, whole[ref.model.layers[1].mlp.down_proj].gram, rtol=1e-3)
    # the reference side of the cross moment is the unpruned model's: its constant column sums its inputs
    torch.testing.assert_close(cov.cross[:n, n], whole[ref.model.layers[1].mlp.down_proj].gram[:n, n],
                               rtol=1e-5, atol=1e-4)


def test_layers_outside_the_current_block_are_refused() -> None:
    ref = _llama(2)
    model = copy.deepcopy(ref)
    calib = BlockwiseCalibration(ref, model, _batches(1))
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
    ref = _Scaled()
    calib = BlockwiseCalibration(ref, copy.deepcopy(ref), [torch.randn(4, 8)])
    with pytest.raises(DepgraphError, match="does not give what the model feeds block 1"):
        calib.advance()


def test_a_model_that_runs_a_block_twice_is_refused() -> None:
    class Twice(_Scaled):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for block in [*self.blocks, self.blocks[0]]:
                x = block(x)
            return x

    ref = Twice()
    with pytest.raises(DepgraphError, match="ran 4 of the 3 blocks"):
        BlockwiseCalibration(ref, copy.deepcopy(ref), [torch.randn(4, 8)])
