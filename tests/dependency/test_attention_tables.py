"""Attention whose head axis meets tables sized by the head count or by a stored width.

Hand-built reproductions of timm SAM-ViT (heads merged into the batch as
``B * self.num_heads``, relative-position tables of ``head_dim`` columns), TNT's
inner attention (heads of an attention run on ``B * patches`` sequences) and
SHViT's single-head mixer (``self.pdim`` sizes a piece of ``qkv`` *and* a split of
the input), plus the rule that keeps them sound: an attribute read where it
cannot follow a prune pins every dim bound to it. The real models are in
``tests/zoo/test_timm_mechanisms.py``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import depgraph as tp
from depgraph.dependency.heads import find_attention_heads
from depgraph.errors import UnsupportedOpError

from .._checks import (
    assert_refused_unchanged,
    build,
    check_result,
    member,
    output_shapes,
    prune_all_groups,
    prune_and_verify,
)

LIN_OUT = tp.prune_linear_out_channels


class RelPosAttention(nn.Module):
    """SAM-ViT's attention on a (B, H, W, C) map: q, k, v of shape (B * heads, N, head_dim), and a
    decomposed relative-position bias ``q . rel_pos_h[i - j]`` + ``q . rel_pos_w[i - j]``."""

    def __init__(self, dim: int = 16, heads: int = 4, size: int = 4):
        super().__init__()
        self.num_heads, self.head_dim = heads, dim // heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_h = nn.Parameter(torch.randn(2 * size - 1, self.head_dim))
        self.rel_pos_w = nn.Parameter(torch.randn(2 * size - 1, self.head_dim))

    def forward(self, x):
        B, H, W, _ = x.shape
        N = H * W
        qkv = self.qkv(x.reshape(B, N, -1)).view(B, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, B * self.num_heads, N, -1).unbind(0)  # (B * heads, N, head_dim)
        rh = self.rel_pos_h[torch.arange(H)[:, None] - torch.arange(H)[None, :] + H - 1]  # (H, H, head_dim)
        rw = self.rel_pos_w[torch.arange(W)[:, None] - torch.arange(W)[None, :] + W - 1]
        r_q = q.reshape(-1, H, W, q.shape[-1])
        bias = torch.einsum("bhwc,hkc->bhwk", r_q, rh)[:, :, :, :, None] + \
            torch.einsum("bhwc,wkc->bhwk", r_q, rw)[:, :, :, None, :]
        attn = (q * self.scale) @ k.transpose(-2, -1) + bias.reshape(-1, N, N)
        x = attn.softmax(dim=-1) @ v
        x = x.view(B, self.num_heads, N, -1).transpose(1, 2).reshape(B, N, -1)
        return self.proj(x).view(B, H, W, -1)


class RelPosNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(3, 16)
        self.attn = RelPosAttention()
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        x = self.embed(x)
        x = x + self.attn(x)
        return self.head(x.mean((1, 2)))


@pytest.mark.parametrize("batch", [1, 2])
def test_relative_position_heads_are_removed_exactly(batch):
    """``B * self.num_heads`` is read as the attribute times the batch: a head goes with its q, k, v
    rows and proj columns (the tables are shared by every head), and ``num_heads`` follows."""
    torch.manual_seed(0)
    model, x = RelPosNet().eval(), torch.randn(batch, 4, 4, 3)
    original, shapes = _copy(model), output_shapes(model, x)
    DG = build(model, x)
    rejected: list[str] = []
    blocks = find_attention_heads(DG, rejected=rejected)
    assert len(blocks) == 1 and len(blocks[0].units) == 4, rejected
    blocks[0].group([2]).prune()
    assert model.attn.num_heads == 3 and model.attn.qkv.out_features == 36
    assert tuple(model.attn.rel_pos_h.shape) == (7, 4)
    check_result(original, model, x, shapes, exact=True)


def test_relative_position_tables_lose_the_pruned_head_dims():
    """A head dim removed from q (and k) removes that column of both tables: they are contracted with q."""
    torch.manual_seed(0)
    model, x = RelPosNet().eval(), torch.randn(1, 4, 4, 3)
    done = prune_all_groups(model, x, n_per_group=1, rounds=2, ignored_layers=[model.head])
    d = model.attn.rel_pos_h.shape[1]  # (``head_dim`` itself is never read by the forward: it stays stale)
    assert d == model.attn.rel_pos_w.shape[1] < 4 and model.attn.qkv.out_features >= 2 * model.attn.num_heads * d
    dims = [g for g in done.groups if any(it.dep.target.module is model.attn.rel_pos_h for it in g.items)]
    assert dims and all(member(g, model.attn.rel_pos_w) == member(g, model.attn.rel_pos_h) for g in dims)


class InnerAttention(nn.Module):
    """TNT's attention: ``qk`` of ``hidden_dim`` split into heads of ``self.head_dim``, ``v`` of the full
    width split into the same heads by ``-1``; run on (B * patches, pixels, C) sequences."""

    def __init__(self, dim: int = 12, hidden_dim: int = 8, heads: int = 2):
        super().__init__()
        self.num_heads, self.head_dim = heads, hidden_dim // heads
        self.scale = self.head_dim ** -0.5
        self.qk = nn.Linear(dim, 2 * hidden_dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, _ = x.shape
        qk = self.qk(x).reshape(B, N, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = qk.unbind(0)
        v = self.v(x).reshape(B, N, self.num_heads, -1).permute(0, 2, 1, 3)
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, N, -1))


class PixelNet(nn.Module):
    """Patches of 4 pixels: the inner attention's batch is (B * 4 patches)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(3, 12)
        self.attn_in = InnerAttention()
        self.head = nn.Linear(48, 5)

    def forward(self, x):  # (B, 4 patches, 4 pixels, 3)
        B, P, Q, _ = x.shape
        pix = self.embed(x).reshape(B * P, Q, -1)
        pix = pix + self.attn_in(pix)
        return self.head(pix.reshape(B, P, -1).mean(1))


