"""The rule registry (depgraph/dims/registry.py): ops without a rule freeze and warn once.

An op the library has no rule for must never be pruned through: every dim it
touches freezes, one warning names the op and the module that called it, and
groups through it are neither offered nor prunable. Registering a rule with
``register_dim_rule`` makes them prunable.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn

import depgraph as tp
from depgraph.dims import get_dim_rule, register_dim_rule, registered_dim_rules
from depgraph.dims import registry as dim_registry
from depgraph.dims.modules import conv_module_rule

from .._checks import assert_refused_unchanged, build, prune_all_groups, prune_and_verify

OUT = tp.prune_conv_out_channels


class FFTMix(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, x):
        return torch.fft.fft(x, dim=self.dim).abs()


class WithFFT(nn.Module):
    """a -> mix (an FFT, called twice) -> b -> d: a's channels must freeze, b's stay free."""

    def __init__(self, dim: int = 1):
        super().__init__()
        self.a = nn.Conv2d(3, 6, 1)
        self.mix = FFTMix(dim)
        self.b = nn.Conv2d(6, 5, 1)
        self.d = nn.Conv2d(5, 2, 1)

    def forward(self, x):
        y = self.a(x)
        return self.d(torch.relu(self.b(self.mix(y) + self.mix(y))))


def build_warnings(model: nn.Module, x, **kwargs) -> tuple[tp.DependencyGraph, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        DG = build(model, x, **kwargs)
    return DG, [str(w.message) for w in caught]


def test_unsupported_op_warns_once_naming_op_and_module():
    model = WithFFT()
    DG, messages = build_warnings(model, torch.randn(1, 3, 4, 4))
    assert len(messages) == 1, messages
    assert "torch.fft.fft in mix" in messages[0] and "register_dim_rule" in messages[0]


def test_unsupported_op_freezes_the_dims_it_touches():
    model = WithFFT()
    x = torch.randn(1, 3, 4, 4)
    DG, _ = build_warnings(model, x)
    assert [g[0].dep.target.module for g in DG.get_all_groups()] == [model.b]
    group = DG.get_pruning_group(model.a, OUT, [1])
    assert not DG.check_pruning_group(group)
    assert any("torch.fft.fft in mix" in r for r in group.blocked_by)
    assert_refused_unchanged(model, group.prune, tp.UnsupportedOpError, r"torch\.fft\.fft in mix", DG)
    group = DG.get_pruning_group(model.b, tp.prune_conv_in_channels, [0])
    assert_refused_unchanged(model, group.prune, tp.UnsupportedOpError, "must not change", DG)


def test_verbose_false_is_silent():
    _, messages = build_warnings(WithFFT(), torch.randn(1, 3, 4, 4), verbose=False)
    assert messages == []


def test_a_registered_rule_makes_the_op_prunable(monkeypatch):
    monkeypatch.setattr(dim_registry, "_RULES", dict(dim_registry._RULES))

    @register_dim_rule(torch.fft.fft)
    def fft_rule(op, ctx):
        """An FFT along ``dim`` mixes that dim only; every other dim passes through."""
        x, out = op.inputs[0], op.outputs[0]
        dim = op.kwargs.get("dim", -1) % x.ndim
        for d in range(x.ndim):
            if d != dim:
                ctx.identity(x, d, out, d)

    assert get_dim_rule(torch.fft.fft) is fft_rule
    model = WithFFT(dim=-1)
    _, messages = build_warnings(model, torch.randn(1, 3, 4, 4))
    assert messages == []
    prune_and_verify(model, torch.randn(1, 3, 4, 4), model.a, OUT, [0, 2])
    prune_all_groups(WithFFT(dim=-1), torch.randn(1, 3, 4, 4), n_per_group=2, min_groups=2)


def test_the_fft_rule_is_still_too_strict_across_its_own_dim(monkeypatch):
    """A rule that leaves a dim unmentioned freezes it: the FFT over channels stays frozen."""
    monkeypatch.setattr(dim_registry, "_RULES", dict(dim_registry._RULES))
    register_dim_rule(torch.fft.fft)(lambda op, ctx: ctx.identity(op.inputs[0], 0, op.outputs[0], 0))
    model = WithFFT(dim=1)
    DG, _ = build_warnings(model, torch.randn(2, 3, 4, 4))
    assert not DG.check_pruning_group(DG.get_pruning_group(model.a, OUT, [1]))


def test_a_failing_rule_warns_and_freezes(monkeypatch):
    monkeypatch.setattr(dim_registry, "_RULES", dict(dim_registry._RULES))

    def broken(op, ctx):
        ctx.identity(op.inputs[0], 0, op.outputs[0], 0)
        raise ValueError("cannot read the arguments")

    register_dim_rule(torch.fft.fft)(broken)
    model = WithFFT(dim=-1)
    DG, messages = build_warnings(model, torch.randn(1, 3, 4, 4))
    assert len(messages) == 1 and "rule failed (ValueError: cannot read the arguments)" in messages[0]
    assert not DG.check_pruning_group(DG.get_pruning_group(model.a, OUT, [1]))


def test_replacing_a_rule_warns(monkeypatch):
    monkeypatch.setattr(dim_registry, "_RULES", dict(dim_registry._RULES))
    with pytest.warns(UserWarning, match="replacing the dimension rule") as record:
        register_dim_rule(torch.cat)(lambda op, ctx: None)
    assert record[0].filename == __file__  # stacklevel=2: the warning points at the caller


def test_rules_are_found_by_exact_callable_and_module_mro():
    class MyConv(nn.Conv2d):
        pass

    assert get_dim_rule(MyConv) is conv_module_rule
    assert get_dim_rule(torch.cat) is registered_dim_rules()[torch.cat]
    assert get_dim_rule(torch.fft.fft) is None


class NumpyFlip(torch.autograd.Function):
    """A custom autograd Function that leaves torch: the trace cannot see what it does."""

    @staticmethod
    def forward(ctx, x):
        return torch.from_numpy(x.detach().numpy()[:, ::-1].copy())

    @staticmethod
    def backward(ctx, grad):
        return grad.flip(1)


class Flip(nn.Module):
    def forward(self, x):
        return NumpyFlip.apply(x)


class WithNumpy(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 6, 1)
        self.flip = Flip()
        self.b = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        return self.b(self.flip(self.a(x)))


def test_data_leaving_torch_freezes_its_producer():
    """Pruning ``a`` would feed ``b`` 5 channels: the escape through numpy must freeze ``a``."""
    model = WithNumpy()
    DG, messages = build_warnings(model, torch.randn(1, 3, 4, 4))
    assert len(messages) == 1 and "Tensor.numpy in flip" in messages[0]
    assert list(DG.get_all_groups()) == []
    group = DG.get_pruning_group(model.a, OUT, [1])
    assert_refused_unchanged(model, group.prune, tp.UnsupportedOpError, "Tensor.numpy in flip", DG)


def test_metadata_reads_do_not_freeze():
    """Reading shapes, dtypes and devices is not data leaving torch."""

    class Meta(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 6, 1)
            self.b = nn.Conv2d(6, 2, 1)

        def forward(self, x):
            y = self.a(x)
            assert y.dtype.is_floating_point and y.device.type == "cpu" and y.is_contiguous()
            b, c, h, w = y.shape
            return self.b(y.view(b, c, h * w).view(y.size(0), y.size(1), h, w) * (y.dim() + y.numel() * 0))

    model = Meta()
    _, messages = build_warnings(model, torch.randn(1, 3, 4, 4))
    assert messages == []
    prune_and_verify(model, torch.randn(1, 3, 4, 4), model.a, OUT, [5])
