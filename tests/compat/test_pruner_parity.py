"""The same pruning script on torch_pruning and on depgraph gives the same widths and scores.

Each test builds one model, copies it, runs the identical calls with
``torch_pruning`` (``T``) and ``depgraph`` (``tp``), and compares the pruned
width of every layer (or the scores of every group). The classifier is
ignored in both: the original would otherwise prune the model's outputs,
which depgraph never changes (README "Coming from Torch-Pruning").
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torchvision

import depgraph as tp
from depgraph.pruner.options import floor_fraction as floor_keep

from .test_silent_differences import _compare_scores

T = pytest.importorskip("torch_pruning")

X = torch.randn(1, 3, 32, 32)


def _resnet18() -> nn.Module:
    model = torchvision.models.resnet18(weights=None)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.2, 1.5)
    return model.eval()


def _widths(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Every weight's shape: out and in widths of each layer, norms included."""
    return {n: tuple(p.shape) for n, p in model.named_parameters() if n.endswith("weight")}


def _run(lib, model, imp, **kw):
    pruner = lib.pruner.BasePruner(model, X, imp, ignored_layers=[model.fc], **kw)
    pruner.step()
    return pruner


def _same_script(make_imp, make=_resnet18, **kw):
    mo = make()
    md = copy.deepcopy(mo)
    _run(T, mo, make_imp(T), **kw)
    _run(tp, md, make_imp(tp), **kw)
    assert _widths(md) != _widths(make()), "nothing was pruned"
    assert _widths(md) == _widths(mo)
    return mo, md


def _l2(lib):
    return lib.importance.GroupMagnitudeImportance(p=2)


@pytest.mark.parametrize(
    "kw",
    [
        {"pruning_ratio": 0.5},
        {"pruning_ratio": 0.3, "round_to": 8},
        {"pruning_ratio": 0.5, "global_pruning": True},
        {"pruning_ratio": 0.4, "global_pruning": True, "isomorphic": True},
    ],
    ids=["local", "round_to", "global", "isomorphic"],
)
def test_widths_match(kw):
    mo, md = _same_script(_l2, **kw)
    torch.testing.assert_close(md(X), md(X))  # runs


@pytest.mark.parametrize("global_pruning", [False, True])
def test_pruning_ratio_dict_module_and_tuple_keys(global_pruning):
    mo = _resnet18()
    md = copy.deepcopy(mo)
    for lib, m in ((T, mo), (tp, md)):
        _run(lib, m, _l2(lib), pruning_ratio=0.2, global_pruning=global_pruning,
             pruning_ratio_dict={m.layer2: 0.5, (m.layer3[0].conv1, m.layer3[1].conv1): 0.6})
    # a tuple key shares its ratio; its layers are ranked together only under global_pruning
    assert _widths(md) == _widths(mo)
    if not global_pruning:
        assert md.layer3[0].conv1.out_channels == md.layer3[1].conv1.out_channels == 102


@pytest.mark.parametrize("round_to", [None, 8])
def test_tuple_key_of_blocks_in_local_mode_every_step(round_to):
    """A tuple of whole blocks, two iterative steps, local: each layer of the tuple reaches the
    tuple's ratio on its own, as in the original (widths compared after every step)."""
    mo = _resnet18()
    md = copy.deepcopy(mo)
    pruners = [lib.pruner.BasePruner(m, X, _l2(lib), ignored_layers=[m.fc], pruning_ratio=0.25, iterative_steps=2,
                                      round_to=round_to, pruning_ratio_dict={(m.layer3, m.layer4): 0.5})
               for lib, m in ((T, mo), (tp, md))]
    for _ in range(2):
        for p in pruners:
            p.step()
        assert _widths(md) == _widths(mo)
    assert md.layer4[1].conv1.out_channels == 256 and md.layer3[0].conv1.out_channels == 128
    assert md.conv1.out_channels == 48


def test_iterative_steps_match_at_every_step():
    mo = _resnet18()
    md = copy.deepcopy(mo)
    po = T.pruner.BasePruner(mo, X, _l2(T), pruning_ratio=0.6, iterative_steps=3, ignored_layers=[mo.fc])
    pd = tp.BasePruner(md, X, _l2(tp), pruning_ratio=0.6, iterative_steps=3, ignored_layers=[md.fc])
    for _ in range(3):
        po.step()
        pd.step()
        assert _widths(md) == _widths(mo)
    assert md.layer1[0].conv1.out_channels == floor_keep(64, 0.4)


