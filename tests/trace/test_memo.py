"""Trace reuse (depgraph/trace/memo.py): a second trace of the same, unchanged model on the same inputs
is the first one's copy, without a forward pass; any change traces afresh; the model is never kept alive
and never carries anything.

Markers:
    zoo   torchvision / timm / transformers models (random weights, offline).
"""

from __future__ import annotations

import copy
import gc
import io
import pickle
import weakref

import pytest
import torch
import torch.nn as nn
import torchvision

import depgraph as tp
from depgraph.trace import memo, recorder

from .._checks import count_calls

pytestmark = pytest.mark.zoo

X = torch.randn(1, 3, 32, 32)
ROOTS = (nn.Conv2d, nn.Linear)


@pytest.fixture(autouse=True)
def _empty_store():
    memo.clear()
    yield
    memo.clear()


def _resnet() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).eval()


def _records(monkeypatch) -> list:
    """Calls of the recorder proper (one per forward-pass trace)."""
    return count_calls(monkeypatch, recorder, "_record")


def _build(model, inputs, **kwargs):
    return tp.DependencyGraph().build_dependency(model, inputs, verbose=False, **kwargs)


def _describe(trace) -> list:
    """Everything a graph is built from, as plain data (objects by identity)."""
    ops = [(op.name, op.scope, repr(op.args), repr(op.kwargs), [v.id for v in op.inputs],
            [(v.id, v.shape, v.kind) for v in op.outputs], id(op.target) if op.is_module else op.name)
           for op in trace.ops]
    params = sorted((k, v.qualname, id(v.owner), id(v.tensor_ref)) for k, v in trace.params.items())
    return [ops, params, [(v.id, v.shape, v.kind) for v in trace.values], [v.id for v in trace.inputs],
            [v.id for v in trace.outputs], {id(m): n for m, n in trace.module_names.items()},
            {id(m): [o.id for o in ops_] for m, ops_ in trace.module_calls.items()}]


# ---------------------------------------------------------------- reuse, and what it gives

def test_second_build_on_the_same_model_reuses_the_trace(monkeypatch):
    model = _resnet()
    calls = _records(monkeypatch)
    first = _build(model, X)
    second = _build(model, X)
    assert len(calls) == 1
    assert second.trace is not first.trace  # a fresh copy: a builder writing into it touches no other graph
    assert second.trace.ops[0] is not first.trace.ops[0]
    assert _describe(second.trace) == _describe(first.trace)
    # module and parameter objects are the model's own, not copies
    assert all(op.target is first.trace.ops[i].target for i, op in enumerate(second.trace.ops) if op.is_module)


def test_pruner_after_a_graph_reuses_its_trace_and_prunes_bit_identically(monkeypatch):
    """The benchmark's sequence (graph, groups, drop the graph, pruner, step) against a fresh trace."""
    model, fresh_model = _resnet(), _resnet()
    original = copy.deepcopy(model)
    kwargs = dict(pruning_ratio=0.5, ignored_layers=[model.fc])
    calls = _records(monkeypatch)
    dg = _build(model, X)
    n_groups = len(list(dg.get_all_groups(root_module_types=ROOTS)))
    del dg
    pruner = tp.pruner.BasePruner(model, X, tp.importance.GroupMagnitudeImportance(p=2), **kwargs)
    assert len(calls) == 1
    memo.clear()
    fresh = tp.pruner.BasePruner(fresh_model, X, tp.importance.GroupMagnitudeImportance(p=2),
                                 **{**kwargs, "ignored_layers": [fresh_model.fc]})
    assert len(calls) == 2 and n_groups > 5
    pruner.step()
    fresh.step()
    reused_sd, fresh_sd = model.state_dict(), fresh_model.state_dict()
    assert reused_sd.keys() == fresh_sd.keys()
    assert all(torch.equal(reused_sd[k], fresh_sd[k]) for k in reused_sd)
    assert model.layer1[0].conv1.weight.shape[0] < 64
    assert tp.verify(original, model, X).exact


