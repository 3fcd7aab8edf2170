"""Reductions and normalisations (depgraph/dims/reduce.py).

Reducing over spatial dims keeps channels exact. Reducing *over* channels is
still a valid prune but not "the original with channels zeroed" (a mean or a
max sees fewer channels), so verify must say exactness does not apply.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import depgraph as tp

from .._checks import build, member, prune_all_groups, prune_and_verify

OUT = tp.prune_conv_out_channels

SPATIAL = {
    "mean": lambda y: y.mean((2, 3)),
    "sum": lambda y: torch.sum(y, dim=(-2, -1)),
    "amax": lambda y: y.amax(dim=3).amax(dim=2),
    "max": lambda y: y.max(dim=3).values.max(dim=2)[0],
    "keepdim": lambda y: y.sum(dim=(2, 3), keepdim=True).flatten(1),
    "std": lambda y: y.std(dim=(2, 3)) + y.var(2).mean(-1),
    "logsumexp": lambda y: torch.logsumexp(y.flatten(2), dim=-1),
}


class Reduce(nn.Module):
    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.conv = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        return self.fc(SPATIAL[self.how](self.conv(x)))


@pytest.mark.parametrize("how", list(SPATIAL))
def test_reducing_spatial_dims_is_exact(how):
    model = Reduce(how)
    done = prune_and_verify(model, torch.randn(2, 3, 5, 5), model.conv[0], OUT, [0, 4])
    assert member(done.groups[0], model.fc, out=False) == [0, 4]


CHANNELS = {
    "mean": lambda y: y * y.mean(1, keepdim=True),
    "amax": lambda y: y - torch.amax(y, dim=1, keepdim=True),
    "softmax": lambda y: F.softmax(y, dim=1),
    "normalize": lambda y: F.normalize(y, dim=1),
}


class ChannelStats(nn.Module):
    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.conv = nn.Conv2d(3, 6, 1)
        self.head = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        return self.head(CHANNELS[self.how](self.conv(x)))


@pytest.mark.parametrize("how", list(CHANNELS))
def test_reducing_over_channels_is_valid_but_not_exact(how):
    model = ChannelStats(how)
    done = prune_and_verify(model, torch.randn(2, 3, 4, 4), model.conv, OUT, [1], exact=False)
    assert done.groups[0].inexact_reasons
    assert "not exact" in done.groups[0].details()
    assert any("dim 1" in r for r in done.result.reasons), done.result.reasons


def test_sum_over_channels_stays_exact():
    """A removed channel adds what a zeroed one adds to a sum: nothing."""

    class ChannelSum(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 6, 1)
            self.head = nn.Conv2d(6, 2, 1)

        def forward(self, x):
            y = self.conv(x)
            return self.head(y * y.sum(1, keepdim=True))

    model = ChannelSum()
    prune_and_verify(model, torch.randn(2, 3, 4, 4), model.conv, OUT, [1, 2])


def test_argmax_over_channels_freezes_them():
    class ArgMax(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 6, 1)

        def forward(self, x):
            y = self.conv(x)
            return y.sum((2, 3)), y.argmax(1)

    model = ArgMax()
    DG = build(model, torch.randn(2, 3, 4, 4))
    group = DG.get_pruning_group(model.conv, OUT, [1])
    assert not DG.check_pruning_group(group)
    assert any("depends on positions" in r for r in group.blocked_by)


def test_batch_and_layer_norm_modules():
    """BatchNorm follows channels exactly; a LayerNorm over channels is valid but inexact."""

    class Norms(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(3, 6, 1)
            self.bn = nn.BatchNorm1d(6)
            self.ln = nn.LayerNorm(6)
            self.fc = nn.Linear(6, 2)

        def forward(self, x):
            y = self.bn(self.conv(x)).transpose(1, 2)  # (B, L, C)
            return self.fc(self.ln(y)).sum(1)

    model = Norms()
    x = torch.randn(2, 3, 5)
    prune_all_groups(model, x, n_per_group=2, exact=False, root_module_types=(nn.Conv1d,))
    assert (model.bn.num_features, model.ln.normalized_shape) == (4, (4,))
