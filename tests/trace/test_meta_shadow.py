"""Tracing on a meta shadow of the model (depgraph/trace/meta_shadow.py): the same trace as a real
forward, the same pruned model, and a real forward whenever that cannot be certain.

Markers:
    zoo   real architectures (torchvision, timm, transformers; random weights, offline).
    slow  the zoo-wide equivalence (every torchvision classifier, more timm and HF models).

Equivalence: for each model the meta trace is compared with the real one (``DEPGRAPH_TRACE_ON_META=0``)
through ``describe`` - op targets, arguments with every traced int's origin, value shapes, kinds
and producers, parameters by qualified name and real tensor, inputs, outputs, module calls - and a
``BasePruner`` step on each gives bit-identical state dicts. Fallbacks: each reason the shadow is
refused or abandoned leaves the model bit-identical (state dict, every module attribute, tensor
version counters), and the trace is the real forward's.
"""

from __future__ import annotations

import copy
import types
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

import depgraph as tp
from depgraph.trace import memo, meta_shadow

from .._checks import _bits, assert_same_state, model_state
from ._equivalence import describe, first_difference, meta_tracing, record

pytestmark = pytest.mark.zoo


def _versions(model: nn.Module) -> list[int]:
    return [t._version for t in list(model.parameters()) + list(model.buffers())]


def _state_bits(model: nn.Module) -> dict:
    return {k: _bits(v) for k, v in model.state_dict().items()}


def assert_same_trace(model: nn.Module, example_inputs, on_meta: bool, why: str = "", **kwargs) -> None:
    """The trace taken with the shadow allowed is the real forward's, structurally; the model is unchanged.

    ``on_meta``: whether the shadow must have been used; ``why``: a part of the reason it was not.
    """
    before, versions = model_state(model), _versions(model)
    meta = record(model, example_inputs, True, **kwargs)
    assert_same_state(before, model_state(model))
    assert _versions(model) == versions
    assert meta.on_meta is on_meta, meta.why_real
    assert why in meta.why_real
    real = record(model, example_inputs, False, **kwargs)
    assert not real.on_meta
    a, b = describe(meta), describe(real)
    assert a == b, first_difference(a, b)


def assert_same_prune(build, example_inputs, ratio: float = 0.3, **pruner_kwargs) -> nn.Module:
    """``BasePruner`` on the meta trace and on the real one: bit-identical state dicts; returns the first."""
    models = []
    for on in (True, False):
        model = build()
        with meta_tracing(on), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pruner = tp.pruner.BasePruner(model, example_inputs, tp.importance.GroupMagnitudeImportance(),
                                          pruning_ratio=ratio, **pruner_kwargs)
            assert pruner.DG.trace.on_meta is on, pruner.DG.trace.why_real
            pruner.step()
        models.append(model)
    meta, real = models
    assert sum(p.numel() for p in meta.parameters()) < sum(p.numel() for p in build().parameters())
    assert _state_bits(meta) == _state_bits(real)
    return meta


# ---------------------------------------------------------------- real architectures


def _tv(name: str, size: int = 64):
    def build():
        torch.manual_seed(0)
        return torchvision.models.get_model(name, weights=None).eval()
    return build, torch.randn(1, 3, size, size)


def _timm(name: str, size: int, **kwargs):
    timm = pytest.importorskip("timm")

    def build():
        torch.manual_seed(0)
        return timm.create_model(name, pretrained=False, num_classes=10, **kwargs).eval()
    return build, torch.randn(1, 3, size, size)


def _hf(family: str):
    pytest.importorskip("transformers")
    from tests.integrations._hf import FAMILIES

    fam = FAMILIES[family]
    return fam.build, fam.example_inputs()


