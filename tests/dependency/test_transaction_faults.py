"""Fault injection: every path that changes a model is one transaction (dependency/transaction.py).

An error, a ``KeyboardInterrupt`` and a ``SystemExit`` are raised at every member of a group, at
every group of a pruner step, at every entry of a history replay and at every
record of a load. Each time the model must come back bit-identical
(``state_dict``, parameter objects, ``.grad``, every module attribute and class:
``tests/_checks.model_state``), the graph must not have recorded anything, and
the same call must then succeed. A typed error raised inside keeps its type.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest
import torch
import torch.nn as nn

import depgraph as tp
import depgraph.serialization as ser
from depgraph.dependency import Dependency, DependencyGraph

from .._checks import assert_same_state, build, check_result, model_state, output_shapes

torchvision = pytest.importorskip("torchvision")

FAULTS = [RuntimeError, KeyboardInterrupt, SystemExit]
IDS = ["error", "interrupt", "exit"]
_ORIGINAL_CALL = Dependency.__call__


class SmallResNet(nn.Module):
    """A residual stream (conv1, bn1, conv2, bn2 added to it), a downsampling block and a head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.conv3, self.bn3 = nn.Conv2d(16, 24, 3, stride=2, padding=1), nn.BatchNorm2d(24)
        self.conv4 = nn.Conv2d(24, 24, 1)
        self.fc = nn.Linear(24, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(x + self.bn2(self.conv2(x)))
        x = torch.relu(self.conv4(torch.relu(self.bn3(self.conv3(x)))))
        return self.fc(x.mean((2, 3)))


def _resnet(big: bool = False) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10) if big else SmallResNet()
    for m in model.modules():  # non-trivial BatchNorm statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval(), torch.randn(1, 3, 32, 32)


BIG = [pytest.param(False, id="small"), pytest.param(True, id="resnet18", marks=pytest.mark.slow)]


def _raise(fault: type[BaseException], where: str) -> None:
    raise fault(f"injected at {where}")


class _FailAt:
    """Wrap a method so that its ``k``-th call runs, then raises ``fault`` (the change was made)."""

    def __init__(self, original, k: int, fault: type[BaseException]):
        self.original, self.k, self.fault, self.calls = original, k, fault, 0

    def __get__(self, obj, cls=None):
        return lambda *a, **kw: self(obj, *a, **kw)

    def __call__(self, obj, *args, **kwargs):
        out = self.original(obj, *args, **kwargs)
        self.calls += 1
        if self.calls == self.k:
            _raise(self.fault, f"call {self.k}")
        return out


def _expect(fault: type[BaseException]):
    return pytest.raises(tp.DepgraphError if fault is RuntimeError else fault, match="injected")


@pytest.mark.parametrize("big", BIG)
@pytest.mark.parametrize("fault", FAULTS, ids=IDS)
def test_fault_at_every_member_of_a_group(monkeypatch, fault, big):
    model, x = _resnet(big)
    original, shapes = copy.deepcopy(model), output_shapes(model, x)
    DG = build(model, x)
    model(x).square().sum().backward()  # handlers prune .grad too: the restore must bring it back
    assert model.conv1.weight.grad is not None
    fn, idxs = tp.prune_conv_out_channels, [0, 5, 9]
    n = len(DG.get_pruning_group(model.conv1, fn, idxs))
    assert n >= (10 if big else 6)  # conv1, bn1 and every block on the residual stream
    before, version = model_state(model), DG.version
    for k in range(1, n + 1):
        monkeypatch.setattr(Dependency, "__call__", _FailAt(_ORIGINAL_CALL, k, fault))
        with _expect(fault):
            DG.get_pruning_group(model.conv1, fn, idxs).prune()
        assert_same_state(before, model_state(model))
        assert DG.pruning_history() == [] and DG.version == version
    monkeypatch.setattr(Dependency, "__call__", _ORIGINAL_CALL)
    DG.get_pruning_group(model.conv1, fn, idxs).prune()
    assert model.conv1.out_channels == (61 if big else 13)
    assert model.conv1.weight.grad.shape == model.conv1.weight.shape
    check_result(original, model, x, shapes)



@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize("fault", FAULTS, ids=IDS)
def test_fault_in_a_prune_hook(fault, when):
    model, x = _resnet()
    DG = build(model, x)
    handle = DG.register_prune_hook(lambda graph, arg: _raise(fault, when) if arg is not None else None, when=when)
    before = model_state(model)
    with _expect(fault):
        DG.get_pruning_group(model.conv3, tp.prune_conv_out_channels, [1, 2]).prune()
    assert_same_state(before, model_state(model))
    handle.remove()
    DG.get_pruning_group(model.conv3, tp.prune_conv_out_channels, [1, 2]).prune()
    assert model.conv3.out_channels == 22


