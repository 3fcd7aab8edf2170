"""``MultiheadAttentionPruner.prune_heads``: whole heads out of ``nn.MultiheadAttention``, exactly.

The pruned module must compute what the original computes with the removed
heads' q/k/v rows and output columns zeroed, for every option of the layer
(packed or separate projections, biases, ``add_bias_kv``, ``add_zero_attn``,
batch-first or not, unbatched inputs, attention and key-padding masks).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from depgraph.errors import InvalidIndicesError, OverPruningError
from depgraph.functional import MultiheadAttentionPruner
from depgraph.functional.pruned_mha import PrunedMultiheadAttention

PRUNER = MultiheadAttentionPruner.INSTANCE
CONFIGS = {
    "plain": dict(),
    "seq_first": dict(batch_first=False),
    "no_bias": dict(bias=False),
    "bias_kv_zero_attn": dict(add_bias_kv=True, add_zero_attn=True),
    "kdim_vdim": dict(kdim=6, vdim=10),
}


def _zeroed(mha: nn.MultiheadAttention, heads: list[int]) -> nn.MultiheadAttention:
    ref = copy.deepcopy(mha)
    d = mha.head_dim
    kept = [i for i in range(mha.embed_dim) if i // d not in heads]
    PRUNER.zero_removed(ref, {"inner": torch.tensor(kept)})
    return ref


def _inputs(mha: nn.MultiheadAttention, batched: bool = True):
    g = torch.Generator().manual_seed(3)
    b, lq, s = 2, 5, 7
    shape = (lambda n, e: (b, n, e)) if mha.batch_first else (lambda n, e: (n, b, e))
    if not batched:
        shape = lambda n, e: (n, e)  # noqa: E731
    return (torch.randn(*shape(lq, mha.embed_dim), generator=g), torch.randn(*shape(s, mha.kdim), generator=g),
            torch.randn(*shape(s, mha.vdim), generator=g))


@pytest.mark.parametrize("name", CONFIGS)
def test_pruned_heads_equal_zeroed_heads(name):
    torch.manual_seed(0)
    cfg = {"batch_first": True, **CONFIGS[name]}
    mha = nn.MultiheadAttention(16, 4, **cfg).eval()
    ref = _zeroed(mha, [1, 2])
    PRUNER.prune_heads(mha, [1, 2])
    assert isinstance(mha, PrunedMultiheadAttention) and isinstance(mha, nn.MultiheadAttention)
    assert (mha.num_heads, mha.head_dim, mha.embed_dim, mha.out_proj.in_features) == (2, 4, 16, 8)
    q, k, v = _inputs(mha)
    b, s = 2, 7
    masks = [
        dict(),
        dict(attn_mask=torch.rand(5, s) > 0.7),
        dict(key_padding_mask=torch.tensor([[False] * (s - 2) + [True] * 2, [False] * s])),
        dict(attn_mask=torch.randn(b * 4, 5, s)),  # per original head
    ]
    with torch.no_grad():
        for kw in masks:
            out, w = mha(q, k, v, average_attn_weights=False, **kw)
            ref_out, ref_w = ref(q, k, v, average_attn_weights=False, **kw)
            torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(w, ref_w[:, [0, 3]], rtol=1e-5, atol=1e-6)


def test_unbatched_input_and_second_prune():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(12, 4).eval()
    ref = _zeroed(mha, [0, 3])
    PRUNER.prune_heads(mha, [0])
    PRUNER.prune_heads(mha, [2])  # original head 3
    assert mha._heads_kept.tolist() == [1, 2]
    q, k, v = _inputs(mha, batched=False)
    with torch.no_grad():
        torch.testing.assert_close(mha(q, k, v)[0], ref(q, k, v)[0], rtol=1e-5, atol=1e-6)


def test_transformer_layer_skips_the_fused_fast_path():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 4, 32, batch_first=True, dropout=0.0).eval()
    ref = copy.deepcopy(layer)
    ref.self_attn = _zeroed(layer.self_attn, [2])
    PRUNER.prune_heads(layer.self_attn, [2])
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), ref(x), rtol=1e-5, atol=1e-6)


def test_refusals_change_nothing():
    mha = nn.MultiheadAttention(8, 2)
    before = copy.deepcopy(mha.state_dict())
    with pytest.raises(OverPruningError, match="keep at least one"):
        PRUNER.prune_heads(mha, [0, 1])
    with pytest.raises(InvalidIndicesError, match="out of range"):
        PRUNER.prune_heads(mha, [2])
    assert type(mha) is nn.MultiheadAttention
    assert all(torch.equal(before[k], v) for k, v in mha.state_dict().items())


def test_macs_follow_the_inner_width():
    from depgraph.utils import count_ops_and_params

    mha = nn.MultiheadAttention(16, 4, batch_first=True).eval()
    x = torch.randn(2, 5, 16)
    full, _ = count_ops_and_params(mha, (x, x, x))
    PRUNER.prune_heads(mha, [0, 3])
    half, params = count_ops_and_params(mha, (x, x, x))
    # per example: q/k/v and output projections 4 * 5*16*8, biases 15*8 + 5*16, scale 5*8,
    # scores and weighted sum 2 * 5*5*8, softmax 2*5*5 (2 heads left, 8 inner dims)
    assert half == 4 * 5 * 16 * 8 + 15 * 8 + 5 * 16 + 5 * 8 + 2 * 5 * 5 * 8 + 2 * 5 * 5
    assert half < full and params == 3 * 8 * 16 + 3 * 8 + 16 * 8 + 16