def test_timm_vit_reuses_and_prunes_like_a_fresh_trace(monkeypatch):
    timm = pytest.importorskip("timm")

    def vit():
        torch.manual_seed(0)
        return timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=2, img_size=32, num_classes=5).eval()

    x = torch.randn(1, 3, 32, 32)
    model, fresh_model = vit(), vit()
    original = copy.deepcopy(model)
    calls = _records(monkeypatch)
    _build(model, x)
    kwargs = dict(pruning_ratio=0.25, prune_num_heads=True, head_pruning_ratio=0.34)
    pruner = tp.pruner.BasePruner(model, x, tp.importance.GroupMagnitudeImportance(p=2),
                                  ignored_layers=[model.head], **kwargs)
    assert len(calls) == 1
    memo.clear()
    fresh = tp.pruner.BasePruner(fresh_model, x, tp.importance.GroupMagnitudeImportance(p=2),
                                 ignored_layers=[fresh_model.head], **kwargs)
    pruner.step()
    fresh.step()
    result = tp.verify(original, model, x)  # the hidden size shrinks under LayerNorm: not exact, shapes checked
    assert result.shapes_match and not result.applies
    got, want = model.state_dict(), fresh_model.state_dict()
    assert {k: v.shape for k, v in got.items()} == {k: v.shape for k, v in want.items()}
    assert all(torch.equal(got[k], want[k]) for k in got)
    assert got["blocks.0.mlp.fc1.weight"].shape[0] < 768


def test_transformers_llama_reuses_and_prunes_like_a_fresh_trace(monkeypatch):
    pytest.importorskip("transformers")
    from tests.integrations._hf import FAMILIES

    fam = FAMILIES["llama"]
    model, fresh_model = fam.build(), fam.build()
    inputs = fam.example_inputs()
    original = copy.deepcopy(model)
    calls = _records(monkeypatch)

    def pruner_of(m):
        return tp.pruner.BasePruner(m, inputs, tp.importance.GroupMagnitudeImportance(p=2), pruning_ratio=0.5,
                                    ignored_layers=[m.get_input_embeddings(), m.get_output_embeddings()])

    _build(model, inputs)
    pruner = pruner_of(model)
    assert len(calls) == 1
    memo.clear()
    fresh = pruner_of(fresh_model)
    pruner.step()
    fresh.step()
    got, want = model.state_dict(), fresh_model.state_dict()
    assert all(torch.equal(got[k], want[k]) for k in got) and got.keys() == want.keys()
    assert model.model.layers[0].mlp.gate_proj.out_features == 24
    assert tp.verify(original, model, inputs).exact


# ---------------------------------------------------------------- any change traces afresh

def _edit_weight(m):
    with torch.no_grad():
        m.layer1[0].conv1.weight[0, 0, 0, 0] += 1.0


def _prune_a_layer(m):
    tp.prune_conv_out_channels(m.layer1[0].conv1, [0])
    tp.prune_batchnorm_out_channels(m.layer1[0].bn1, [0])
    tp.prune_conv_in_channels(m.layer1[0].conv2, [0])


def _set_attribute(m):
    m.bn1.eps = 1e-3


def _set_flag(m):
    m.maxpool.ceil_mode = True


def _train(m):
    m.train()


def _replace_weight(m):
    m.fc.weight = nn.Parameter(m.fc.weight.detach().clone())


def _edit_buffer(m):
    m.bn1.running_mean.add_(1.0)


def _add_hook(m):
    m.layer2.register_forward_hook(lambda mod, args, out: out)


def _swap_layer(m):
    m.relu = nn.ReLU6()


@pytest.mark.parametrize("change", [_edit_weight, _prune_a_layer, _set_attribute, _set_flag, _train, _replace_weight,
                                    _edit_buffer, _add_hook, _swap_layer])
def test_a_changed_model_is_traced_afresh(monkeypatch, change):
    model = _resnet()
    calls = _records(monkeypatch)
    _build(model, X)
    change(model)
    second = _build(model, X)
    assert len(calls) == 2
    memo.clear()
    assert _describe(second.trace) == _describe(_build(model, X).trace)  # what a fresh trace records


def test_a_changed_input_is_traced_afresh(monkeypatch):
    model = _resnet()
    x = X.clone()
    calls = _records(monkeypatch)
    _build(model, x)
    x.add_(1.0)  # same tensor, new contents (the version counter moves)
    _build(model, x)
    _build(model, x.clone())  # equal contents, another tensor
    _build(model, torch.randn(1, 3, 40, 40))
    assert len(calls) == 4


