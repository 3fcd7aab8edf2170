"""Linear maps (depgraph/dims/linear_ops.py): a contracted dim couples both operands.

Removing position ``k`` from both operands of a contraction drops the term
``a[..., k] * b[k, ...]``, exactly what zeroing it does, so these prunes are
exact as long as no softmax scale depends on the pruned width.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import depgraph as tp

from .._checks import member, names_in, prune_and_verify

LIN_OUT, LIN_IN = tp.prune_linear_out_channels, tp.prune_linear_in_channels


class BareLinear(nn.Module):
    """A linear layer written by hand with bare parameters, in three spellings."""

    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.inp = nn.Linear(4, 6)
        self.w = nn.Parameter(torch.randn(5, 6))
        self.b = nn.Parameter(torch.randn(5))
        self.head = nn.Linear(5, 2)

    def forward(self, x):
        h = self.inp(x)
        if self.how == "matmul":
            y = h @ self.w.t() + self.b
        elif self.how == "functional":
            y = F.linear(h, self.w, self.b)
        else:
            y = torch.einsum("bi,oi->bo", h, self.w) + self.b
        return self.head(torch.relu(y))


@pytest.mark.parametrize("how", ["matmul", "functional", "einsum"])
def test_bare_parameters_follow_both_sides(how):
    model = BareLinear(how)
    x = torch.randn(3, 4)
    done = prune_and_verify(model, x, model.inp, LIN_OUT, [0, 4])
    assert member(done.groups[0], model.w) == [0, 4] and model.w.shape == (5, 4)
    model = BareLinear(how)
    done = prune_and_verify(model, x, model.head, LIN_IN, [1])
    assert names_in(done.groups[0]) == {"head", "w", "b"}
    assert model.w.shape == (4, 6) and model.b.shape == (4,)


class SeparateBiases(nn.Module):
    """EVA/BEiT: ``F.linear(x, self.qkv.weight, cat(q_bias, k_bias, v_bias))``, the Linear never called."""

    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(6, 12, bias=False)
        self.q_bias, self.v_bias = nn.Parameter(torch.randn(4)), nn.Parameter(torch.randn(4))
        self.register_buffer("k_bias", torch.zeros(4), persistent=False)
        self.out = nn.Linear(4, 3)

    def forward(self, x):
        qkv = F.linear(x, self.qkv.weight, torch.cat((self.q_bias, self.k_bias, self.v_bias)))
        q, k, v = qkv.chunk(3, dim=-1)
        return self.out(q * k + v)


def test_a_bias_from_elsewhere_follows_the_functional_linear():
    model = SeparateBiases()
    done = prune_and_verify(model, torch.randn(2, 6), model.out, tp.prune_linear_in_channels, [1])
    assert member(done.groups[0], model.qkv, out=True) == [1, 5, 9]
    assert member(done.groups[0], model.k_bias) == [1]
    assert model.q_bias.shape == model.k_bias.shape == model.v_bias.shape == (3,)
