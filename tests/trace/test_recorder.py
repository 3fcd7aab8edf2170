"""The recorder (depgraph/trace/recorder.py): what it sees, and that it leaves nothing behind.

Tracing runs the model once under a ``TorchFunctionMode`` with module hooks.
It must work whatever the grad mode, whatever the input and output
containers, see shared modules and bare parameters, and leave the model and
torch's global state exactly as they were, also when the model raises.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import depgraph as tp

from .._checks import (
    assert_same_state,
    build,
    check_result,
    member,
    model_state,
    output_shapes,
    prune_and_verify,
)

OUT, IN = tp.prune_conv_out_channels, tp.prune_conv_in_channels


def cbr(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU())


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = cbr(3, 6), cbr(6, 6)
        self.head = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        return self.head(self.b(self.a(x)) + self.a(x))


def assert_no_trace_left(model: nn.Module) -> None:
    assert not torch._C._is_torch_function_mode_enabled()
    for name, m in model.named_modules():
        assert not m._forward_hooks and not m._forward_pre_hooks, f"hook left on {name or '<model>'}"
        assert not m._forward_hooks_with_kwargs and not m._forward_pre_hooks_with_kwargs, name
        assert not any(k.startswith("_depgraph") for k in vars(m)), name
    assert not nn.modules.module._global_forward_hooks and not nn.modules.module._global_forward_pre_hooks


# -- grad modes and frozen parameters ----------------------------------------------------------


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode", "enable_grad"])
def test_grad_modes(mode):
    model = Small().eval()
    x = torch.randn(2, 3, 5, 5)
    original = copy.deepcopy(model)
    shapes = output_shapes(model, x)
    ctx = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode, "enable_grad": torch.enable_grad}[mode]
    with ctx():
        DG = tp.DependencyGraph().build_dependency(model, x)
        group = DG.get_pruning_group(model.a[0], OUT, [1, 4])
    assert_no_trace_left(model)
    group.prune()
    check_result(original, model, x, shapes)
    assert all(not p.is_inference() for p in model.parameters())
    y = model(x)  # the pruned model still trains
    y.sum().backward()
    assert model.a[0].weight.grad.shape == model.a[0].weight.shape


def test_frozen_parameters():
    model = Small()
    for p in model.parameters():
        p.requires_grad_(False)
    prune_and_verify(model, torch.randn(2, 3, 5, 5), model.a[0], OUT, [0])
    assert all(not p.requires_grad for p in model.parameters())
    assert all(isinstance(p, nn.Parameter) for p in model.parameters())


# -- inputs and outputs ------------------------------------------------------------------------


@dataclasses.dataclass
class Prediction:
    logits: torch.Tensor
    features: dict
    extras: list


class MultiIO(nn.Module):
    """Two image inputs (a dict of kwargs with a non-tensor flag), several output containers."""

    def __init__(self, returns: str):
        super().__init__()
        self.returns = returns
        self.rgb, self.depth = cbr(3, 6), cbr(1, 6)
        self.fuse = nn.Conv2d(6, 8, 1)
        self.cls = nn.Linear(8, 4)
        self.seg = nn.Conv2d(8, 2, 1)

    def forward(self, rgb, depth=None, scale: float = 1.0):
        f = F.relu(self.fuse(self.rgb(rgb) + self.depth(depth) * scale))
        logits, seg = self.cls(f.mean((2, 3))), self.seg(f)
        if self.returns == "tensor":
            return logits
        if self.returns == "tuple":
            return logits, (seg, f.sum(1))
        if self.returns == "list":
            return [logits, seg]
        if self.returns == "dict":
            return {"logits": logits, "aux": {"seg": seg}, "n": 3}
        return Prediction(logits, {"seg": seg}, [seg.amax(1)])


INPUTS = {
    "tensor": lambda: torch.randn(2, 3, 4, 4),
    "tuple": lambda: (torch.randn(2, 3, 4, 4), torch.randn(2, 1, 4, 4)),
    "dict": lambda: {"rgb": torch.randn(2, 3, 4, 4), "depth": torch.randn(2, 1, 4, 4), "scale": 0.5},
}


@pytest.mark.parametrize("returns", ["tensor", "tuple", "list", "dict", "dataclass"])
@pytest.mark.parametrize("inputs", ["tuple", "dict"])
def test_input_and_output_containers(inputs, returns):
    model = MultiIO(returns)
    done = prune_and_verify(model, INPUTS[inputs](), model.rgb[0], OUT, [0, 5])
    assert member(done.groups[0], model.depth[0], out=True) == [0, 5]
    assert member(done.groups[0], model.fuse, out=False) == [0, 5]
    model = MultiIO(returns)
    done = prune_and_verify(model, INPUTS[inputs](), model.fuse, OUT, [3])
    assert member(done.groups[0], model.cls, out=False) == [3]
    assert member(done.groups[0], model.seg, out=False) == [3]


def test_single_tensor_input():
    model = Small()
    prune_and_verify(model, INPUTS["tensor"](), model.b[0], OUT, [2])


def test_forward_fn_and_output_transform():
    model = MultiIO("dict")
    x = INPUTS["tuple"]()

    def forward_fn(m, inputs):
        return m(inputs[0], depth=inputs[1])

    DG = build(model, x, forward_fn=forward_fn, output_transform=lambda out: out["logits"])
    # seg is no longer an output: its output channels may go
    group = DG.get_pruning_group(model.seg, OUT, [0])
    assert DG.check_pruning_group(group)
    model = MultiIO("tensor")
    prune_and_verify(model, x, model.fuse, OUT, [1], forward_fn=forward_fn)


def test_model_outputs_are_frozen_for_get_all_groups():
    model = MultiIO("tuple")
    DG = build(model, INPUTS["tuple"]())
    roots = {g[0].dep.target.module for g in DG.get_all_groups(root_module_types=(torch.nn.Conv2d, torch.nn.Linear))}
    assert model.cls not in roots and model.seg not in roots
    for layer, fn in ((model.cls, tp.prune_linear_out_channels), (model.seg, OUT)):
        group = DG.get_pruning_group(layer, fn, [0])  # an explicit request may prune an output
        assert DG.check_pruning_group(group) and not group.blocked_by


def test_no_tensor_output_is_an_error():
    class Nothing(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 1)

        def forward(self, x):
            self.conv(x)
            return {"status": "ok"}

    model = Nothing()
    with pytest.raises(tp.TraceError, match="returned no tensor; pass output_transform="):
        build(model, torch.randn(1, 3, 2, 2))
    assert_no_trace_left(model)


# -- values used twice, modules called twice, bare parameters ------------------------------------


def test_same_tensor_used_twice():
    class Square(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.head = nn.Conv2d(3, 6, 1), nn.Conv2d(6, 2, 1)

        def forward(self, x):
            y = self.a(x)
            return self.head(y * y + torch.add(y, y))

    model = Square()
    done = prune_and_verify(model, torch.randn(2, 3, 4, 4), model.a, OUT, [1, 2])
    assert member(done.groups[0], model.head, out=False) == [1, 2]


class Shared(nn.Module):
    """One block applied twice in sequence and once more to a second branch."""

    def __init__(self):
        super().__init__()
        self.stem, self.other = nn.Conv2d(3, 6, 1), nn.Conv2d(3, 6, 1)
        self.block = cbr(6, 6)
        self.head = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        return self.head(self.block(self.block(self.stem(x))) + self.block(self.other(x)))


def test_module_called_several_times_is_one_node():
    model = Shared()
    x = torch.randn(2, 3, 4, 4)
    DG = build(model, x)
    assert model.block[0] in DG.module2node and DG.trace.module_calls[model.block[0]].__len__() == 3
    assert sum(1 for m in DG.module2node if m is model.block[0]) == 1
    done = prune_and_verify(model, x, model.stem, OUT, [4])
    group = done.groups[0]
    assert {"stem", "other", "block.0", "block.1", "head"} <= {dep.target.name for dep, _ in group}
    assert member(group, model.block[0], out=True) == [4] and member(group, model.block[0], out=False) == [4]
    assert model.block[0].weight.shape == (5, 5, 3, 3)


class Tokens(nn.Module):
    """A ViT-like net using parameters directly: a cls token, position embeddings, a layer scale."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(4, 8)
        self.cls_token = nn.Parameter(torch.randn(1, 1, 8))
        self.pos = nn.Parameter(torch.randn(1, 6, 8))
        self.gamma = nn.Parameter(torch.rand(8))
        self.register_buffer("shift", torch.randn(8))
        self.fc = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):  # (B, 5, 4)
        t = self.embed(x)
        t = torch.cat([self.cls_token.expand(t.shape[0], -1, -1), t], dim=1) + self.pos
        t = t + self.gamma * self.fc(t) - self.shift
        return self.head(t[:, 0])