FAST = {
    "resnet18": lambda: _tv("resnet18"),
    "vit_b_16": lambda: _tv("vit_b_16", 224),
    "mobilenet_v3_small": lambda: _tv("mobilenet_v3_small"),
    "timm-vit_tiny": lambda: _timm("vit_tiny_patch16_224", 32, img_size=32, depth=2),
    "timm-convnext_atto": lambda: _timm("convnext_atto", 64, depths=(1, 1, 1, 1), dims=(16, 32, 48, 64)),
    "timm-swin": lambda: _timm("swin_tiny_patch4_window7_224", 32, img_size=32, depths=(1, 1), num_heads=(2, 4),
                               embed_dim=32, window_size=4),
    "timm-efficientnet_b0": lambda: _timm("efficientnet_b0", 64),
    "hf-llama": lambda: _hf("llama"),  # GQA + RoPE
    "hf-gpt2": lambda: _hf("gpt2"),
    "hf-bert": lambda: _hf("bert"),
    "hf-t5": lambda: _hf("t5"),
}


@pytest.mark.parametrize("name", list(FAST))
def test_meta_trace_equals_the_real_trace_and_prunes_bit_identically(name: str) -> None:
    build, x = FAST[name]()
    assert_same_trace(build(), x, on_meta=True)
    assert_same_prune(build, x)


def assert_falls_back(make, example_inputs, why: str, **kwargs) -> None:
    """The shadowed call is abandoned (``why``) leaving a fresh ``make()`` bit-identical, generators
    included; the trace is then the real forward's."""
    from depgraph.trace import recorder

    model = make()
    before, versions, rng = model_state(model), _versions(model), torch.get_rng_state()
    leaves = {m: bool(tp.DependencyGraph()._is_leaf(m)) for m in model.modules()}
    with meta_tracing(True):
        trace, why_real = recorder._record_on_meta(model, example_inputs, leaves, kwargs.get("forward_fn"),
                                                   kwargs.get("output_transform"))
    assert trace is None and why in why_real, why_real
    assert_same_state(before, model_state(model))
    assert _versions(model) == versions and torch.equal(torch.get_rng_state(), rng)
    meta = record(make(), example_inputs, True, **kwargs)
    assert not meta.on_meta and why in meta.why_real
    a, b = describe(meta, same_model=False), describe(record(make(), example_inputs, False, **kwargs), False)
    assert a == b, first_difference(a, b)


def test_levit_fills_its_attention_bias_cache_so_it_traces_for_real() -> None:
    build, x = _timm("levit_128s", 64, img_size=64)
    assert_falls_back(build, x, "attention_bias_cache changed")
    assert record(build(), x, True).kept  # the real trace finds the cache, as before


def test_heavy_models_take_the_shadow_by_default_and_light_ones_do_not() -> None:
    """``auto`` (no environment variable): ResNet-50-sized layers gain, tiny ones would lose."""
    heavy, x = _tv("resnet18")
    light, y = _tv("mobilenet_v3_small")
    with meta_tracing(None):
        DG = tp.DependencyGraph().build_dependency(heavy(), x)
        assert DG.trace.on_meta
        DG = tp.DependencyGraph().build_dependency(light(), y)
        assert not DG.trace.on_meta and "weight elements on average" in DG.trace.why_real


def test_shadowed_build_is_reused_by_the_pruner_and_leaves_versions_alone(monkeypatch) -> None:
    from depgraph.trace import recorder

    from .._checks import count_calls

    build, x = _tv("resnet18")
    model = build()
    versions, state = _versions(model), _state_bits(model)
    calls = count_calls(monkeypatch, recorder, "_record")
    with meta_tracing(True):
        DG = tp.DependencyGraph().build_dependency(model, x)
        pruner = tp.pruner.BasePruner(model, x, tp.importance.GroupMagnitudeImportance(), pruning_ratio=0.3)
        assert len(calls) == 1 and DG.trace.on_meta and pruner.DG.trace.on_meta
        assert _versions(model) == versions and _state_bits(model) == state
        # every parameter value names the real tensor, keyed by it
        params = dict(model.named_parameters())
        assert {v.qualname: v.tensor_ref for v in DG.trace.params.values() if v.qualname in params} == \
            {k: p for k, p in params.items() if any(v.qualname == k for v in DG.trace.params.values())}
        assert all(k == id(v.tensor_ref) and v.tensor_ref.device.type == "cpu" for k, v in DG.trace.params.items())
        pruner.step()
    result = tp.verify(build(), model, x)
    assert result.ok and result.shapes_match, str(result)


