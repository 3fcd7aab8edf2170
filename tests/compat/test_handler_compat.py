"""Groups, dependencies and handlers built or called by hand, as Torch-Pruning users do: same results.

Each test runs the same calls on ``torch_pruning`` and on ``depgraph`` and
compares what a user sees (widths, values, return values, warnings). These are
the paths the public API walk checks by signature only: ``Group()`` /
``Dependency(...)`` constructed by hand, ``group()`` and ``group.exec()``,
``TARGET_MODULES`` values, ``ParameterPruner``'s and ``LayernormPruner``'s
``pruning_dim``.
"""

from __future__ import annotations

import warnings
from types import ModuleType

import pytest
import torch
import torch.nn as nn

import depgraph
from depgraph.errors import HandlerMismatchError, InvalidIndicesError

T = pytest.importorskip("torch_pruning")

LIBS = pytest.mark.parametrize("lib", [T, depgraph], ids=["torch_pruning", "depgraph"])


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))


def _graph(lib: ModuleType, model: nn.Module):
    return lib.DependencyGraph().build_dependency(model, torch.randn(2, 4))


def _group_calls(lib: ModuleType) -> list:
    """Build a group, call it, re-make its root dependency and a group by hand, exec a second group."""
    model = _mlp()
    DG = _graph(lib, model)
    group = DG.get_pruning_group(model[0], lib.prune_linear_out_channels, [0, 1])
    dep = group[0].dep
    seen = [group(), model[0].out_features, model[2].in_features]  # group() is group.prune()
    again = lib.Dependency(dep.trigger, dep.handler, dep.source, dep.target)  # positional, as the original
    seen += [again == dep, again.is_triggered_by(dep.trigger), again.pruning_fn is dep.handler, again.layer is model[0]]
    by_hand = lib.Group()
    by_hand.add_dep(dep, [0])
    seen += [len(by_hand), list(by_hand[0].idxs), by_hand.items[0].dep is dep]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = DG.get_pruning_group(model[0], lib.prune_linear_out_channels, [0]).exec()
    seen += [result, [w.category for w in caught if "exec" in str(w.message)], model[0].out_features]
    seen.append(model(torch.randn(2, 4)).shape)
    return seen


def test_group_and_dependency_by_hand_match_the_original():
    ours = _group_calls(depgraph)
    assert ours == _group_calls(T)
    assert ours[-2:] == [3, torch.Size([2, 3])] and ours[-3] == [UserWarning]


def test_group_constructor_takes_no_positional_arguments():
    """``Group()`` as the original; depgraph's own fields are keyword-only, so a stray
    positional argument is refused instead of being read as the graph."""
    assert len(depgraph.Group()) == 0
    with pytest.raises(TypeError):
        depgraph.Group([])  # the original takes no arguments at all


ORIGINAL_TARGETS = [
    "LinearPruner", "BatchnormPruner", "MultiheadAttentionPruner", "PReLUPruner", "ParameterPruner",
    "LayernormPruner", "LSTMPruner", "EmbeddingPruner", "BasePruningFunc",
]


@pytest.mark.parametrize("name", ORIGINAL_TARGETS)
def test_target_modules_are_the_originals(name: str):
    assert getattr(depgraph.pruner.function, name).TARGET_MODULES is getattr(T.pruner.function, name).TARGET_MODULES


@pytest.mark.parametrize("name", ["ConvPruner", "DepthwiseConvPruner"])
def test_conv_target_module_spelling(name: str):
    assert getattr(depgraph.pruner.function, name).TARGET_MODULE is getattr(T.pruner.function, name).TARGET_MODULE


@pytest.mark.parametrize(
    ("pruner", "layer", "fn"),
    [
        ("LayernormPruner", lambda: nn.RMSNorm(6), "prune_out_channels"),
        ("LSTMPruner", lambda: nn.GRU(4, 6), "prune_out_channels"),
        ("EmbeddingPruner", lambda: nn.EmbeddingBag(10, 6), "prune_out_channels"),
    ],
)
def test_handlers_also_prune_the_types_registered_to_them(pruner, layer, fn):
    """``TARGET_MODULES`` holds the original's single type; depgraph registers more types to the
    same handler, and the handler accepts them (the registry, not the attribute, decides)."""
    m = layer()
    handler = getattr(depgraph.pruner.function, pruner)()
    handler(m, [0, 1], to_output=True)
    assert handler.get_out_channels(m) == 4
    with pytest.raises(HandlerMismatchError, match=r"Pruner prunes \w+, not Linear"):
        handler(nn.Linear(6, 6), [0])