def test_inner_attention_heads_prune_and_its_batch_is_not_reported():
    """The heads of attention on (B * patches) sequences are found and removed exactly; the other
    batch dim of its matmuls (the patches) is not reported as heads that cannot be removed."""
    torch.manual_seed(0)
    model, x = PixelNet().eval(), torch.randn(2, 4, 4, 3)
    original, shapes = _copy(model), output_shapes(model, x)
    DG = build(model, x)
    rejected: list[str] = []
    blocks = find_attention_heads(DG, rejected=rejected)
    assert len(blocks) == 1 and len(blocks[0].units) == 2 and rejected == []
    blocks[0].group([0]).prune()
    assert (model.attn_in.num_heads, model.attn_in.qk.out_features, model.attn_in.v.out_features) == (1, 8, 6)
    check_result(original, model, x, shapes, exact=True)


class SingleHead(nn.Module):
    """SHViT's mixer: attention on the first ``self.pdim`` channels only, the rest passed through.

    ``self.pdim`` sizes the input's first piece, the value piece of ``qkv`` and a reshape, and the
    second piece is written as ``self.dim - self.pdim`` (BatchNorm in place of SHViT's GroupNorm,
    so that every prune is exact).
    """

    def __init__(self, dim: int = 16, qk_dim: int = 4, pdim: int = 8):
        super().__init__()
        self.dim, self.qk_dim, self.pdim = dim, qk_dim, pdim
        self.scale = qk_dim ** -0.5
        self.pre_norm = nn.BatchNorm2d(pdim)
        self.qkv = nn.Conv2d(pdim, 2 * qk_dim + pdim, 1)
        self.proj = nn.Sequential(nn.ReLU(), nn.Conv2d(dim, dim, 1))

    def forward(self, x):
        B, _, H, W = x.shape
        x1, x2 = torch.split(x, [self.pdim, self.dim - self.pdim], dim=1)
        q, k, v = torch.split(self.qkv(self.pre_norm(x1)), [self.qk_dim, self.qk_dim, self.pdim], dim=1)
        q, k, v = q.flatten(2), k.flatten(2), v.flatten(2)
        attn = ((q.transpose(-2, -1) @ k) * self.scale).softmax(dim=-1)
        x1 = (v @ attn.transpose(-2, -1)).reshape(B, self.pdim, H, W)
        return self.proj(torch.cat([x1, x2], dim=1))


class SingleHeadNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.mixer = SingleHead()
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.mixer(x)
        return self.head(x.mean((2, 3)))


def test_single_head_mixer_prunes_its_stream_and_value_rows_together():
    """The split ``[self.pdim, self.dim - self.pdim]`` binds ``self.dim`` to the input and ``pdim`` to
    its first piece, which ties the stream's first ``pdim`` channels to the value rows of ``qkv``:
    removing some removes as many of each, and both attributes follow."""
    torch.manual_seed(0)
    model, x = SingleHeadNet().eval(), torch.randn(1, 3, 8, 8)
    done = prune_all_groups(model, x, n_per_group=2, rounds=2, ignored_layers=[model.head])
    mix = model.mixer
    assert mix.dim == model.stem.out_channels < 16 and mix.pdim == mix.pre_norm.num_features < 8
    assert mix.qkv.out_channels == 2 * mix.qk_dim + mix.pdim
    assert len(done.groups) >= 2

    model = SingleHeadNet().eval()
    done = prune_and_verify(model, x, model.stem, tp.prune_conv_out_channels, [0, 12])
    assert member(done.groups[0], model.mixer.qkv, out=True) == [8]  # value row 0 (after q and k's 4 + 4)
    assert member(done.groups[0], model.mixer.pre_norm) == [0]
    assert (model.mixer.dim, model.mixer.pdim, model.mixer.qk_dim) == (14, 7, 4)


def test_single_head_mixer_query_key_dims():
    torch.manual_seed(0)
    model, x = SingleHeadNet().eval(), torch.randn(1, 3, 8, 8)
    done = prune_and_verify(model, x, model.mixer.qkv, tp.prune_conv_out_channels, [1])
    assert member(done.groups[0], model.mixer.qkv, out=True) == [1, 5]  # q dim 1 and k dim 1
    assert (model.mixer.qk_dim, model.mixer.pdim, model.mixer.dim) == (3, 8, 16)


class Pinned(nn.Module):
    """``self.width`` sizes a view of ``fc1``'s output (so it would follow a prune of it) and is also
    a ``narrow`` length over the input, which nothing may change: the pruned model would silently
    sum fewer input features."""

    def __init__(self):
        super().__init__()
        self.width = 8
        self.fc1, self.fc2 = nn.Linear(12, 8), nn.Linear(8, 4)

    def forward(self, x):
        h = self.fc1(x).view(x.shape[0], self.width)
        return self.fc2(h) + x.narrow(-1, 0, self.width).sum(-1, keepdim=True)


def test_an_attribute_read_where_it_cannot_follow_pins_its_dims():
    model, x = Pinned().eval(), torch.randn(2, 12)
    DG = build(model, x)
    group = DG.get_pruning_group(model.fc1, LIN_OUT, [0])
    assert not DG.check_pruning_group(group)
    msg = r"Tensor.narrow in <model> reads <model> \(Pinned\).width = 8 where it cannot follow a prune"
    assert any("reads <model> (Pinned).width = 8" in r for r in group.blocked_by)
    assert_refused_unchanged(model, group.prune, UnsupportedOpError, msg, DG)
    assert list(DG.get_all_groups(ignored_layers=[model.fc2])) == []


def _copy(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model)