def test_other_forward_fn_output_transform_or_grad_mode_trace_afresh(monkeypatch):
    model = _resnet()
    calls = _records(monkeypatch)
    _build(model, X)
    _build(model, X, forward_fn=lambda m, x: m(x))
    _build(model, X, output_transform=lambda out: out)
    with torch.no_grad():
        _build(model, X)
    assert len(calls) == 4
    _build(model, X)  # the same call as the first: the newest record (no_grad) differs
    assert len(calls) == 5


class Gated(nn.Module):
    """Takes one of two branches on an int attribute: a different trace, the same modules."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.mode = 0

    def forward(self, x):
        y = self.a(x)
        return self.b(y) if self.mode == 0 else torch.cat([y, self.b(y)], 1)


def test_an_attribute_that_picks_a_branch_gives_the_new_branch():
    model = Gated().eval()
    x = torch.randn(1, 3, 8, 8)
    assert not any(op.name == "torch.cat" for op in _build(model, x).trace.ops)
    model.mode = 1
    assert any(op.name == "torch.cat" for op in _build(model, x).trace.ops)


class Custom(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = nn.Conv2d(3, 8, 3)

    def forward(self, x):
        return self.inner(x).relu()


class CustomPruner(tp.BasePruningFunc):
    def prune_out_channels(self, layer, idxs):
        tp.prune_conv_out_channels(layer.inner, idxs)
        return layer

    def prune_in_channels(self, layer, idxs):
        return layer

    def get_out_channels(self, layer):
        return layer.inner.out_channels

    def get_in_channels(self, layer):
        return layer.inner.in_channels


def test_customized_pruners_change_the_leaves_and_trace_afresh(monkeypatch):
    model = nn.Sequential(Custom(), nn.Conv2d(8, 4, 1)).eval()
    x = torch.randn(1, 3, 8, 8)
    calls = _records(monkeypatch)
    plain = _build(model, x)
    custom = _build(model, x, customized_pruners={Custom: CustomPruner()})
    assert len(calls) == 2
    assert model[0] not in plain.trace.module_calls and model[0] in custom.trace.module_calls
    _build(model, x, customized_pruners={Custom: CustomPruner()}, ignored_layers=[model[1]])  # same leaves
    assert len(calls) == 2


def test_inference_tensors_and_kept_tensors_are_never_reused(monkeypatch):
    from tests.trace.test_side_effects import KeepsSkip

    calls = _records(monkeypatch)
    model = _resnet()
    with torch.inference_mode():  # an inference tensor has no version counter: its edits cannot be seen
        x = torch.randn(1, 3, 32, 32)
        _build(model, x)
        _build(model, x)
    keeps = KeepsSkip().eval()
    _build(keeps, torch.randn(1, 3, 8, 8))
    assert id(keeps) not in memo._store
    assert len(calls) == 3


# ---------------------------------------------------------------- the model is the user's alone

def test_the_store_never_keeps_a_model_alive():
    model = _resnet()
    ref = weakref.ref(model)
    dg = _build(model, X)
    assert id(model) in memo._store
    del model, dg
    gc.collect()
    assert ref() is None
    assert not memo._store


def test_a_model_without_a_graph_is_freed_without_the_cycle_collector():
    model = _resnet()
    ref = weakref.ref(model)
    params = weakref.ref(model.fc.weight)
    tp.DependencyGraph().build_dependency(model, X, verbose=False)  # graph dropped at once
    gc.collect()
    del model  # reference counting alone: nothing of depgraph holds the model
    assert ref() is None and params() is None
    assert not memo._store


def _saved(model) -> bytes:
    buf = io.BytesIO()
    torch.save(model, buf)
    return buf.getvalue()


def test_save_deepcopy_state_dict_and_repr_see_the_model_as_before():
    model = _resnet()
    before = (_saved(model), repr(model), {k: v.clone() for k, v in model.state_dict().items()},
              sorted(vars(model)), pickle.dumps(model.layer1[0].conv1))
    _build(model, X)
    assert id(model) in memo._store
    assert _saved(model) == before[0]
    assert repr(model) == before[1]
    sd = model.state_dict()
    assert sd.keys() == before[2].keys() and all(torch.equal(sd[k], before[2][k]) for k in sd)
    assert sorted(vars(model)) == before[3]
    assert pickle.dumps(model.layer1[0].conv1) == before[4]
    twin = copy.deepcopy(model)
    assert sorted(vars(twin)) == before[3]
    assert id(twin) not in memo._store
    loaded = torch.load(io.BytesIO(_saved(model)), weights_only=False)
    assert torch.equal(loaded(X), model(X))


def test_forget_drops_the_stored_trace(monkeypatch):
    model = _resnet()
    calls = _records(monkeypatch)
    _build(model, X)
    memo.forget(model)
    _build(model, X)
    assert len(calls) == 2


def test_the_store_holds_a_few_models_at_most():
    models = [nn.Sequential(nn.Conv2d(3, 4, 1)).eval() for _ in range(memo._MAX_MODELS + 2)]
    for m in models:
        _build(m, X)
    assert len(memo._store) == memo._MAX_MODELS
    assert id(models[-1]) in memo._store and id(models[0]) not in memo._store


class StoresSizes(nn.Module):
    """HF Swin style: sizes read from the input are stored on ``self`` by every call."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.window = 4
        self.seen_shape = None
        self.sizes = []

    def forward(self, x):
        self.window = min(self.window, x.shape[-1])
        self.seen_shape = x.shape
        self.sizes[:] = [x.shape[-2], x.shape[-1]]
        y = self.conv(x)
        return y.view(y.shape[0], y.shape[1], -1, self.window).mean(-1)


