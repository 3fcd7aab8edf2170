"""depgraph.integrations.timm: each prune syncs only the attention layers it reached.

Markers:
    zoo   timm ViTs (a few blocks, random weights, offline).

``AttentionSync`` runs after every prune. It used to measure every attention layer
of the model and scan every binding of the graph each time: ``O(L)`` per group, so
``O(L²)`` for a pruner step that prunes a few groups per block. It now looks the
layers up from the slots the prune reached. These tests hold it to the old
behaviour bit for bit (the old behaviour is the same hook syncing every layer:
``_Reach.touched`` answering "all"), to a bounded number of layer measurements per
step, and to the rollback of a failed step.
"""

from __future__ import annotations

import copy

import pytest
import torch

import depgraph as tp
import depgraph.integrations._hf_layers as layers_module
from depgraph.integrations import timm as timm_sync
from tests._checks import count_calls

timm = pytest.importorskip("timm")

pytestmark = pytest.mark.zoo


def _vit(name: str = "vit_tiny_patch16_224", depth: int = 3, fused: bool = True):
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, img_size=32, depth=depth).eval()
    for m in _attentions(model):
        m.fused_attn = fused
    return model, torch.randn(2, 3, 32, 32)


def _attentions(model):
    return [m for m in model.modules() if type(m).__name__ == "Attention"]


def _pruner(model, x, steps: int, keep_residual: bool, num_heads: bool) -> tp.pruner.BasePruner:
    ignored = [model.head] + ([model.patch_embed] if keep_residual else [])
    extra = {"num_heads": {a.qkv: a.num_heads for a in _attentions(model)}} if num_heads else {}
    return tp.pruner.BasePruner(
        model, x, tp.importance.GroupMagnitudeImportance(p=2), pruning_ratio=0.5, iterative_steps=steps,
        prune_num_heads=True, head_pruning_ratio=0.5, ignored_layers=ignored, **extra)


def _state(model) -> tuple[dict, dict]:
    """What a prune may change: the state_dict and every module's plain attributes (sizes, scale)."""
    tensors = {k: v.detach().clone() for k, v in model.state_dict().items()}
    attrs = {name: {k: v for k, v in vars(m).items() if type(v) in (int, float, bool)}
             for name, m in model.named_modules()}
    return tensors, attrs


def _assert_identical(a: tuple[dict, dict], b: tuple[dict, dict]) -> None:
    (ta, aa), (tb, ab) = a, b
    assert ta.keys() == tb.keys()
    for k in ta:
        assert ta[k].shape == tb[k].shape and torch.equal(ta[k], tb[k]), k
    assert aa == ab


def _assert_consistent(attn) -> None:
    assert attn.num_heads * attn.head_dim == attn.attn_dim == attn.proj.in_features == attn.qkv.out_features // 3
    assert attn.scale == pytest.approx(attn.head_dim ** -0.5, rel=1e-12)


def _every_layer(monkeypatch) -> None:
    """The hook as it was: every attention layer synced after every prune (a plan without state)."""
    touched = getattr(getattr(timm_sync, "_Reach", None), "touched", None)
    if touched is None:
        return
    monkeypatch.setattr(timm_sync._Reach, "touched", lambda self, plan: touched(self, None))


def _run_steps(name: str, steps: int, keep_residual: bool, num_heads: bool, fused: bool) -> list:
    model, x = _vit(name, fused=fused)
    pruner = _pruner(model, x, steps, keep_residual, num_heads)
    seen = []  # (scale, head_dim) of each attention at each forward: the step's check sees synced modules
    for a in _attentions(model):
        a.register_forward_pre_hook(lambda m, args: seen.append((m.scale, m.head_dim)))
    states = []
    for _ in range(steps):
        pruner.step()
        states.append(_state(model))
    assert seen and all(scale == pytest.approx(d ** -0.5, rel=1e-12) for scale, d in seen)
    return states, model, x, pruner