def test_a_typed_error_from_a_handler_keeps_its_type(monkeypatch):
    model, x = _resnet()
    DG = build(model, x)
    before = model_state(model)

    def refuse(self, idxs):
        if self.target.name == "conv2":
            raise tp.InvalidIndicesError("the handler refuses these indices")
        return _ORIGINAL_CALL(self, idxs)

    monkeypatch.setattr(Dependency, "__call__", refuse)
    with pytest.raises(tp.InvalidIndicesError, match="the handler refuses") as info:
        DG.get_pruning_group(model.conv1, tp.prune_conv_out_channels, [3]).prune()
    assert any("restored unchanged" in note for note in info.value.__notes__)
    assert any("on conv2" in note for note in info.value.__notes__)
    assert_same_state(before, model_state(model))


def test_an_untyped_error_becomes_prune_failed_with_the_cause(monkeypatch):
    model, x = _resnet()
    DG = build(model, x)

    def broken(self, idxs):
        raise ZeroDivisionError("no")

    monkeypatch.setattr(Dependency, "__call__", broken)
    with pytest.raises(tp.PruneFailedError, match=r"failed at conv1 \(ZeroDivisionError: no\)") as info:
        DG.get_pruning_group(model.conv1, tp.prune_conv_out_channels, [3]).prune()
    assert isinstance(info.value.__cause__, ZeroDivisionError)


def test_a_failed_head_prune_restores_the_module_class(monkeypatch):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.TransformerEncoderLayer(16, 4, 32, batch_first=True)).eval()
    x = torch.randn(2, 5, 8)
    DG = build(model, x)
    from depgraph.dependency import find_module_heads

    block = find_module_heads(DG)[0]
    before = model_state(model)
    DG.register_prune_hook(lambda graph, plan: _raise(KeyboardInterrupt, "after") if plan is not None else None,
                           when="after")
    with pytest.raises(KeyboardInterrupt):
        block.group([1]).prune()
    assert type(model[1].self_attn) is nn.MultiheadAttention
    assert_same_state(before, model_state(model))


# -- a pruner step ------------------------------------------------------------------------------


def _pruner(model: nn.Module, x: torch.Tensor) -> tp.pruner.BasePruner:
    return tp.pruner.BasePruner(model, x, tp.importance.GroupMagnitudeImportance(), pruning_ratio=0.25,
                                ignored_layers=[model.fc])


@pytest.mark.parametrize("big", BIG)
@pytest.mark.parametrize("fault", FAULTS, ids=IDS)
def test_fault_at_every_group_of_a_step(monkeypatch, fault, big):
    model, x = _resnet(big)
    original, shapes = copy.deepcopy(model), output_shapes(model, x)
    pruner = _pruner(model, x)
    apply = DependencyGraph.apply_group
    counter = _FailAt(apply, 0, fault)
    monkeypatch.setattr(DependencyGraph, "apply_group", counter)
    pruner.step()
    n = counter.calls  # groups of one step
    assert n >= (8 if big else 3)
    model, x = _resnet(big)
    pruner = _pruner(model, x)
    before = model_state(model)
    for k in range(1, n + 1):
        monkeypatch.setattr(DependencyGraph, "apply_group", _FailAt(apply, k, fault))
        with _expect(fault):
            pruner.step()
        assert_same_state(before, model_state(model))
        assert pruner.DG.pruning_history() == [] and pruner.current_step == 0
    monkeypatch.setattr(DependencyGraph, "apply_group", apply)
    pruner.step()
    assert len(pruner.DG.pruning_history()) == n
    check_result(original, model, x, shapes)


# -- a history replay ---------------------------------------------------------------------------


@pytest.mark.parametrize("big", BIG)
@pytest.mark.parametrize("fault", FAULTS, ids=IDS)
def test_fault_at_every_entry_of_a_history_replay(monkeypatch, fault, big):
    model, x = _resnet(big)
    pruner = _pruner(model, x)
    pruner.step()
    history = pruner.pruning_history()
    assert len(history) >= 3
    fresh, _ = _resnet(big)
    DG = build(fresh, x)
    before = model_state(fresh)
    apply = DependencyGraph.apply_group
    for k in range(1, len(history) + 1):
        monkeypatch.setattr(DependencyGraph, "apply_group", _FailAt(apply, k, fault))
        with _expect(fault) as info:
            DG.load_pruning_history(history)
        assert_same_state(before, model_state(fresh))
        assert DG.pruning_history() == [] and DG.version == 0
        if fault is RuntimeError:
            where = f"entry {k - 1} of the pruning history"
            assert where in str(info.value) or any(where in n for n in getattr(info.value, "__notes__", ()))
    monkeypatch.setattr(DependencyGraph, "apply_group", apply)
    DG.load_pruning_history(history)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values(),
                                                 strict=True))


# -- a load --------------------------------------------------------------------------------------


class _FaultyItems(dict):
    """A dict whose ``items()`` raises after ``k`` records (a load interrupted at record ``k``)."""

    def __init__(self, data: dict, k: int, fault: type[BaseException]):
        super().__init__(data)
        self.k, self.fault, self.armed = k, fault, False  # armed once validation is over

    def items(self) -> Iterator:
        for i, kv in enumerate(super().items()):
            if self.armed and i == self.k:
                _raise(self.fault, f"record {i}")
            yield kv


