"""Slices bounded by attribute expressions and empty tail slices (depgraph/dims/bounds.py)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

import depgraph as tp

from .._checks import build, member, prune_and_verify

X = torch.randn(2, 5, 8)


class Config:
    """A plain config object shared by every layer, like a Hugging Face config."""

    def __init__(self, heads: int = 4, kv_heads: int = 2, head_dim: int = 4):
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim


class FusedAttention(nn.Module):
    """Phi-3 style: one qkv projection sliced at bounds computed from the config and attributes."""

    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        self.head_dim, self.num_kv = config.head_dim, config.kv_heads
        self.qkv = nn.Linear(8, (config.heads + 2 * config.kv_heads) * config.head_dim)
        self.o = nn.Linear(config.heads * config.head_dim, 8)

    def forward(self, x):
        b, t, _ = x.shape
        qkv = self.qkv(x)  # (B, T, (H + 2 KV) * D)
        q_end = self.config.heads * self.head_dim
        q = qkv[..., :q_end]
        k = qkv[..., q_end: q_end + self.num_kv * self.head_dim]
        v = qkv[..., q_end + self.num_kv * self.head_dim:]
        # (B, T, H*D) -> (B, H, T, D); out index = h*D + d
        q, k, v = (s.view(b, t, -1, self.head_dim).transpose(1, 2) for s in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, scale=0.5, enable_gqa=True)
        return self.o(y.transpose(1, 2).reshape(b, t, -1))


class Stack(nn.Module):
    def __init__(self, config: Config | None = None):
        super().__init__()
        config = config or Config()
        self.layers = nn.ModuleList([FusedAttention(config), FusedAttention(config)])

    def forward(self, x):
        for layer in self.layers:
            x = x + layer(x)
        return x


def test_pruning_a_query_head_removes_its_key_value_group_in_every_layer():
    """The bounds read the shared config: every layer must keep the same head count."""
    model = Stack()
    first, second = model.layers
    done = prune_and_verify(model, X, first.o, tp.prune_linear_in_channels, list(range(4)))
    group = done.groups[0]
    # query heads 0 and 1 share key/value head 0: q [0, 8), k [16, 20), v [24, 28)
    expected = [*range(8), *range(16, 20), *range(24, 28)]
    assert member(group, first.qkv, out=True) == expected
    assert member(group, second.qkv, out=True) == expected
    assert (model.layers[0].config.heads, first.num_kv, second.num_kv, first.head_dim) == (2, 1, 1, 4)
    assert type(first.config.heads) is int


def test_pruning_a_head_dim_removes_it_from_q_k_v_and_updates_the_bounds():
    model = Stack(Config(heads=2, kv_heads=2, head_dim=4))
    first = model.layers[0]
    done = prune_and_verify(model, X, first.o, tp.prune_linear_in_channels, [1])
    assert member(done.groups[0], first.qkv, out=True) == [1, 5, 9, 13, 17, 21]
    assert (first.head_dim, first.config.heads, first.num_kv) == (3, 2, 2)
    assert model.layers[1].head_dim == 4  # its own attribute: the other layer is not coupled


def test_pruning_a_key_value_head_from_the_projection():
    model = Stack()
    first = model.layers[0]
    done = prune_and_verify(model, X, first.qkv, tp.prune_linear_out_channels, list(range(20, 24)))  # k head 1
    assert member(done.groups[0], first.qkv, out=True) == [*range(8, 16), *range(20, 24), *range(28, 32)]
    assert (first.head_dim, first.num_kv, first.config.heads) == (4, 1, 2)


def test_one_position_widens_to_a_head_dim():
    model = Stack()
    first = model.layers[0]
    done = prune_and_verify(model, X, first.qkv, tp.prune_linear_out_channels, [20])  # k head 1, dim 0
    assert member(done.groups[0], first.qkv, out=True) == list(range(0, 32, 4))
    assert (first.head_dim, first.num_kv, first.config.heads) == (3, 2, 4)


class Shifted(nn.Module):
    """A bound with a constant term: the first two outputs are not part of any head."""

    def __init__(self, sign: int = 1):
        super().__init__()
        self.sign, self.width = sign, 6
        self.fc = nn.Linear(8, 10)
        self.out = nn.Linear(6, 3)

    def forward(self, x):
        y = self.fc(x)
        if self.sign > 0:
            return self.out(y[..., 2: 2 + self.width] * 1.0)
        return self.out(y[..., 10 - self.width:])  # a negative term: not a block of positions


def test_a_constant_term_freezes_only_its_positions():
    model = Shifted()
    done = prune_and_verify(model, X, model.out, tp.prune_linear_in_channels, [0])
    assert member(done.groups[0], model.fc, out=True) == [2] and model.width == 5
    DG = build(Shifted(), X)
    blocked = DG.get_pruning_group(DG.model.fc, tp.prune_linear_out_channels, [1]).blocked_by
    assert any("constant" in r for r in blocked)


def test_a_negative_term_freezes_the_slice():
    model = Shifted(sign=-1)
    DG = build(model, X)
    group = DG.get_pruning_group(model.out, tp.prune_linear_in_channels, [0])
    assert any("Tensor.__getitem__" in r for r in group.blocked_by)


class PartialRotary(nn.Module):
    """Phi-3's ``q[..., :r], q[..., r:]`` with ``r = cos.shape[-1]``: the tail is empty."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 6)
        self.gate = nn.Linear(8, 6)
        self.out = nn.Linear(6, 3)

    def forward(self, x, other=None):
        h, g = self.fc(x), self.gate(x)
        r = (other if other is not None else g).shape[-1]
        rot, rest = h[..., :r], h[..., r:]
        return self.out(torch.cat([rot * g, rest], dim=-1))


def test_an_empty_tail_bounded_by_a_coupled_shape_follows():
    model = PartialRotary()
    done = prune_and_verify(model, X, model.fc, tp.prune_linear_out_channels, [2])
    assert member(done.groups[0], model.gate, out=True) == [2] and model.out.in_features == 5


def test_an_empty_tail_bounded_by_another_tensor_freezes():
    model = PartialRotary()
    DG = build(model, (X, torch.randn(6)))
    group = DG.get_pruning_group(model.fc, tp.prune_linear_out_channels, [2])
    assert any("computed from another tensor's shape" in r for r in group.blocked_by)