@pytest.mark.parametrize(("name", "keep_residual", "num_heads", "fused"), [
    ("vit_tiny_patch16_224", False, True, True),     # residual stream pruned too, num_heads given, fused path
    ("deit_tiny_patch16_224", True, False, False),   # heads found in the trace, explicit q * scale path
])
def test_steps_are_bit_identical_to_syncing_every_layer(monkeypatch, name, keep_residual, num_heads, fused) -> None:
    steps = 3
    reached, model, x, pruner = _run_steps(name, steps, keep_residual, num_heads, fused)
    with monkeypatch.context() as m:
        _every_layer(m)
        everything, _, _, _ = _run_steps(name, steps, keep_residual, num_heads, fused)
    for a, b in zip(reached, everything, strict=True):
        _assert_identical(a, b)

    attn = _attentions(model)[0]
    assert attn.head_dim < 64 and attn.num_heads < 3  # head dims and whole heads went
    for a in _attentions(model):
        _assert_consistent(a)
    original, _ = _vit(name, fused=fused)
    if keep_residual and not fused:  # no LayerNorm over pruned channels, no default-scale SDPA: provably exact
        assert tp.verify(original, model, x).exact
    for a in _attentions(model):  # the fold made both attention paths compute the same
        a.fused_attn = not fused
    with torch.no_grad():
        other = model(x)
    for a in _attentions(model):
        a.fused_attn = fused
    with torch.no_grad():
        torch.testing.assert_close(model(x), other, rtol=1e-5, atol=1e-5)

    # A replay of the history (one atomic block, a sync per entry) rebuilds the same model, bit for bit.
    fresh, _ = _vit(name, fused=fused)
    DG = tp.DependencyGraph().build_dependency(fresh, x)
    DG.load_pruning_history(pruner.pruning_history())
    _assert_identical(_state(fresh), reached[-1])


def test_a_step_measures_each_layer_a_bounded_number_of_times(monkeypatch) -> None:
    """Before: every layer measured after each of the step's ~3L groups (216 measurements at L = 8)."""
    depth = 8
    model, x = _vit(depth=depth)
    pruner = _pruner(model, x, steps=1, keep_residual=False, num_heads=False)
    measured = count_calls(monkeypatch, layers_module, "_attention")
    pruner.step()
    assert len(pruner.pruning_history()) >= 3 * depth  # head dims, heads and MLP of every block, the residual
    # the reach index (once per graph) + the head-dim and the head group of each block
    assert len(measured) <= 3 * depth
    for a in _attentions(model):
        _assert_consistent(a)


def test_a_step_failing_after_a_fold_leaves_the_model_exactly_as_before() -> None:
    model, x = _vit()
    pruner = _pruner(model, x, steps=2, keep_residual=False, num_heads=False)
    pruner.step()
    before, step = _state(model), pruner.current_step
    scales = [a.scale for a in _attentions(model)]

    def fail_after_a_fold(graph, plan):  # registered after the sync: runs after it, on the same group
        if plan is not None and any(a.scale != s for a, s in zip(_attentions(model), scales, strict=True)):
            raise RuntimeError("boom")

    handle = pruner.DG.register_prune_hook(fail_after_a_fold, when="after")
    with pytest.raises(tp.DepgraphError, match="boom"):
        pruner.step()
    _assert_identical(_state(model), before)
    assert pruner.current_step == step

    # Nothing of the failed step stays in the sync either: the retried step is the uninterrupted one.
    handle.remove()
    pruner.step()
    reference, rx = _vit()
    ref_pruner = _pruner(reference, rx, steps=2, keep_residual=False, num_heads=False)
    ref_pruner.step()
    ref_pruner.step()
    _assert_identical(_state(model), _state(reference))


def test_a_lone_prune_syncs_at_once_also_on_a_rebuilt_graph() -> None:
    model, x = _vit(fused=False)
    reference = copy.deepcopy(model)
    DG = tp.DependencyGraph().build_dependency(model, x)
    first, second = _attentions(model)[:2]
    DG.get_pruning_group(first.proj, tp.prune_linear_in_channels, [3, 67, 131]).prune()  # dim 3 of each head
    assert (first.num_heads, first.head_dim) == (3, 63) and (second.num_heads, second.head_dim) == (3, 64)
    _assert_consistent(first)
    DG.build_dependency(model, x)  # a new slot graph: the sync indexes it afresh
    DG.get_pruning_group(second.proj, tp.prune_linear_in_channels, [0, 64, 128]).prune()
    assert (second.num_heads, second.head_dim, first.head_dim) == (3, 63, 63)
    for a in _attentions(model):
        _assert_consistent(a)
    assert tp.verify(reference, model, x).exact
