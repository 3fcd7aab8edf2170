"""How leaf modules tie their inputs and outputs to channels (depgraph/dims/modules.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import depgraph as tp
from depgraph.functional import BasePruningFunc, keep_index, prune_tensor, register_handler
from depgraph.layers import restoring_layers

from .._checks import assert_refused_unchanged, build, member, names_in, prune_all_groups, prune_and_verify

OUT, IN = tp.prune_conv_out_channels, tp.prune_conv_in_channels


class Grouped(nn.Module):
    """stem (3 -> 16) -> grouped conv (16 -> 32, groups=4) -> head: 4 in and 8 out per group."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 1), nn.BatchNorm2d(16), nn.ReLU())
        self.gconv = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1, groups=4), nn.BatchNorm2d(32), nn.ReLU())
        self.head = nn.Conv2d(32, 5, 1)

    def forward(self, x):
        return self.head(self.gconv(self.stem(x)))


def test_grouped_conv_input_takes_the_same_position_in_every_group():
    model = Grouped()
    done = prune_and_verify(model, torch.randn(2, 3, 5, 5), model.stem[0], OUT, [1])
    group = done.groups[0]
    assert member(group, model.stem[0], out=True) == [1, 5, 9, 13]
    assert member(group, model.gconv[0], out=False) == [1, 5, 9, 13]
    assert model.gconv[0].groups == 4 and model.gconv[0].in_channels == 12


def test_grouped_conv_output_takes_the_same_position_in_every_group():
    model = Grouped()
    done = prune_and_verify(model, torch.randn(2, 3, 5, 5), model.gconv[0], OUT, [10])
    assert member(done.groups[0], model.head, out=False) == [2, 10, 18, 26]
    assert "stem.0" not in names_in(done.groups[0])


def test_grouped_conv_whole_group():
    """Removing one group's inputs and outputs together removes the group."""
    model = Grouped()
    done = prune_and_verify(model, torch.randn(2, 3, 5, 5), model.stem[0], OUT, [4, 5, 6, 7])
    assert member(done.groups[0], model.gconv[0], out=True) == list(range(8, 16))
    assert model.gconv[0].groups == 3


def test_grouped_conv_all_groups():
    prune_all_groups(Grouped(), torch.randn(2, 3, 5, 5), n_per_group=2, rounds=3)


class Depthwise(nn.Module):
    """A depthwise conv with channel multiplier 2: input channel c owns outputs 2c, 2c + 1."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1)
        self.dw = nn.Conv2d(8, 16, 3, padding=1, groups=8)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        return self.head(torch.relu(self.dw(self.stem(x))))


def test_depthwise_with_multiplier():
    model = Depthwise()
    done = prune_and_verify(model, torch.randn(2, 3, 5, 5), model.stem, OUT, [2])
    assert member(done.groups[0], model.dw, out=True) == [4, 5]
    assert member(done.groups[0], model.head, out=False) == [4, 5]
    assert (model.dw.in_channels, model.dw.out_channels, model.dw.groups) == (7, 14, 7)


def test_depthwise_with_multiplier_from_one_output():
    """One output of a pair cannot go alone: the smaller slab is its whole group (2 outputs)."""
    model = Depthwise()
    done = prune_and_verify(model, torch.randn(2, 3, 5, 5), model.dw, OUT, [5])
    assert member(done.groups[0], model.dw, out=True) == [4, 5]
    assert member(done.groups[0], model.stem, out=True) == [2]
    assert (model.dw.in_channels, model.dw.out_channels, model.dw.groups) == (7, 14, 7)


def test_depthwise_all_groups():
    prune_all_groups(Depthwise(), torch.randn(2, 3, 5, 5), n_per_group=2, rounds=2)


class OneChannel(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 1)
        self.single = nn.Conv2d(4, 1, 3, padding=1)
        self.head = nn.Conv2d(1, 3, 1)

    def forward(self, x):
        return self.head(torch.sigmoid(self.single(self.stem(x))))


def test_conv_with_one_output_channel_cannot_lose_it():
    model = OneChannel()
    x = torch.randn(1, 3, 4, 4)
    DG = build(model, x)
    roots = [g[0].dep.target.module for g in DG.get_all_groups()]
    assert model.single not in roots and model.stem in roots
    group = DG.get_pruning_group(model.single, OUT, [0])
    assert not DG.check_pruning_group(group)
    assert_refused_unchanged(model, group.prune, tp.OverPruningError, r"single would lose all 1 channels", DG)
    prune_and_verify(model, x, model.stem, OUT, [3])


@pytest.mark.parametrize("conv", [nn.Conv1d, nn.Conv3d])
def test_conv_1d_and_3d(conv):
    shape = (2, 3, 6) if conv is nn.Conv1d else (2, 3, 4, 4, 4)
    model = nn.Sequential(conv(3, 6, 3, padding=1), nn.ReLU(), conv(6, 6, 1, groups=2), conv(6, 2, 1))
    prune_all_groups(model, torch.randn(*shape), n_per_group=2, rounds=2, root_module_types=(conv,))
    assert model[0].out_channels < 6


def test_conv_transpose():
    model = nn.Sequential(nn.ConvTranspose2d(3, 6, 2, stride=2), nn.BatchNorm2d(6), nn.ReLU(),
                          nn.ConvTranspose2d(6, 6, 3, padding=1, groups=2), nn.Conv2d(6, 2, 1))
    done = prune_and_verify(model, torch.randn(2, 3, 3, 3), model[0], OUT, [1])
    assert member(done.groups[0], model[3], out=False) == [1, 4]  # 2 groups of 3: slot 1 of each


def norms() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 1), nn.PReLU(8), nn.InstanceNorm2d(8, affine=True),
        nn.Conv2d(8, 8, 1), nn.GroupNorm(4, 8), nn.PReLU(), nn.Conv2d(8, 2, 1),
    )


def test_prelu_instance_and_group_norm():
    x = torch.randn(2, 3, 4, 4)
    model = norms()
    prune_and_verify(model, x, model[0], OUT, [0, 7])
    assert model[1].num_parameters == 6 and model[2].num_features == 6
    model = norms()
    done = prune_and_verify(model, x, model[3], OUT, [1], exact=False)  # GroupNorm mixes its group
    assert member(done.groups[0], model[3], out=True) == [0, 1]  # closed to its whole group of 2
    assert model[4].num_channels == 6 and model[4].num_groups == 3


class Recurrent(nn.Module):
    """Linear -> 2-layer bidirectional LSTM -> Linear -> 2-layer GRU -> Linear."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(5, 6)
        self.lstm = nn.LSTM(6, 8, num_layers=2, bidirectional=True, batch_first=True)
        self.mid = nn.Linear(16, 7)
        self.gru = nn.GRU(7, 6, num_layers=2, batch_first=True)
        self.out = nn.Linear(6, 3)

    def forward(self, x):
        y, _ = self.lstm(self.inp(x))
        y, h = self.gru(self.mid(y))
        return self.out(y[:, -1] + h[-1])