def test_parameters_used_directly_are_pruned_with_the_channels():
    model = Tokens()
    done = prune_and_verify(model, torch.randn(2, 5, 4), model.embed, tp.prune_linear_out_channels, [2, 5])
    group = done.groups[0]
    assert {"cls_token", "pos", "gamma", "shift", "fc", "head"} <= {dep.target.name for dep, _ in group}
    assert member(group, model.pos) == [2, 5]
    assert model.cls_token.shape == (1, 1, 6) and model.pos.shape == (1, 6, 6)
    assert model.gamma.shape == (6,) and model.shift.shape == (6,)
    assert isinstance(model.gamma, nn.Parameter) and "shift" in dict(model.named_buffers())


def test_parameter_dims_that_are_not_channels_stay():
    """The token axis of ``pos`` is tied to the input length: it is frozen, not a group."""
    model = Tokens()
    DG = build(model, torch.randn(2, 5, 4))
    dims = {dep.pruning_dim for g in DG.get_all_groups() for dep, _ in g if dep.target.module is model.pos}
    assert dims == {2}


# -- nothing left behind -----------------------------------------------------------------------


class Boom(nn.Module):
    def __init__(self, where: str):
        super().__init__()
        self.where = where
        self.a = cbr(3, 4)
        self.b = nn.Conv2d(5, 2, 1)

    def forward(self, x):
        y = self.a(x)
        if self.where == "forward":
            raise ValueError("boom")
        return self.b(y)  # 4 channels into a conv expecting 5


