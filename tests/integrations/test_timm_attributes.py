"""depgraph.integrations.timm: timm attention attributes stay consistent with the pruned weights.

Markers:
    zoo   timm architectures (two blocks, random weights, offline).

After a head-dim prune, timm's ``Attention`` computes with ``F.scaled_dot_product_attention``
(default scale ``1/sqrt(head_dim)``) or, with fused attention off, ``q * self.scale``. A
stale ``scale`` made the two paths disagree; the sync folds the scale change into the query
rows, so both compute the unpruned network with those dims zeroed.
"""

from __future__ import annotations

import copy

import pytest
import torch

import depgraph as tp

timm = pytest.importorskip("timm")

pytestmark = pytest.mark.zoo


def _vit():
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=2).eval()
    return model, torch.randn(2, 3, 32, 32)


def _attentions(model):
    return [m for m in model.modules() if type(m).__name__ == "Attention"]


def _assert_consistent(attn) -> None:
    assert attn.num_heads * attn.head_dim == attn.attn_dim == attn.proj.in_features == attn.qkv.out_features // 3
    assert attn.scale == pytest.approx(attn.head_dim ** -0.5, rel=1e-12)


def _run(model, x, fused: bool) -> torch.Tensor:
    for a in _attentions(model):
        a.fused_attn = fused
    with torch.no_grad():
        return model(x)


def test_head_dim_prune_keeps_scale_and_sizes_consistent() -> None:
    model, x = _vit()
    reference = copy.deepcopy(model)
    DG = tp.DependencyGraph().build_dependency(model, x)
    for attn in _attentions(model):  # dim 3 of every head
        DG.get_pruning_group(attn.proj, tp.prune_linear_in_channels, [3]).prune()

    for attn in _attentions(model):
        assert (attn.num_heads, attn.head_dim) == (3, 63)
        _assert_consistent(attn)
    # The unpruned network with dim 3 of every head zeroed in q, k, v and the output projection.
    with torch.no_grad():
        for attn in _attentions(reference):
            rows = torch.arange(3, 192, 64)
            for part in range(3):
                attn.qkv.weight[part * 192 + rows] = 0
                attn.qkv.bias[part * 192 + rows] = 0
            attn.proj.weight[:, rows] = 0
    for fused in (True, False):
        torch.testing.assert_close(_run(model, x, fused), _run(reference, x, fused), rtol=1e-5, atol=1e-5)


def test_head_prune_and_rollback_keep_sizes_consistent() -> None:
    model, x = _vit()
    DG = tp.DependencyGraph().build_dependency(model, x)
    attn = _attentions(model)[0]
    DG.get_pruning_group(attn.proj, tp.prune_linear_in_channels, list(range(64))).prune()  # head 0
    assert (attn.num_heads, attn.head_dim, attn.scale) == (2, 64, 0.125)
    _assert_consistent(attn)
    torch.testing.assert_close(_run(model, x, True), _run(model, x, False), rtol=1e-5, atol=1e-5)

    # A prune that fails rolls the sync back with the weights.
    other = _attentions(model)[1]
    scale, weight = other.scale, other.qkv.weight.clone()
    DG.register_prune_hook(lambda graph, plan: (_ for _ in ()).throw(RuntimeError("boom")) if plan else None,
                          when="after")
    with pytest.raises(tp.DepgraphError, match="boom"):
        DG.get_pruning_group(other.proj, tp.prune_linear_in_channels, [5]).prune()
    assert (other.scale, other.head_dim) == (scale, 64) and torch.equal(other.qkv.weight, weight)


def test_scale_fold_scales_a_separate_query_bias() -> None:
    """BEiT/EVA keep the query bias beside a bias-free qkv (``q_bias``): the fold must scale it too."""
    from depgraph.integrations._hf_layers import find_attention
    from depgraph.integrations._hf_numerics import ScaleFolder
    from depgraph.integrations._undo import UndoLog

    class BeitLike(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv, self.proj = torch.nn.Linear(8, 24, bias=False), torch.nn.Linear(8, 8)
            self.q_bias, self.v_bias = torch.nn.Parameter(torch.randn(8)), torch.nn.Parameter(torch.randn(8))
            self.num_heads, self.head_dim, self.scale = 2, 4, 4 ** -0.5

        def scores(self, x):  # (B, N, C) -> (B, H, N, N)
            bias = torch.cat([self.q_bias, torch.zeros_like(self.v_bias), self.v_bias])
            q, k, _ = torch.nn.functional.linear(x, self.qkv.weight, bias).unflatten(-1, (3, 2, -1)).unbind(2)
            return torch.einsum("bnhd,bmhd->bhnm", q * self.scale, k)

    torch.manual_seed(0)
    m, x = BeitLike(), torch.randn(1, 5, 8)
    [a] = find_attention(torch.nn.Sequential(m))
    folder = ScaleFolder()
    folder.prime(a)
    with torch.no_grad():
        expected = m.scores(x)
        m.head_dim = 3  # as after a head-dim prune that zeroed nothing: only the scale bookkeeping changes
        folder.fold(find_attention(torch.nn.Sequential(m))[0], UndoLog())
        assert m.scale == pytest.approx(3 ** -0.5)
        torch.testing.assert_close(m.scores(x), expected)


class _StoredHeadDim(torch.nn.Module):
    """Attention in timm's style whose forward reads ``num_heads`` but only stores ``head_dim`` (EVA-like)."""

    __module__ = "timm.layers.stored_head_dim"  # what the sync looks for: a timm class

    def __init__(self, dim: int = 32, heads: int = 4):
        super().__init__()
        self.qkv, self.proj = torch.nn.Linear(dim, 3 * dim), torch.nn.Linear(dim, dim)
        self.num_heads, self.head_dim = heads, dim // heads
        self.scale = self.head_dim ** -0.5

    def forward(self, x):
        b, n, _ = x.shape
        # (B, N, 3*H*D) -> (3, B, H, N, D); the head dim is left to -1
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(b, n, -1))


def test_unread_head_dim_follows_the_read_head_count() -> None:
    torch.manual_seed(0)
    model, x = torch.nn.Sequential(_StoredHeadDim()).eval(), torch.randn(2, 5, 32)
    reference = copy.deepcopy(model)
    DG = tp.DependencyGraph().build_dependency(model, x)
    attn = model[0]
    DG.get_pruning_group(attn.proj, tp.prune_linear_in_channels, [3, 11, 19, 27]).prune()  # dim 3 of each head
    assert (attn.num_heads, attn.head_dim) == (4, 7)  # head_dim was stale at 8 before the sync
    assert attn.scale == pytest.approx(7 ** -0.5)
    with torch.no_grad():
        rows = torch.tensor([3, 11, 19, 27])
        for part in range(3):
            reference[0].qkv.weight[part * 32 + rows] = 0
            reference[0].qkv.bias[part * 32 + rows] = 0
        reference[0].proj.weight[:, rows] = 0
        torch.testing.assert_close(model(x), reference(x), rtol=1e-5, atol=1e-5)  # the scale was folded
    DG.get_pruning_group(attn.proj, tp.prune_linear_in_channels, list(range(7))).prune()  # head 0
    assert (attn.num_heads, attn.head_dim) == (3, 7)