@LIBS
def test_a_user_handler_with_one_target_type(lib: ModuleType):
    """The original's idiom: ``TARGET_MODULES = MyLayer`` (a type, not a tuple), used through
    ``__call__`` (which checks it) and through ``customized_pruners``."""

    class Scale(nn.Module):
        def __init__(self, n: int):
            super().__init__()
            self.scale = nn.Parameter(torch.arange(1.0, n + 1))

        def forward(self, x):
            return x * self.scale

    class ScalePruner(lib.BasePruningFunc):
        TARGET_MODULES = Scale

        def prune_out_channels(self, layer, idxs):
            keep = [i for i in range(layer.scale.shape[0]) if i not in idxs]
            layer.scale = self._prune_parameter_and_grad(layer.scale, keep, 0)
            return layer

        prune_in_channels = prune_out_channels

        def get_out_channels(self, layer):
            return layer.scale.shape[0]

        get_in_channels = get_out_channels

    alone = ScalePruner()(Scale(5), [1, 3])
    assert alone.scale.tolist() == [1.0, 3.0, 5.0]
    with pytest.raises((AssertionError, HandlerMismatchError), match="Mismatched|not Linear"):
        ScalePruner()(nn.Linear(2, 2), [0])
    model = nn.Sequential(nn.Linear(4, 6), Scale(6), nn.Linear(6, 3))
    DG = lib.DependencyGraph().build_dependency(model, torch.randn(2, 4), customized_pruners={Scale: ScalePruner()})
    DG.get_pruning_group(model[0], lib.prune_linear_out_channels, [0, 5]).prune()
    assert model[1].scale.tolist() == [2.0, 3.0, 4.0, 5.0] and model[2].in_features == 4


def _parameter_calls(lib: ModuleType) -> list:
    F = lib.pruner.function
    seen = []
    p = nn.Parameter(torch.arange(12.0).view(3, 4))
    out = lib.prune_parameter_out_channels(p, [1])  # no dim: the handler's pruning_dim (-1)
    seen.append(out.tolist())
    handler = F.ParameterPruner(pruning_dim=0)
    q = nn.Parameter(torch.arange(12.0).view(3, 4))
    q.grad = torch.ones(3, 4)
    out = handler.prune_out_channels(q, [1])
    seen += [out.tolist(), tuple(out.grad.shape), handler.get_out_channels(out), handler.get_in_channels(out)]
    seen += [F.ParameterPruner().pruning_dim, F.ParameterPruner(1).get_out_channels(torch.zeros(2, 7))]
    return seen


def test_parameter_pruner_defaults_match_the_original():
    assert _parameter_calls(depgraph) == _parameter_calls(T)


def test_parameter_pruner_keeps_the_tensor_and_takes_dim_by_keyword():
    """depgraph keeps the object (the original returns a new Parameter); the graph passes ``dim=``."""
    p = nn.Parameter(torch.zeros(2, 5, 3))
    assert depgraph.prune_parameter_out_channels(p, [0], dim=1) is p and p.shape == (2, 4, 3)
    with pytest.raises(InvalidIndicesError, match=r"dim must be in \[-3, 2\]"):
        depgraph.prune_parameter_out_channels(p, [0], dim=3)
    assert p.shape == (2, 4, 3)


def _layernorm_calls(lib: ModuleType) -> list:
    F = lib.pruner.function
    seen = []
    for args, kwargs in [((), {}), ((None, 0), {}), ((), {"pruning_dim": -2}), ((None, 1), {})]:
        ln = nn.LayerNorm((4, 6))
        with torch.no_grad():
            ln.weight.copy_(torch.arange(24.0).view(4, 6))
        handler = F.LayernormPruner(*args, **kwargs)
        seen.append(handler.get_out_channels(ln))
        handler.prune_out_channels(ln, [1, 2])
        seen += [tuple(ln.normalized_shape), ln.weight.tolist(), tuple(ln.bias.shape)]
    seen.append(F.LayernormPruner().check(nn.LayerNorm(5), [0]))  # the original's two-argument check
    return seen


def test_layernorm_pruner_pruning_dim_matches_the_original():
    assert _layernorm_calls(depgraph) == _layernorm_calls(T)


