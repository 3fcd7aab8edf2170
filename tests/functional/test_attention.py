"""Tests for depgraph/functional/attention.py (nn.MultiheadAttention)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from depgraph.errors import HandlerMismatchError, InvalidIndicesError, OverPruningError
from depgraph.functional import (
    MultiheadAttentionPruner,
    prune_multihead_attention_in_channels,
    prune_multihead_attention_out_channels,
)

from ._checks import assert_identity_and_grads, assert_refused, keep_of, mark_grads

E, HEADS = 8, 2  # head_dim 4


def _mha(**kwargs) -> nn.MultiheadAttention:
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(E, HEADS, batch_first=True, **kwargs).double()
    with torch.no_grad():
        for p in mha.parameters():
            p.normal_()  # non-zero biases too
    return mha


def _reference(original: nn.MultiheadAttention, idxs: list[int], **kwargs) -> nn.MultiheadAttention:
    """An MHA built at the pruned size, its weights sliced here, independently of depgraph."""
    keep = keep_of(E, idxs)
    inner = torch.cat([keep, keep + E, keep + 2 * E])
    kdim, vdim = original.kdim, original.vdim
    ref = nn.MultiheadAttention(
        len(keep), HEADS, batch_first=True,
        kdim=len(keep) if kdim == E else kdim, vdim=len(keep) if vdim == E else vdim, **kwargs,
    ).double()
    src = dict(original.named_parameters())
    with torch.no_grad():
        for name, p in ref.named_parameters():
            w = src[name]
            if name == "in_proj_weight":
                w = w[inner][:, keep]
            elif name == "in_proj_bias":
                w = w[inner]
            elif name in ("q_proj_weight", "k_proj_weight", "v_proj_weight"):
                w = w[keep]
                w = w[:, keep] if w.shape[1] == E else w
            elif name == "out_proj.weight":
                w = w[keep][:, keep]
            elif name == "out_proj.bias":
                w = w[keep]
            else:  # bias_k, bias_v
                w = w[..., keep]
            p.copy_(w)
    return ref


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"bias": False}, {"add_bias_kv": True}, {"add_zero_attn": True}, {"kdim": 5}, {"vdim": 3}],
)
@pytest.mark.parametrize("fn", [prune_multihead_attention_out_channels, prune_multihead_attention_in_channels])
def test_pruned_mha_matches_a_smaller_mha(kwargs, fn):
    mha = _mha(**kwargs)
    original, params = copy.deepcopy(mha), mark_grads(mha)
    idxs = [0, 6]  # one dim from each head
    assert fn(mha, idxs) is mha
    assert (mha.embed_dim, mha.head_dim, mha.num_heads) == (6, 3, 2)
    assert mha.out_proj.in_features == mha.out_proj.out_features == 6
    assert mha.kdim == kwargs.get("kdim", 6) and mha.vdim == kwargs.get("vdim", 6)
    assert_identity_and_grads(mha, params)
    ref = _reference(original, idxs, **{k: v for k, v in kwargs.items() if k not in ("kdim", "vdim")})
    assert dict(ref.named_parameters()).keys() == dict(mha.named_parameters()).keys()
    keep = keep_of(E, idxs)
    q = torch.randn(2, 5, E, dtype=torch.float64)[..., keep]
    k = torch.randn(2, 4, mha.kdim, dtype=torch.float64)
    v = torch.randn(2, 4, mha.vdim, dtype=torch.float64)
    out, attn = mha(q, k, v)
    ref_out, ref_attn = ref(q, k, v)
    assert out.shape == (2, 5, 6)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(attn, ref_attn)


def test_self_attention_in_eval_no_grad():
    mha = _mha().eval()
    prune_multihead_attention_out_channels(mha, [1, 2, 5, 7])
    x = torch.randn(2, 3, 4, dtype=torch.float64)
    with torch.no_grad():
        out, _ = mha(x, x, x, need_weights=False)
    assert out.shape == (2, 3, 4)


def test_handler_facts():
    h, mha = MultiheadAttentionPruner.INSTANCE, _mha()
    assert h.get_out_channels(mha) == h.get_in_channels(mha) == E
    assert h.out_channel_dim(mha, 3) == 2 and h.in_channel_dim(mha, 2) == 1


@pytest.mark.parametrize(
    ("idxs", "exc", "match"),
    [
        ([0], InvalidIndicesError, "leaves 7, which num_heads=2 does not divide"),
        ([0, 1], InvalidIndicesError, "same number.*head 0: 2, head 1: 0"),
        ([8], InvalidIndicesError, "out of range for the 8 out channels"),
        ([-1], InvalidIndicesError, "negative"),
        (range(8), OverPruningError, "all 8"),
    ],
)
def test_refused_calls_change_nothing(idxs, exc, match):
    assert_refused(prune_multihead_attention_out_channels, _mha(), idxs, exc, match)


def test_wrong_module_type_is_refused():
    assert_refused(prune_multihead_attention_out_channels, nn.Linear(8, 8), [0, 4], HandlerMismatchError, "not Linear")
