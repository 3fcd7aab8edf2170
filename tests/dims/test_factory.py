"""Constant-filled tensor factories and their sizes (depgraph/dims/factory.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import depgraph as tp

from .._checks import build, member, prune_and_verify

X = torch.randn(2, 5, 8)


class BiasedHeads(nn.Module):
    """T5 cross-attention style: a zero bias of ``(1, self.n_heads, T, T)`` added per head."""

    def __init__(self, how: str = "attr"):
        super().__init__()
        self.how, self.n_heads, self.head_dim = how, 2, 4
        self.proj = nn.Linear(8, 8)
        self.out = nn.Linear(8, 8)

    def forward(self, x):
        b, t, _ = x.shape
        h = self.proj(x).view(b, t, -1, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        scores = h @ h.transpose(-1, -2)  # (B, H, T, T)
        if self.how == "attr":
            bias = torch.zeros((1, self.n_heads, t, t), dtype=x.dtype)
        elif self.how == "full":
            bias = torch.full((1, self.n_heads, t, t), 0.5)
        elif self.how == "method":
            bias = x.new_ones(1, self.n_heads, t, t)
        else:
            bias = torch.zeros(1, 2, t, t)  # a literal head count
        y = (scores + bias).softmax(-1) @ h
        return self.out(y.transpose(1, 2).reshape(b, t, -1))


@pytest.mark.parametrize("how", ["attr", "full", "method"])
def test_a_factory_sized_by_an_attribute_follows_and_updates_it(how):
    model = BiasedHeads(how)
    done = prune_and_verify(model, X, model.proj, tp.prune_linear_out_channels, [4, 5, 6, 7])
    assert member(done.groups[0], model.out, out=False) == [4, 5, 6, 7]
    assert model.n_heads == 1 and type(model.n_heads) is int


def test_a_literal_factory_size_freezes_the_head_axis():
    model = BiasedHeads("literal")
    DG = build(model, X)
    group = DG.get_pruning_group(model.proj, tp.prune_linear_out_channels, [4, 5, 6, 7])
    assert any("torch.zeros" in r and "size 2 of dim 1 is written into the code" in r for r in group.blocked_by)


class Padded(nn.Module):
    """Zeros sized from the features' own shape, concatenated after them."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 6)
        self.out = nn.Linear(6, 3)

    def forward(self, x, other=None):
        y = self.fc(x)  # (B, T, 6)
        c = (y if other is None else other).shape[-1]
        pad = torch.zeros(y.shape[0], 1, c)
        return self.out(torch.cat([y, pad], dim=1))


def test_a_factory_sized_from_the_coupled_shape_follows():
    model = Padded()
    done = prune_and_verify(model, X, model.fc, tp.prune_linear_out_channels, [3])
    assert member(done.groups[0], model.out, out=False) == [3]


def test_a_factory_sized_from_another_shape_freezes():
    model = Padded()
    DG = build(model, (X, torch.randn(6)))
    group = DG.get_pruning_group(model.fc, tp.prune_linear_out_channels, [3])
    assert any("computed from another tensor's shape" in r for r in group.blocked_by)