def test_lstm_gru_stack_all_groups():
    model = Recurrent()
    done = prune_all_groups(model, torch.randn(2, 4, 5), n_per_group=2, rounds=2,
                            root_module_types=(nn.LSTM, nn.GRU, nn.Linear))
    assert model.lstm.hidden_size < 8 and model.gru.hidden_size < 6
    assert model.mid.in_features == 2 * model.lstm.hidden_size
    assert model.lstm.input_size == model.inp.out_features < 6
    assert len(done.groups) >= 4 * 2


def test_bidirectional_lstm_unit_removes_both_directions():
    model = Recurrent()
    done = prune_and_verify(model, torch.randn(2, 4, 5), model.lstm, tp.prune_lstm_out_channels, [3])
    assert member(done.groups[0], model.mid, out=False) == [3, 11]
    assert model.lstm.hidden_size == 7 and model.mid.in_features == 14


def test_embedding():
    class Tokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 6)
            self.fc = nn.Linear(6, 2)

        def forward(self, ids):
            return self.fc(self.emb(ids))

    model = Tokens()
    done = prune_and_verify(model, torch.randint(0, 10, (2, 5)), model.emb, tp.prune_embedding_out_channels, [0])
    assert member(done.groups[0], model.fc, out=False) == [0] and model.emb.embedding_dim == 5


class Scale(nn.Module):
    def __init__(self, n: int):
        super().__init__()
        self.weight = nn.Parameter(torch.rand(n) + 0.5)

    def forward(self, x):
        return x * self.weight.view(1, -1, 1, 1)


class ScalePruner(BasePruningFunc):
    TARGET_MODULES = (Scale,)

    def prune_out_channels(self, layer, idxs):
        idxs = self.check_idxs(layer, idxs, "out")
        prune_tensor(layer.weight, 0, keep_index(layer.weight.numel(), idxs))
        return layer

    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer):
        return layer.weight.numel()

    get_in_channels = get_out_channels


class WithScale(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 1)
        self.scale = Scale(6)
        self.head = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        return self.head(self.scale(self.conv(x)))


def test_custom_layer_registered_globally():
    with restoring_layers():
        register_handler(Scale)(ScalePruner)
        model = WithScale()
        done = prune_and_verify(model, torch.randn(1, 3, 2, 2), model.head, IN, [5])
        assert member(done.groups[0], model.scale, out=True) == [5] and model.scale.weight.shape == (5,)
    assert tp.functional.find_handler(Scale(2)) is None


def test_custom_layer_with_one_channel_set_passes_channels_through():
    """``prune_in_channels = prune_out_channels``: the layer's input and output channels are one set."""
    model = WithScale()
    DG = build(model, torch.randn(1, 3, 2, 2), customized_pruners={Scale: ScalePruner()})
    group = DG.get_pruning_group(model.conv, tp.prune_conv_out_channels, [0, 3])
    assert {dep.target.name: dep.is_out() for dep, _ in group} == {"conv": True, "scale": True, "head": False}
    group.prune()
    assert model.scale.weight.shape == (4,) and model.head.in_channels == 4
