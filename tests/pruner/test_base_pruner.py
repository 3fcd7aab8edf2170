"""Tests of depgraph/pruner/base.py, planning.py and scope.py on real torchvision models.

Each test prunes, then checks the widths the options promise and proves the
result with ``depgraph.verify`` (``tests._checks.check_result``).
"""

import copy
import math

import pytest
import torch
import torchvision

import depgraph as tp
import depgraph.importance as I
import depgraph.pruner as P
from depgraph.errors import OverPruningError
from depgraph.utils import count_ops_and_params
from tests._checks import check_result, output_shapes

X64 = torch.randn(1, 3, 32, 32)


def resnet18():
    return torchvision.models.resnet18(weights=None).eval()


def root_widths(pruner):
    """Current out width of every group root seen at construction."""
    return {m: pruner.DG.get_out_channels(m) for m in pruner.initial_widths()}


def prune_and_check(model, pruner_fn, x=X64, exact=True, **kwargs):
    original = copy.deepcopy(model)
    shapes = output_shapes(model, x)
    pruner = pruner_fn(model, x, **kwargs)
    before = root_widths(pruner)
    pruner.step()
    check_result(original, model, x, shapes, exact=exact)
    return pruner, before, root_widths(pruner)


def test_readme_example_seed_figures_and_history_replay():
    model = resnet18()
    x = torch.randn(1, 3, 224, 224)
    assert count_ops_and_params(model, x) == (1_822_177_768, 11_689_512)
    pruner = P.BasePruner(
        model, x, I.GroupMagnitudeImportance(p=2), pruning_ratio=0.5, ignored_layers=[model.fc], round_to=8
    )
    pruner.step()
    assert count_ops_and_params(model, x) == (487_202_536, 3_055_880)
    fresh = resnet18()
    DG = tp.DependencyGraph().build_dependency(fresh, x)
    DG.load_pruning_history(pruner.pruning_history())
    fresh.load_state_dict(model.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x))