@pytest.mark.parametrize("section", ["attributes", "shapes", "classes"])
@pytest.mark.parametrize("fault", FAULTS, ids=IDS)
def test_fault_at_every_record_of_a_load(monkeypatch, fault, section):
    apply = ser._apply  # validation reads the records too: fail only once they are being applied

    def armed(model, modules, state, strict):
        for v in state.values():
            if isinstance(v, _FaultyItems):
                v.armed = True
        return apply(model, modules, state, strict)

    monkeypatch.setattr(ser, "_apply", armed)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.TransformerEncoderLayer(16, 4, 32, batch_first=True),
                          nn.Linear(16, 4)).eval()
    x = torch.randn(2, 5, 8)
    DG = build(model, x)
    from depgraph.dependency import find_module_heads

    find_module_heads(DG)[0].group([0, 2]).prune()  # swaps the attention's class
    DG.get_pruning_group(model[0], tp.prune_linear_out_channels, [1, 3, 5]).prune()
    state = tp.state_dict(model)
    assert state["classes"] and len(state[section]) >= 1
    for k in range(len(state[section])):
        fresh = nn.Sequential(nn.Linear(8, 16), nn.TransformerEncoderLayer(16, 4, 32, batch_first=True),
                              nn.Linear(16, 4)).eval()
        before = model_state(fresh)
        bad = dict(state)
        bad[section] = _FaultyItems(state[section], k, fault)
        with _expect(fault):
            ser.load_state_dict(fresh, bad)
        assert_same_state(before, model_state(fresh))
    tp.load_state_dict(fresh, state)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x))


# -- soft pruning ----------------------------------------------------------------------------------


def _soft_pruner(model: nn.Module, x: torch.Tensor) -> tp.pruner.BasePruner:
    return tp.pruner.BasePruner(model, x, tp.importance.GroupMagnitudeImportance(), pruning_ratio=0.25,
                                ignored_layers=[model.fc], soft_pruning=True, iterative_steps=2)


@pytest.mark.parametrize("fault", FAULTS, ids=IDS)
def test_fault_at_every_group_of_a_soft_step(monkeypatch, fault):
    """Soft pruning zeroes in place: a fault after any group's zeroing puts every value back."""
    zero = tp.pruner.BasePruner._soft_prune
    model, x = _resnet()
    counter = _FailAt(zero, 0, fault)
    monkeypatch.setattr(tp.pruner.BasePruner, "_soft_prune", counter)
    _soft_pruner(model, x).step()
    n = counter.calls
    assert n >= 3
    model, x = _resnet()
    pruner = _soft_pruner(model, x)
    pruner.step()  # a first step, committed: the second must come back to exactly this
    model(x).square().sum().backward()
    soft_of = lambda: {name: pruner.soft_pruned_positions(m) for name, m in model.named_modules()}  # noqa: E731
    before, soft = model_state(model), soft_of()
    assert soft["conv1"]
    for k in range(1, n + 1):
        monkeypatch.setattr(tp.pruner.BasePruner, "_soft_prune", _FailAt(zero, k, fault))
        with _expect(fault):
            pruner.step()
        assert_same_state(before, model_state(model))
        assert pruner.current_step == 1 and soft_of() == soft
    monkeypatch.setattr(tp.pruner.BasePruner, "_soft_prune", zero)
    pruner.step()
    zeroed = (model.conv1.weight.flatten(1).abs().sum(1) == 0).sum().item()
    assert zeroed == len(pruner.soft_pruned_positions(model.conv1)) > len(soft["conv1"])


@pytest.mark.parametrize("fault", FAULTS, ids=IDS)
def test_fault_at_every_slice_of_a_zero_group(monkeypatch, fault):
    from depgraph.importance.channels import ChannelSlice
    from depgraph.pruner import zero_group

    model, x = _resnet()
    DG = build(model, x)
    group = DG.get_pruning_group(model.conv1, tp.prune_conv_out_channels, [0, 5, 9])
    positions = ChannelSlice.flat_positions
    counter = _FailAt(positions, 0, fault)
    monkeypatch.setattr(ChannelSlice, "flat_positions", counter)
    zero_group(group)
    n = counter.calls
    assert n >= 6  # weights and biases of conv1, bn1, conv2, bn2, and the inputs of conv2 and conv3
    model, x = _resnet()
    DG = build(model, x)
    group = DG.get_pruning_group(model.conv1, tp.prune_conv_out_channels, [0, 5, 9])
    before = model_state(model)
    for k in range(2, n + 1):  # from the 2nd slice on, earlier slices were zeroed already
        monkeypatch.setattr(ChannelSlice, "flat_positions", _FailAt(positions, k, fault))
        with _expect(fault):
            zero_group(group)
        assert_same_state(before, model_state(model))
    monkeypatch.setattr(ChannelSlice, "flat_positions", positions)
    zero_group(group)
    assert model.conv1.weight[[0, 5, 9]].abs().sum() == 0 and model.conv2.weight[:, [0, 5, 9]].abs().sum() == 0