class Tied(nn.Module):
    """An embedding and an output projection sharing one weight."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 16)
        self.mid = nn.Linear(16, 16)
        self.out = nn.Linear(16, 50, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, ids):
        h = torch.relu(self.mid(self.emb(ids)))
        return F.linear(h, self.out.weight)  # the shared weight used directly: a parameter value


def test_tied_weights_are_one_meta_tensor() -> None:
    ids = torch.randint(0, 50, (2, 5))
    model = Tied().eval()
    assert_same_trace(model, ids, on_meta=True)
    trace = record(model, ids, True)
    tied = [v for v in trace.params.values() if v.tensor_ref is model.emb.weight]
    assert len(tied) == 1 and tied[0].qualname == "emb.weight"


def test_forward_fn_and_output_transform_get_meta_tensors() -> None:
    build, inputs = _hf("llama")

    def forward_fn(m, batch):
        return m(input_ids=batch["input_ids"])

    assert_same_trace(build(), inputs, on_meta=True, forward_fn=forward_fn,
                      output_transform=lambda out: out.logits)


# ---------------------------------------------------------------- fallbacks


class Net(nn.Module):
    """A small conv net whose ``tail`` hook the cases below fill in."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def tail(self, y: torch.Tensor) -> torch.Tensor:
        return y

    def forward(self, x):
        y = self.tail(F.relu(self.conv(x)))
        return self.fc(y.mean((2, 3)))


class MaskSelect(Net):
    def tail(self, y):
        return y * (y[y > 0].numel() > 0)  # boolean mask: data-dependent size


class Item(Net):
    def tail(self, y):
        return y if y.mean().item() > -1 else -y


class FillsCache(Net):
    def __init__(self):
        super().__init__()
        self.cache: dict[str, torch.Tensor] = {}

    def tail(self, y):
        key = str(y.device)
        if key not in self.cache:
            self.cache[key] = self.conv.bias.view(1, -1, 1, 1) * 2
        return y + self.cache[key]


class LazyBuffer(Net):
    def tail(self, y):
        if "table" not in self._buffers:
            self.register_buffer("table", torch.ones(1, 8, 1, 1, device=y.device), persistent=False)
        return y * self.table


class CpuConstant(Net):
    def tail(self, y):
        return y + torch.arange(8.0).view(1, 8, 1, 1)  # made on the CPU whatever y is


class ConstantAttribute(Net):
    def __init__(self):
        super().__init__()
        self.offset = torch.arange(8.0).view(1, 8, 1, 1)  # a tensor, but not a buffer

    def tail(self, y):
        return y + self.offset


class Noisy(Net):
    def tail(self, y):
        return y + torch.randn_like(y)  # draws even in eval mode


class AliasesAParameter(Net):
    def __init__(self):
        super().__init__()
        self.refs = {"scale": self.conv.bias}  # the real parameter, reached around the shadow

    def tail(self, y):
        return y * self.refs["scale"].detach().view(1, -1, 1, 1).sigmoid().to(y.device)


class KeepsActivation(Net):
    def tail(self, y):
        self.last = y
        return y


class CountsInItsConfig(Net):
    def __init__(self):
        super().__init__()
        self.config = types.SimpleNamespace(calls=0)  # a plain object the module holds (a HF config)

    def tail(self, y):
        self.config.calls += 1
        return y


class ChecksTiedStorage(Net):
    def tail(self, y):
        tied = self.conv.weight.data_ptr() == self.fc.weight.data_ptr()  # 0 == 0 on meta
        return -y if tied else y