def test_local_ratio_is_per_group_and_round_to():
    pruner, before, after = prune_and_check(
        resnet18(),
        lambda m, x: P.BasePruner(
            m, x, I.GroupMagnitudeImportance(), pruning_ratio=0.3, ignored_layers=[m.fc]
        ),
    )
    assert all(after[m] == math.floor(w * 0.7 + 1e-9) for m, w in before.items())
    _, before, after = prune_and_check(
        resnet18(),
        lambda m, x: P.BasePruner(
            m, x, I.GroupMagnitudeImportance(), pruning_ratio=0.3, ignored_layers=[m.fc], round_to=8
        ),
    )
    # kept widths are rounded down to multiples of round_to, as Torch-Pruning rounds them
    assert all(w % 8 == 0 and w == 8 * (math.floor(before[m] * 0.7) // 8) for m, w in after.items())


def test_global_pruning_reaches_the_total_and_differs_per_layer():
    _, before, after = prune_and_check(
        resnet18(),
        lambda m, x: P.BasePruner(
            m, x, I.GroupMagnitudeImportance(), pruning_ratio=0.5, global_pruning=True, ignored_layers=[m.fc]
        ),
    )
    assert sum(after.values()) == sum(before.values()) // 2
    assert len({round(after[m] / before[m], 3) for m in before}) > 1


def test_isomorphic_ranks_within_identical_structures():
    pruner = P.BasePruner(
        resnet18(), X64, I.GroupMagnitudeImportance(), global_pruning=True, isomorphic=True, pruning_ratio=0.5
    )
    from depgraph.pruner.planning import _signature, candidates

    pools = {}
    for cand in candidates(pruner, pooled=True):
        pools.setdefault(_signature(cand), []).append(cand.root)
    assert any(len(roots) > 1 for roots in pools.values())
    pruner.step()
    for roots in pools.values():
        kept = sum(pruner.DG.get_out_channels(r) for r in roots)
        assert kept == sum(pruner.initial_widths()[r] for r in roots) // 2


def test_ratio_dict_module_and_tuple_scope():
    model = resnet18()
    _, before, after = prune_and_check(
        model,
        lambda m, x: P.BasePruner(
            m,
            x,
            I.GroupMagnitudeImportance(),
            pruning_ratio=0.25,
            pruning_ratio_dict={m.layer4: 0.75},
            ignored_layers=[m.fc],
        ),
    )
    for mod, w in before.items():
        in4 = any(mod is s for s in model.layer4.modules())
        assert after[mod] == math.floor(w * (0.25 if in4 else 0.75) + 1e-9)
    model = resnet18()
    pruner, before, after = prune_and_check(
        model,
        lambda m, x: P.BasePruner(
            m,
            x,
            I.GroupMagnitudeImportance(),
            pruning_ratio=0.0,
            pruning_ratio_dict={(m.layer3, m.layer4): 0.6},
        ),
    )
    scoped = {
        mod for mod in before if any(mod is s for s in [*model.layer3.modules(), *model.layer4.modules()])
    }
    # a tuple key shares its ratio; without global_pruning each layer reaches it on its own
    assert all(after[m] == math.floor(before[m] * 0.4 + 1e-9) for m in scoped)
    assert all(after[m] == before[m] for m in before if m not in scoped)
    assert pruner.get_target_pruning_ratio(model.layer3[0].conv1) == 0.6
    assert pruner.get_target_pruning_ratio(model.conv1) == 0.0


def test_max_ratio_caps_global_and_ratio_one_keeps_a_channel():
    _, before, after = prune_and_check(
        resnet18(),
        lambda m, x: P.BasePruner(
            m,
            x,
            I.GroupMagnitudeImportance(),
            pruning_ratio=0.9,
            global_pruning=True,
            max_pruning_ratio=0.5,
            ignored_layers=[m.fc],
        ),
    )
    assert all(after[m] >= before[m] // 2 for m in before)
    _, before, after = prune_and_check(
        resnet18(),
        lambda m, x: P.BasePruner(
            m, x, I.GroupMagnitudeImportance(), pruning_ratio=1.0, ignored_layers=[m.fc]
        ),
    )
    assert set(after.values()) == {1}


def test_iterative_steps_follow_the_schedule():
    model = resnet18()
    original = copy.deepcopy(model)
    pruner = P.BasePruner(
        model,
        X64,
        I.GroupMagnitudeImportance(),
        pruning_ratio=0.5,
        iterative_steps=3,
        ignored_layers=[model.fc],
    )
    init = pruner.initial_widths()
    for k in range(1, 4):
        pruner.step()
        ratio = 0.5 * k / 3
        assert all(
            pruner.DG.get_out_channels(m) == math.floor(w * (1 - ratio) + 1e-9) for m, w in init.items()
        )
        assert pruner.current_step == k
    with pytest.warns(UserWarning, match="step 4 exceeds iterative_steps=3; nothing is pruned"):
        pruner.step()
    check_result(original, model, X64, output_shapes(original, X64))
    pruner.reset()
    assert pruner.current_step == 0


def test_interactive_yields_groups_the_caller_prunes():
    a, b = resnet18(), resnet18()
    b.load_state_dict(a.state_dict())
    pa = P.BasePruner(a, X64, I.GroupMagnitudeImportance(), pruning_ratio=0.5, ignored_layers=[a.fc])
    pb = P.BasePruner(b, X64, I.GroupMagnitudeImportance(), pruning_ratio=0.5, ignored_layers=[b.fc])
    seen = 0
    for group in pa.step(interactive=True):
        assert isinstance(group, tp.Group) and pa.DG.check_pruning_group(group)
        group.prune()
        seen += 1
    pb.step()
    assert seen == 12
    assert [p.shape for p in a.parameters()] == [p.shape for p in b.parameters()]
    with torch.no_grad():
        torch.testing.assert_close(a(X64), b(X64))


def test_interactive_groups_can_be_skipped():
    model = resnet18()
    pruner = P.BasePruner(
        model, X64, I.GroupMagnitudeImportance(), pruning_ratio=0.5, ignored_layers=[model.fc]
    )
    for i, group in enumerate(pruner.step(interactive=True)):
        if i % 2:
            group.prune()
    assert model(X64).shape == (1, 1000)


def test_manual_prune_width():
    model = resnet18()
    original = copy.deepcopy(model)
    pruner = P.BasePruner(model, X64, I.GroupMagnitudeImportance())
    pruner.manual_prune_width(model.layer1[0].conv1, tp.prune_conv_out_channels, 0.25)
    assert model.layer1[0].conv1.out_channels == 48
    pruner.manual_prune_width(model.layer2[0].conv1, tp.prune_conv_out_channels, [0, 5, 7])
    assert model.layer2[0].conv1.out_channels == 125 and model.layer2[0].conv2.in_channels == 125
    check_result(original, model, X64, output_shapes(original, X64))
    with pytest.raises(OverPruningError, match="manual_prune_width: pruning 48 channels of Conv2d"):
        pruner.manual_prune_width(model.layer1[0].conv1, tp.prune_conv_out_channels, list(range(48)))


def test_soft_pruning_matches_hard_pruning():
    soft, hard = resnet18(), resnet18()
    hard.load_state_dict(soft.state_dict())
    shapes = [p.shape for p in soft.parameters()]
    ps = P.BasePruner(
        soft,
        X64,
        I.GroupMagnitudeImportance(),
        pruning_ratio=0.5,
        iterative_steps=2,
        soft_pruning=True,
        ignored_layers=[soft.fc],
    )
    ph = P.BasePruner(
        hard,
        X64,
        I.GroupMagnitudeImportance(),
        pruning_ratio=0.5,
        iterative_steps=2,
        ignored_layers=[hard.fc],
    )
    for _ in range(2):
        ps.step()
        ph.step()
    assert [p.shape for p in soft.parameters()] == shapes
    zeroed = (soft.conv1.weight.flatten(1).abs().sum(1) == 0).sum().item()
    assert zeroed == 32
    with torch.no_grad():
        torch.testing.assert_close(soft(X64), hard(X64), rtol=1e-4, atol=1e-5)


def test_random_pruner_and_aliases():
    assert issubclass(P.MetaPruner, P.BasePruner) and issubclass(P.MagnitudePruner, P.BasePruner)
    _, before, after = prune_and_check(
        resnet18(), lambda m, x: P.RandomPruner(m, x, pruning_ratio=0.5, ignored_layers=[m.fc])
    )
    assert all(after[m] == before[m] // 2 for m in before)
    assert P.function.prune_conv_out_channels is tp.prune_conv_out_channels
    assert P.importance is I