@pytest.mark.parametrize("where", ["forward", "leaf"])
def test_a_failing_model_leaves_nothing_behind(where):
    model = Boom(where).train()
    before = model_state(model)
    with pytest.raises(tp.TraceError, match="the model failed on the example inputs") as info:
        build(model, torch.randn(2, 3, 4, 4))
    assert isinstance(info.value.__cause__, (ValueError, RuntimeError))
    assert ("ValueError: boom" in str(info.value)) == (where == "forward")
    assert_no_trace_left(model)
    assert_same_state(before, model_state(model))


def test_success_leaves_nothing_behind():
    model = Small()
    build(model, torch.randn(2, 3, 4, 4))
    assert_no_trace_left(model)


def test_user_hooks_survive_and_still_fire():
    model = Small()
    calls = []
    handle = model.b.register_forward_hook(lambda m, i, o: calls.append(o.shape))
    build(model, torch.randn(2, 3, 4, 4))
    assert len(calls) == 1 and len(model.b._forward_hooks) == 1
    handle.remove()


def test_trace_does_not_change_batchnorm_statistics():
    model = Small().train()
    with torch.no_grad():
        model(torch.randn(4, 3, 5, 5))  # non-trivial running stats
    before = model_state(model)
    build(model, torch.randn(4, 3, 5, 5) * 10 + 3)
    assert model.training and model.a[1].training
    assert_same_state(before, model_state(model))


def test_dropout_in_train_mode_is_traced():
    model = nn.Sequential(nn.Conv2d(3, 6, 1), nn.Dropout2d(0.5), nn.ReLU(), nn.Conv2d(6, 2, 1)).train()
    DG = build(model, torch.randn(2, 3, 4, 4))
    assert DG.check_pruning_group(DG.get_pruning_group(model[0], OUT, [1]))