FALLBACKS = {
    "storage address read": (ChecksTiedStorage, "reads Tensor.data_ptr"),
    "config attribute changed": (CountsInItsConfig, "SimpleNamespace.calls was reassigned"),
    "boolean mask": (MaskSelect, "failed (NotImplementedError"),
    "item": (Item, "failed (RuntimeError"),
    "cache filled": (FillsCache, "cache changed"),
    "lazy buffer": (LazyBuffer, "_buffers changed"),
    "cpu constant": (CpuConstant, "failed (RuntimeError"),
    "constant attribute": (ConstantAttribute, "offset holds a tensor that is not a parameter or buffer"),
    "random draw": (Noisy, "randn_like draws random numbers"),
    "parameter reached around the shadow": (AliasesAParameter, "reached around the shadow"),
    "kept activation": (KeepsActivation, "an attribute was added or removed"),
}
X = torch.randn(2, 3, 8, 8)


@pytest.mark.parametrize("case", list(FALLBACKS))
def test_fallback_traces_for_real_and_leaves_the_model_unchanged(case: str) -> None:
    cls, why = FALLBACKS[case]

    def make():
        torch.manual_seed(0)
        return cls().eval()

    assert_falls_back(make, X, why)


def test_the_same_models_without_the_fallback_reason_take_the_shadow() -> None:
    """The fallback cases above are the net below plus one thing: without it the shadow is used."""
    torch.manual_seed(0)
    assert_same_trace(Net().eval(), X, on_meta=True)


def test_fallback_restores_what_the_shadowed_call_changed(monkeypatch) -> None:
    """The real trace after an abandoned shadow sees the model as it was: the cache is empty again."""
    from depgraph.trace import recorder

    model = FillsCache().eval()
    seen = []
    real = recorder._record_real

    def spy(m, *args, **kwargs):
        seen.append(dict(m.cache))
        return real(m, *args, **kwargs)

    monkeypatch.setattr(recorder, "_record_real", spy)
    trace = record(model, X, True)
    assert seen == [{}] and not trace.on_meta
    assert list(model.cache) == ["cpu"]  # filled by the real call, as it always was


def test_random_draw_fallback_leaves_the_generator_as_a_real_trace_does() -> None:
    model = Noisy().eval()
    torch.manual_seed(3)
    record(model, X, True)
    after_meta = torch.rand(4)
    torch.manual_seed(3)
    record(model, X, False)
    assert torch.equal(after_meta, torch.rand(4))


def test_user_hooks_see_real_tensors() -> None:
    seen = []

    def make():
        torch.manual_seed(0)
        model = Net().eval()
        model.conv.register_forward_hook(lambda m, i, o: seen.append(o.device.type))
        return model

    assert_falls_back(make, X, "conv has hooks (_forward_hooks)")
    assert seen and set(seen) == {"cpu"}
    model = Net().eval()
    handle = nn.modules.module.register_module_forward_hook(lambda m, i, o: seen.append(o.device.type))
    try:
        assert "global module hook" in meta_shadow.refusal(model, X)
    finally:
        handle.remove()
    assert meta_shadow.refusal(model, X) is None or "weight elements" in meta_shadow.refusal(model, X)


def test_failing_forward_fn_or_output_transform_falls_back() -> None:
    model = Net().eval()
    assert_falls_back(lambda: model, X, "can't convert meta device type tensor to numpy",
                      forward_fn=lambda m, x: m(torch.from_numpy(x.numpy())))
    assert_falls_back(lambda: model, X, "Tensor.item() cannot be called on meta tensors",
                      output_transform=lambda out: out * out.sum().item())


def test_meta_or_non_plain_models_and_inputs_are_refused() -> None:
    with meta_tracing(True):
        model = Net().eval()
        assert meta_shadow.refusal(model, X) is None
        assert "example_inputs is a set" in meta_shadow.refusal(model, {X})
        assert "on meta" in meta_shadow.refusal(copy.deepcopy(model).to("meta"), X)
        assert "on meta" in meta_shadow.refusal(model, X.to("meta"))
        model.forward = model.forward  # replaced on the instance, as accelerate's hooks do
        assert "forward replaced" in meta_shadow.refusal(model, X)
    with meta_tracing(False):
        assert meta_shadow.refusal(Net(), X) == f"{meta_shadow.ENV_VAR}=0"