def test_layernorm_pruner_refuses_a_dim_it_does_not_normalise():
    """The original returns the layer unchanged when ``pruning_dim`` is outside ``normalized_shape``."""
    ln = nn.LayerNorm(6)
    with pytest.raises(InvalidIndicesError, match=r"LayerNorm normalises 1 dim.*no dim -2"):
        depgraph.pruner.function.LayernormPruner(pruning_dim=-2)(ln, [0])
    assert ln.normalized_shape == (6,)


# -- the rest of the list that only the signature walk covered ------------------------------


def _group_items(lib: ModuleType) -> list:
    model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 4, 3))
    DG = lib.DependencyGraph().build_dependency(model, torch.randn(1, 3, 8, 8))
    group = DG.get_pruning_group(model[0], lib.prune_conv_out_channels, [4, 1])
    names = {id(m): n for n, m in model.named_modules()}
    seen = []
    for item in group:  # the original's GroupItem: a named tuple (dep, idxs)
        dep, idxs = item
        if id(dep.target.module) not in names:
            continue  # the original also lists its op nodes (ReLU); depgraph lists layers
        seen.append((isinstance(item, tuple), list(item._asdict()), item.dep is dep, sorted(item.idxs) == sorted(idxs),
                     names.get(id(dep.target.module)), sorted(int(i) for i in idxs)))
    by_hand = lib.Group()
    for item in group.items:
        by_hand.add_dep(item.dep, item.idxs)
    seen.append([names[id(it.dep.target.module)] for it in by_hand if id(it.dep.target.module) in names])
    return sorted(seen, key=repr)


def test_group_items_are_named_tuples_as_in_the_original():
    ours = _group_items(depgraph)
    assert ours == _group_items(T)
    assert (True, ["dep", "idxs"], True, True, "1", [1, 4]) in ours


@pytest.mark.parametrize(
    ("name", "layer"),
    [("ConvPruner", lambda: nn.Conv2d(8, 8, 3, groups=4)), ("GroupNormPruner", lambda: nn.GroupNorm(2, 4)),
     ("LinearPruner", lambda: nn.Linear(3, 3)), ("BatchnormPruner", lambda: nn.BatchNorm2d(3))],
)
def test_channel_groups_match(name, layer):
    m = layer()
    ours, theirs = getattr(depgraph.pruner.function, name)(), getattr(T.pruner.function, name)()
    assert (ours.get_in_channel_groups(m), ours.get_out_channel_groups(m)) == (
        theirs.get_in_channel_groups(m), theirs.get_out_channel_groups(m))


def test_module2type_and_flatten_as_list_match():
    layers = [nn.Conv2d(4, 4, 3), nn.Conv2d(4, 4, 3, groups=4), nn.Linear(2, 2), nn.BatchNorm2d(3), nn.LayerNorm(3),
              nn.ReLU(), nn.Embedding(3, 3), nn.LSTM(2, 2), nn.MultiheadAttention(4, 2), nn.GroupNorm(2, 4),
              nn.InstanceNorm2d(3), nn.PReLU()]
    assert [int(depgraph.utils.module2type(m)) for m in layers] == [int(T.utils.module2type(m)) for m in layers]
    nested = [torch.ones(1), (torch.zeros(2), {"a": torch.ones(3), "b": [torch.zeros(4)]})]
    ours, theirs = depgraph.utils.flatten_as_list(nested), T.utils.flatten_as_list(nested)
    assert [t.shape for t in ours] == [t.shape for t in theirs] == [(1,), (2,), (3,), (4,)]


@pytest.mark.parametrize(
    ("layer", "shapes"),
    [(lambda: nn.Linear(5, 3), ((4, 5), (4, 3))),
     (lambda: nn.Conv2d(3, 4, 3, stride=2, padding=1), ((2, 3, 8, 8), (2, 4, 4, 4))),
     (lambda: nn.Conv2d(3, 4, 2, bias=False), ((2, 3, 5, 5), (2, 4, 4, 4)))],
)
def test_compute_mat_grad_matches(layer, shapes):
    torch.manual_seed(0)
    m, x, g = layer(), torch.randn(*shapes[0]), torch.randn(*shapes[1])
    torch.testing.assert_close(depgraph.importance.ComputeMatGrad()(x, g, m), T.importance.ComputeMatGrad()(x, g, m))
