"""Attention (depgraph/dims/attention.py and q @ k^T in linear_ops.py): heads go together.

Removing a whole head, or value dims only, is exact; head dims shared by query
and key change the default softmax scale and are inexact.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import depgraph as tp

from .._checks import member, names_in, prune_and_verify

OUT, IN = tp.prune_conv_out_channels, tp.prune_conv_in_channels
LIN_OUT, LIN_IN = tp.prune_linear_out_channels, tp.prune_linear_in_channels


class Attention(nn.Module):
    """Heads by ``view(B, T, self.heads, -1)``; q @ k^T, softmax, @ v, merged back.

    The scale is a constant of the layer, as in most implementations, so removing
    whole heads, or head dims of v only, is exact.
    """

    def __init__(self, how: str, heads: int = 2, head_dim: int = 4):
        super().__init__()
        self.how, self.heads, self.scale = how, heads, head_dim**-0.5
        d = heads * head_dim
        self.q, self.k, self.v = nn.Linear(6, d), nn.Linear(6, d), nn.Linear(6, d)
        self.o = nn.Linear(d, 6)

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = (f(x).view(b, t, self.heads, -1).transpose(1, 2) for f in (self.q, self.k, self.v))
        if self.how == "sdpa":
            y = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        else:
            y = torch.softmax(q @ k.transpose(-2, -1) * self.scale, dim=-1) @ v
        return self.o(y.transpose(1, 2).reshape(b, t, -1))


@pytest.mark.parametrize("how", ["sdpa", "matmul"])
def test_attention_heads_go_together(how):
    model = Attention(how)
    done = prune_and_verify(model, torch.randn(2, 3, 6), model.v, LIN_OUT, [4, 5, 6, 7])
    group = done.groups[0]
    for layer in (model.q, model.k, model.v):
        assert member(group, layer, out=True) == [4, 5, 6, 7]
    assert member(group, model.o, out=False) == [4, 5, 6, 7]
    assert model.heads == 1


def test_value_dims_are_free_of_query_key_dims():
    """v's head dims reach the output only: removing one leaves q and k alone."""
    model = Attention("sdpa")
    done = prune_and_verify(model, torch.randn(2, 3, 6), model.o, LIN_IN, [1])
    group = done.groups[0]
    assert member(group, model.v, out=True) == [1, 5]  # the same dim of both heads
    assert "q" not in names_in(group) and "k" not in names_in(group)


class GQA(nn.Module):
    """4 query heads share 2 key/value heads (``enable_gqa``)."""

    def __init__(self):
        super().__init__()
        self.q, self.k, self.v = nn.Linear(6, 4 * 2), nn.Linear(6, 2 * 2), nn.Linear(6, 2 * 2)
        self.o = nn.Linear(4 * 2, 6)

    def forward(self, x):
        b, t, _ = x.shape
        q = self.q(x).view(b, t, -1, 2).transpose(1, 2)
        k = self.k(x).view(b, t, -1, 2).transpose(1, 2)
        v = self.v(x).view(b, t, -1, 2).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, scale=0.5, enable_gqa=True)
        return self.o(y.transpose(1, 2).reshape(b, t, -1))


def test_gqa_key_value_head_takes_its_query_heads():
    model = GQA()
    done = prune_and_verify(model, torch.randn(2, 3, 6), model.k, LIN_OUT, [2, 3])
    group = done.groups[0]
    assert member(group, model.v, out=True) == [2, 3]
    assert member(group, model.q, out=True) == [4, 5, 6, 7]  # query heads 2, 3 read kv head 1
    assert member(group, model.o, out=False) == [4, 5, 6, 7]


def test_default_attention_scale_makes_head_dims_inexact():
    class Scaled(Attention):
        def forward(self, x):
            b, t, _ = x.shape
            q, k, v = (f(x).view(b, t, self.heads, -1).transpose(1, 2) for f in (self.q, self.k, self.v))
            return self.o(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, -1))

    model = Scaled("sdpa")
    prune_and_verify(model, torch.randn(2, 3, 6), model.q, LIN_OUT, [0], exact=False)
    assert model.q.out_features == 6 and model.k.out_features == 6