def test_keyboard_interrupt_on_the_shadow_restores_the_model() -> None:
    class Interrupted(Net):
        def tail(self, y):
            self.partial = y
            raise KeyboardInterrupt

    model = Interrupted().eval()
    before, versions = model_state(model), _versions(model)
    with pytest.raises(KeyboardInterrupt), meta_tracing(True):
        tp.DependencyGraph().build_dependency(model, X)
    assert_same_state(before, model_state(model))
    assert _versions(model) == versions
    assert all(p.device.type == "cpu" for p in model.parameters())


def test_state_dict_attributes_and_versions_unchanged_after_a_meta_trace() -> None:
    build, x = _tv("resnet18")
    model = build()
    before, versions, ids = model_state(model), _versions(model), [id(p) for p in model.parameters()]
    trace = record(model, x, True)
    assert trace.on_meta
    assert_same_state(before, model_state(model))
    assert _versions(model) == versions and [id(p) for p in model.parameters()] == ids
    memo.clear()


# ---------------------------------------------------------------- zoo-wide (slow)

TV_SKIP = {"vit_h_14", "vit_l_16", "vit_l_32", "regnet_y_128gf"}  # minutes each, nothing new
TV = [n for n in torchvision.models.list_models(module=torchvision.models) if n not in TV_SKIP]


def _tv_size(name: str) -> int:
    return 299 if name.startswith("inception") else 224 if name.startswith(("vit", "swin", "maxvit")) else 64


@pytest.mark.slow
@pytest.mark.parametrize("name", TV)
def test_zoo_torchvision(name: str) -> None:
    kwargs = {"aux_logits": False, "init_weights": False} if name in ("googlenet", "inception_v3") else {}

    def build():
        torch.manual_seed(0)
        return torchvision.models.get_model(name, weights=None, **kwargs).eval()

    x = torch.randn(1, 3, _tv_size(name), _tv_size(name))
    assert_same_trace(build(), x, on_meta=True)
    assert_same_prune(build, x, ratio=0.2)


TIMM = {
    "vit_small_patch16_224": dict(size=32, img_size=32, depth=2),
    "deit_tiny_distilled_patch16_224": dict(size=32, img_size=32, depth=2),
    "eva02_tiny_patch14_224": dict(size=28, img_size=28, depth=2),
    "swin_tiny_patch4_window7_224": dict(size=32, img_size=32, depths=(1, 1), num_heads=(2, 4), embed_dim=32,
                                         window_size=4),
    "convnext_atto": dict(size=64),
    "efficientnet_b0": dict(size=64),
    "tf_efficientnet_b0": dict(size=64),
    "resnetblur18": dict(size=64),
    "efficientvit_b0": dict(size=64),
    "mobilevit_xxs": dict(size=64),
    "coat_lite_tiny": dict(size=64, img_size=64),
    "poolformer_s12": dict(size=64),
    "regnetz_b16": dict(size=64),
    "nf_resnet26": dict(size=32),
    "beit_base_patch16_224": dict(size=32, img_size=32, depth=2),
    "samvit_base_patch16": dict(size=64, img_size=64, patch_size=8, embed_dim=64, depth=2, num_heads=4,
                                window_size=4, global_attn_indexes=(1,), neck_chans=32),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TIMM))
def test_zoo_timm(name: str) -> None:
    kwargs = dict(TIMM[name])
    build, x = _timm(name, kwargs.pop("size"), **kwargs)
    assert_same_trace(build(), x, on_meta=True)
    assert_same_prune(build, x, ratio=0.2)


HF = ["bert", "roberta", "vit", "swin", "clip_vision", "gpt2", "opt", "llama", "qwen2", "mistral", "phi3", "gemma",
      "t5"]


@pytest.mark.slow
@pytest.mark.parametrize("family", HF)
def test_zoo_transformers(family: str) -> None:
    build, x = _hf(family)
    assert_same_trace(build(), x, on_meta=True)
    assert_same_prune(build, x, ratio=0.2)