def test_sizes_the_forward_stores_on_the_model_are_plain_ints_after_a_trace(monkeypatch):
    model = StoresSizes().eval()
    x = torch.randn(1, 3, 8, 8)
    calls = _records(monkeypatch)
    first = _build(model, x)
    assert type(model.window) is int and model.window == 4
    assert type(model.seen_shape) is torch.Size and all(type(n) is int for n in model.seen_shape)
    assert all(type(n) is int for n in model.sizes) and model.sizes == [8, 8]
    assert b"depgraph" not in pickle.dumps(model)  # loads where depgraph is not installed
    second = _build(model, x)  # the first call filled seen_shape and sizes: the key changed
    third = _build(model, x)  # now every call leaves the model as it found it: reused
    assert len(calls) == 2
    assert _describe(third.trace) == _describe(second.trace) == _describe(first.trace)


def test_a_forward_fn_reading_changed_state_traces_afresh():
    model = _resnet()
    state = {"twice": False}

    def forward_fn(m, inputs):
        out = m(inputs)
        return out * 2 if state["twice"] else out

    assert not any(op.name == "Tensor.mul" for op in _build(model, X, forward_fn=forward_fn).trace.ops)
    state["twice"] = True
    assert any(op.name == "Tensor.mul" for op in _build(model, X, forward_fn=forward_fn).trace.ops)


def test_after_a_rolled_back_step_a_new_pruner_prunes_like_one_on_a_fresh_model(monkeypatch):
    """A failed step restores the model exactly (its tensors and their version counters, so the next
    trace may be reused); either way the new pruner prunes as one on an untouched model does."""
    model, fresh_model = _resnet(), _resnet()
    apply = tp.DependencyGraph.apply_group
    calls = {"n": 0}

    def fails_third(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("injected fault")
        return apply(self, *args, **kwargs)

    def pruner_of(m):
        return tp.pruner.BasePruner(m, X, tp.importance.GroupMagnitudeImportance(p=2), pruning_ratio=0.5,
                                    ignored_layers=[m.fc])

    before = {k: v.clone() for k, v in model.state_dict().items()}
    first = pruner_of(model)
    monkeypatch.setattr(tp.DependencyGraph, "apply_group", fails_third)
    with pytest.raises(RuntimeError, match="injected fault"):
        first.step()
    monkeypatch.setattr(tp.DependencyGraph, "apply_group", apply)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    again = pruner_of(model)
    fresh = pruner_of(fresh_model)
    again.step()
    fresh.step()
    got, want = model.state_dict(), fresh_model.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)
    assert model.layer1[0].conv1.out_channels == 32
