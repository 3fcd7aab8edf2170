"""Tests of depgraph/utils/layer_latency.py: per-layer time beside per-layer MACs, before and after pruning."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn as nn

import depgraph as tp
from depgraph.errors import OptionError
from depgraph.utils import layer_latency as ll

torchvision = pytest.importorskip("torchvision")


def small_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.Flatten(), nn.Linear(16 * 4 * 4, 10),
    )


def no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_profile_layers_times_every_leaf_with_its_macs_channels_and_kernel() -> None:
    model = small_net().train()
    x = torch.randn(2, 3, 8, 8)
    prof = ll.profile_layers(model, x, repeat=2, warmup=1)
    assert [t.name for t in prof.layers] == ["0", "1", "2", "3", "4", "5"]  # call order
    assert [t.kind for t in prof.layers] == ["Conv2d", "BatchNorm2d", "ReLU", "Conv2d", "Flatten", "Linear"]
    conv0, bn, _, conv3, _, fc = prof.layers
    assert (conv0.in_channels, conv0.out_channels, bn.in_channels, fc.out_channels) == (3, 8, 8, 10)
    assert conv0.macs == 8 * 64 * (3 * 9 + 1) and conv3.macs == 16 * 16 * (8 * 9 + 1)  # per example, bias included
    macs, _, layer_macs, _ = tp.utils.count_ops_and_params(model, x, layer_wise=True)
    assert prof.macs == macs and fc.macs == layer_macs[model[5]] >= 256 * 10
    assert all(t.ms > 0 for t in prof.layers) and prof.total_ms > 0
    assert "conv" in conv0.kernel and "batch_norm" in bn.kernel and fc.kernel in ("addmm", "mm", "linear")
    assert model.training and no_hooks(model)  # flags restored, hooks removed
    assert set(prof.ms_by_kind()) == {"Conv2d", "BatchNorm2d", "ReLU", "Flatten", "Linear"}


def test_thread_clock_and_no_kernels() -> None:
    prof = ll.profile_layers(small_net(), torch.randn(1, 3, 8, 8), repeat=1, warmup=0, kernels=False, clock="thread")
    assert all(t.kernel is None for t in prof.layers) and sum(t.ms for t in prof.layers) > 0


def test_pruned_resnet18_compared_layer_by_layer() -> None:
    """A real prune: names join, widths halve, MACs of the inner convs fall 4x, the gap adds up exactly."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(1, 3, 32, 32)
    before = ll.profile_layers(model, x, repeat=1, warmup=0, kernels=False)
    tp.pruner.BasePruner(model, x, tp.importance.GroupMagnitudeImportance(p=2), pruning_ratio=0.5,
                         ignored_layers=[model.fc], round_to=8).step()
    after = ll.profile_layers(model, x, repeat=1, warmup=0)
    changes = {c.name: c for c in ll.compare_profiles(before, after)}
    assert len(changes) == len(before.layers) == len(after.layers)
    c = changes["layer1.0.conv1"]
    assert (c.before.in_channels, c.before.out_channels, c.after.in_channels, c.after.out_channels) == (64, 64, 32, 32)
    assert c.macs_speedup == pytest.approx(4.0)
    assert c.efficiency == pytest.approx(c.time_speedup / 4.0)
    assert changes["fc"].macs_speedup == pytest.approx((512 * 1000 + 1000) / (256 * 1000 + 1000))  # inputs halved; bias kept
    gap = ll.gap_by_kind(before, after)
    s = before.macs / after.macs
    assert sum(gap.values()) == pytest.approx(after.total_ms - before.total_ms / s)
    assert {"Conv2d", "BatchNorm2d", "(between modules)"} <= set(gap)
    table = ll.layer_table(list(changes.values()), kinds=["Conv2d"])
    rows = table.splitlines()[2:]
    assert len(rows) == 20  # resnet18's convs, fc and BN filtered out
    assert rows[1].startswith("| layer1.0.conv1 | 64→64 ⇒ 32→32 | ") and "| 4.00x |" in rows[1]


def test_best_of_keeps_each_layers_fastest_run_and_the_kernel() -> None:
    model, x = small_net(), torch.randn(1, 3, 8, 8)
    a = ll.profile_layers(model, x, repeat=1, warmup=0, kernels=True)
    b = ll.profile_layers(model, x, repeat=1, warmup=0, kernels=False)
    slow = dataclasses.replace(b, layers=tuple(dataclasses.replace(t, ms=t.ms + 1.0) for t in b.layers))
    best = ll.best_of([dataclasses.replace(a, layers=tuple(dataclasses.replace(t, ms=t.ms + 2.0) for t in a.layers)),
                       slow])
    assert [t.ms for t in best.layers] == [t.ms for t in slow.layers]
    assert [t.kernel for t in best.layers] == [t.kernel for t in a.layers]
    assert best.total_ms == min(a.total_ms, b.total_ms)


def test_bad_options_raise() -> None:
    model, x = small_net(), torch.randn(1, 3, 8, 8)
    with pytest.raises(OptionError, match="repeat >= 1"):
        ll.profile_layers(model, x, repeat=0)
    with pytest.raises(OptionError, match="clock must be one of"):
        ll.profile_layers(model, x, clock="cycles")
    with pytest.raises(OptionError, match="CPU only.*'meta'"):
        ll.profile_layers(nn.Linear(4, 4, device="meta"), torch.randn(1, 4, device="meta"))
    with pytest.raises(OptionError, match="at least one"):
        ll.best_of([])
    p = ll.profile_layers(model, x, repeat=1, warmup=0, kernels=False)
    other = ll.profile_layers(nn.Sequential(nn.Flatten(), nn.Linear(192, 2)), x, repeat=1, warmup=0, kernels=False)
    with pytest.raises(OptionError, match="different models"):
        ll.best_of([p, other])
    with pytest.raises(OptionError, match="no MACs"):
        ll.gap_by_kind(p, dataclasses.replace(p, macs=0))
    assert no_hooks(model)