def test_interactive_step_prunes_the_same_groups():
    mo = _resnet18()
    md = copy.deepcopy(mo)
    po = T.pruner.BasePruner(mo, X, _l2(T), pruning_ratio=0.5, ignored_layers=[mo.fc])
    pd = tp.BasePruner(md, X, _l2(tp), pruning_ratio=0.5, ignored_layers=[md.fc])
    n_o = n_d = 0
    for group in po.step(interactive=True):
        group.prune()
        n_o += 1
    for group in pd.step(interactive=True):
        group.prune()
        n_d += 1
    assert n_d == n_o > 0
    assert _widths(md) == _widths(mo)


@pytest.mark.slow  # 70 combinations, two ResNet-18 graphs each; test_named_criteria_scores_match runs by default
@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("normalizer", ["mean", "max", "sum", "standarization", "gaussian", "lamp", None])
@pytest.mark.parametrize("reduction", ["mean", "sum", "max", "prod", "first"])
def test_magnitude_scores_match(p, normalizer, reduction):
    mo = _resnet18()
    md = copy.deepcopy(mo)
    kw = dict(p=p, group_reduction=reduction, normalizer=normalizer)
    # min-max, gaussian and LAMP amplify float32 summation-order noise of the raw sums (~1e-4 here)
    n = _compare_scores(T.importance.GroupMagnitudeImportance(**kw), tp.importance.GroupMagnitudeImportance(**kw),
                        mo, md, X, rtol=1e-3, atol=1e-3, max_mismatch=0.01 if normalizer == "lamp" else 0.0)
    assert n >= 8


@pytest.mark.parametrize("name", ["LAMPImportance", "BNScaleImportance", "MagnitudeImportance"])
def test_named_criteria_scores_match(name):
    mo = _resnet18()
    md = copy.deepcopy(mo)
    n = _compare_scores(getattr(T.importance, name)(), getattr(tp.importance, name)(), mo, md, X, rtol=1e-3,
                        atol=1e-3, max_mismatch=0.01 if name == "LAMPImportance" else 0.0)
    assert n >= 8


def test_history_replays_across_libraries():
    """A history recorded by either library rebuilds the same pruned model in the other."""
    mo = _resnet18()
    md = copy.deepcopy(mo)
    po = _run(T, mo, _l2(T), pruning_ratio=0.4)
    pd = _run(tp, md, _l2(tp), pruning_ratio=0.4)
    fresh_d, fresh_o = _resnet18(), _resnet18()
    tp.DependencyGraph().build_dependency(fresh_d, X).load_pruning_history(po.pruning_history())
    T.DependencyGraph().build_dependency(fresh_o, X).load_pruning_history(pd.pruning_history())
    assert _widths(fresh_d) == _widths(mo) == _widths(md) == _widths(fresh_o)


def test_vit_heads_and_num_heads():
    timm = pytest.importorskip("timm")
    from timm.models.vision_transformer import Attention

    def make():
        torch.manual_seed(0)
        return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8,
                                 depth=2, num_heads=4).eval()

    x = torch.randn(1, 3, 32, 32)
    counts = {}
    for lib in (T, tp):
        model = make()
        num_heads = {m.qkv: m.num_heads for m in model.modules() if isinstance(m, Attention)}
        pruner = lib.pruner.MetaPruner(model, x, lib.importance.GroupMagnitudeImportance(p=2),
                                       pruning_ratio=0.5, ignored_layers=[model.head], num_heads=num_heads,
                                       prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=0.5)
        assert pruner.get_target_head_pruning_ratio(model.blocks[0].attn.qkv) == 0.0
        pruner.step()
        assert pruner.get_target_head_pruning_ratio(model.blocks[0].attn.qkv) == 0.5
        for m in model.modules():  # the original's example: copy the new counts back
            if isinstance(m, Attention):
                m.num_heads = pruner.num_heads[m.qkv]
                m.head_dim = m.qkv.out_features // (3 * m.num_heads)
        if lib is tp:  # the original's pruned timm attention needs its example's own forward with this timm
            model(x)
        counts[lib] = ([pruner.num_heads[b.attn.qkv] for b in model.blocks], _widths(model))
    assert counts[tp] == counts[T]
    assert counts[tp][0] == [2, 2]
