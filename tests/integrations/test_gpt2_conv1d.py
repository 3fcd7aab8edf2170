"""GPT-2 through the pruner: its ``Conv1D`` layers are graph nodes that groups are rooted at.

Markers:
    zoo   every test here (a tiny random GPT2LMHeadModel from transformers, offline).

Before ``Conv1D`` had a handler, the pruner found no root layer in GPT-2 and
pruned nothing. Here ``BasePruner`` with its default root types must prune the
MLP and attention (head dims, or whole heads with ``prune_num_heads``) exactly,
and the pruned model must still generate.
"""

from __future__ import annotations

import copy

import pytest
import torch

import depgraph as tp
from tests.integrations._hf import FAMILIES, output_of

pytest.importorskip("transformers")
pytestmark = [pytest.mark.zoo, pytest.mark.filterwarnings("ignore:depgraph. after this prune")]

HEADS, HEAD_DIM, HIDDEN = 4, 8, 32  # the tiny gpt2 family: n_head=4, n_embd=32, MLP 4 * 32


def _prune(**kwargs) -> tuple[torch.nn.Module, torch.nn.Module, dict]:
    """Prune a tiny GPT-2 at ratio 0.5, keeping the residual stream (the outputs of every c_proj)."""
    fam = FAMILIES["gpt2"]
    model, inputs = fam.build(), fam.example_inputs()
    original = copy.deepcopy(model)
    keep_hidden = [m for block in model.transformer.h for m in (block.attn.c_proj, block.mlp.c_proj)]
    with torch.no_grad():
        pruner = tp.pruner.BasePruner(model, inputs, tp.importance.GroupMagnitudeImportance(), pruning_ratio=0.5,
                                      ignored_layers=keep_hidden, output_transform=output_of, **kwargs)
        pruner.step()
    return original, model, inputs


def _check(original, model, inputs) -> None:
    """Exact (no norm mixes the pruned dims), smaller, fewer MACs, and still generates."""
    result = tp.verify(original, model, inputs, output_transform=output_of)
    assert result.applies and result.exact, str(result)
    macs = [tp.utils.count_ops_and_params(m, inputs)[0] for m in (original, model)]
    assert macs[1] < macs[0]
    out = model.generate(inputs["input_ids"], max_new_tokens=4, do_sample=False)
    assert out.shape == (inputs["input_ids"].shape[0], inputs["input_ids"].shape[1] + 4)


def test_default_root_types_include_conv1d():
    fam = FAMILIES["gpt2"]
    model, inputs = fam.build(), fam.example_inputs()
    with torch.no_grad():
        DG = tp.DependencyGraph().build_dependency(model, inputs, output_transform=output_of)
    roots = {g[0].dep.target.name for g in DG.get_all_groups(root_module_types=tp.pruner.options.DEFAULT_ROOT_TYPES)}
    assert {"transformer.h.0.attn.c_attn", "transformer.h.0.mlp.c_fc", "transformer.h.1.mlp.c_fc"} <= roots


def test_pruner_halves_mlp_and_head_dims_exactly():
    original, model, inputs = _prune()
    for block in model.transformer.h:
        assert block.mlp.c_fc.nf == block.mlp.c_proj.nx == 4 * HIDDEN // 2
        assert block.attn.c_attn.nf == 3 * HEADS * HEAD_DIM // 2 and block.attn.c_proj.nx == HEADS * HEAD_DIM // 2
        assert block.attn.head_dim == HEAD_DIM // 2 and block.attn.c_proj.nf == HIDDEN
    _check(original, model, inputs)


def test_prune_num_heads_removes_whole_heads():
    original, model, inputs = _prune(prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=0.5)
    for block in model.transformer.h:
        assert block.attn.num_heads == HEADS // 2 and block.attn.head_dim == HEAD_DIM
        assert block.attn.c_attn.nf == 3 * (HEADS // 2) * HEAD_DIM and block.attn.c_proj.nx == HEADS // 2 * HEAD_DIM
        assert block.mlp.c_fc.nf == 4 * HIDDEN // 2
    _check(original, model, inputs)


def test_depgraph_save_and_load_rebuild_the_pruned_gpt2(tmp_path):
    """Head dims of 4 in a 32-wide GPT-2: its config cannot say so, depgraph's own format can."""
    _, model, inputs = _prune()
    tp.save(model, tmp_path / "gpt2.pt")
    fresh = tp.load(FAMILIES["gpt2"].build(), tmp_path / "gpt2.pt")
    assert fresh.transformer.h[0].attn.c_attn.nf == model.transformer.h[0].attn.c_attn.nf
    with torch.no_grad():
        torch.testing.assert_close(output_of(fresh(**inputs)), output_of(model(**inputs)))
