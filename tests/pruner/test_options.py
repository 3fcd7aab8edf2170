"""Tests of depgraph/pruner/options.py, scheduler.py and selection.py (no model needed)."""

import pytest
import torch
import torch.nn as nn

import depgraph.importance as I
import depgraph.pruner as P
from depgraph.errors import DepgraphError, OptionError, OptionTypeError
from depgraph.pruner.options import PrunerOptions
from depgraph.pruner.scheduler import check_schedule
from depgraph.pruner.selection import ChannelClasses, count_to_prune, fit_count, pick_lowest


@pytest.fixture
def net():
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1))


X = torch.randn(1, 3, 8, 8)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"pruning_ratio": 1.5}, r"pruning_ratio must be a number in \[0, 1\], got 1.5"),
        ({"pruning_ratio": -0.1}, r"pruning_ratio must be a number in \[0, 1\]"),
        ({"max_pruning_ratio": 2}, r"max_pruning_ratio must be a number in \[0, 1\]"),
        ({"round_to": 0}, "round_to must be a positive integer or None, got 0"),
        ({"round_to": 2.5}, "round_to must be a positive integer"),
        ({"iterative_steps": 0}, "iterative_steps must be a positive integer, got 0"),
        ({"iterative_pruning_ratio_scheduler": 3}, "iterative_pruning_ratio_scheduler must be callable"),
        (
            {"pruning_ratio_dict": {"conv": 0.3}},
            "pruning_ratio_dict keys must be modules or tuples of modules",
        ),
        ({"ignored_layers": ["fc"]}, "ignored_layers must hold modules or parameters, got str"),
        ({"root_module_types": [int]}, "root_module_types must be nn.Module subclasses"),
    ],
)
def test_invalid_options_raise(net, kwargs, match):
    with pytest.raises(OptionError, match=match) as info:
        P.BasePruner(net, X, I.GroupMagnitudeImportance(), **kwargs)
    assert isinstance(info.value, ValueError) and isinstance(info.value, DepgraphError)  # old clauses still catch


def test_all_problems_reported_at_once(net):
    with pytest.raises(ValueError) as info:
        P.BasePruner(net, X, I.GroupMagnitudeImportance(), pruning_ratio=3, round_to=-1)
    assert "pruning_ratio" in str(info.value) and "round_to" in str(info.value)


def test_channel_groups_and_dict_values_checked(net):
    with pytest.raises(ValueError, match=r"out_channel_groups\[Conv2d\] must be a positive integer, got 0"):
        P.BasePruner(net, X, I.GroupMagnitudeImportance(), out_channel_groups={net[0]: 0})
    with pytest.raises(ValueError, match=r"pruning_ratio_dict ratio for Conv2d must be in \[0, 1\], got 1.2"):
        P.BasePruner(net, X, I.GroupMagnitudeImportance(), pruning_ratio_dict={net[0]: 1.2})


def test_subclass_options_validated(net):
    with pytest.raises(ValueError, match="alpha must be >= 1"):
        P.GroupNormPruner(net, X, I.GroupMagnitudeImportance(), alpha=0.5)
    with pytest.raises(ValueError, match="reg must be a non-negative number"):
        P.BNScalePruner(net, X, I.BNScaleImportance(), reg=-1)
    with pytest.raises(OptionTypeError, match="BasePruner: .*unexpected keyword argument 'no_such_option'"):
        P.BasePruner(net, X, I.GroupMagnitudeImportance(), no_such_option=1)
    with pytest.raises(OptionTypeError, match="importance must be callable"):
        P.BasePruner(net, X, "l2")
    with pytest.raises(OptionError, match="unknown normalizer 'median'"):
        I.GroupMagnitudeImportance(normalizer="median")


def test_deprecated_spellings_warn_and_map(net):
    with pytest.warns(DeprecationWarning, match="ch_sparsity is deprecated; use pruning_ratio="):
        pruner = P.BasePruner(net, X, I.GroupMagnitudeImportance(), ch_sparsity=0.25)
    assert pruner.options.pruning_ratio == 0.25
    with pytest.warns(DeprecationWarning, match="ch_sparsity_dict is deprecated"):
        pruner = P.BasePruner(net, X, I.GroupMagnitudeImportance(), ch_sparsity_dict={net[0]: 0.75})
    assert pruner.options.pruning_ratio_dict == ((net[0], 0.75),)
    with pytest.warns(DeprecationWarning, match="channel_groups is deprecated; use in_channel_groups="):
        pruner = P.BasePruner(net, X, I.GroupMagnitudeImportance(), channel_groups={net[3]: 2})
    assert pruner.options.in_channel_groups == ((net[3], 2),)
    with (
        pytest.raises(ValueError, match="both ch_sparsity=0.25 and pruning_ratio=0.3"),
        pytest.warns(DeprecationWarning),
    ):
        P.BasePruner(net, X, I.GroupMagnitudeImportance(), ch_sparsity=0.25, pruning_ratio=0.3)


@pytest.mark.parametrize("cls", [P.BasePruner, P.GroupNormPruner, P.BNScalePruner])
def test_a_deprecated_spelling_warns_at_the_users_line(net, cls):
    """The warning names this file, also through a subclass's ``__init__`` (it named ``sys:1`` before)."""
    with pytest.warns(DeprecationWarning, match="ch_sparsity is deprecated") as caught:
        cls(net, X, I.GroupMagnitudeImportance(), ch_sparsity=0.25)
    assert [w.filename for w in caught if w.category is DeprecationWarning] == [__file__]


def test_no_state_shared_with_caller_or_other_pruners(net):
    ratios = {net[0]: 0.25}
    ignored = [net[3]]
    a = P.BasePruner(net, X, I.GroupMagnitudeImportance(), pruning_ratio_dict=ratios, ignored_layers=ignored)
    ratios[net[0]] = 0.9
    ignored.append(net[0])
    assert a.options.pruning_ratio_dict == ((net[0], 0.25),)
    assert a.options.ignored_layers == (net[3],)
    b = P.BasePruner(net, X, I.GroupMagnitudeImportance())
    assert b.options.pruning_ratio_dict == () and b.options.in_channel_groups == ()
    with pytest.raises(AttributeError):
        a.options.pruning_ratio = 0.1  # frozen


def test_options_replace_validates():
    opts = PrunerOptions.from_kwargs(pruning_ratio=0.3)
    assert opts.replace(round_to=8).round_to == 8
    with pytest.raises(ValueError, match="round_to must be a positive integer"):
        opts.replace(round_to=0)


def test_linear_scheduler_and_checks():
    assert P.linear_scheduler(0.5, 4) == [0.0, 0.125, 0.25, 0.375, 0.5]
    assert check_schedule([0, 0.2, 0.29999], 0.3, 2)[-1] == 0.3
    with pytest.raises(ValueError, match="returned 2 ratios for 2 steps; expected 3"):
        check_schedule([0, 0.3], 0.3, 2)
    with pytest.raises(ValueError, match="returned decreasing ratios"):
        check_schedule([0, 0.4, 0.3], 0.3, 2)


def test_count_to_prune():
    assert count_to_prune(64, 64, 0.5) == 32
    assert count_to_prune(10, 10, 0.7) == 7  # 10 * 0.3 is 3 despite float noise
    assert count_to_prune(10, 10, 1.0) == 9  # at ratio 1 one channel stays
    assert count_to_prune(10, 10, 0.9, max_ratio=0.5) == 5
    assert count_to_prune(64, 64, 0.3, round_to=8) == 24  # keep 44.8 -> 44 -> rounded down to 40 (as the original)
    assert count_to_prune(8, 8, 0.3, round_to=16) == 0  # rounding down would keep nothing: up instead
    assert count_to_prune(64, 64, 0.3, max_ratio=0.3, round_to=8) == 16  # down would cross max_ratio
    assert count_to_prune(60, 64, 0.5, round_to=8) == 28  # iterative: relative to the initial width
    assert count_to_prune(128, 128, 0.3, unit=32) == 32  # whole classes only
    assert count_to_prune(3, 64, 0.5) == 0
    assert fit_count(20, 64, cap=16, round_to=8) == 16
    assert fit_count(13, 64, cap=64, round_to=8) == 16  # keep 51 -> 48
    assert fit_count(13, 64, cap=14, round_to=8) == 8  # keep 48 would cross the cap: 56


def test_classes_and_pick_lowest():
    classes = ChannelClasses(6, [[0, 3], [1, 4], [2, 5]])
    assert classes.unit == 2 and not classes.trivial
    scores = torch.tensor([5.0, 1.0, 9.0, 5.0, 1.0, 0.0])
    assert pick_lowest(scores, 2, classes) == [1, 4]  # class mean 1 beats class mean 4.5
    assert pick_lowest(scores, 4, classes) == [1, 2, 4, 5]  # then class mean 4.5 beats 5
    assert pick_lowest(scores, 2) == [1, 5]  # 0.0, then the first of the tied 1.0s
    assert pick_lowest(torch.tensor([1.0, 0.0, 0.0]), 1) == [1]  # ties: lower index first
    torch.testing.assert_close(classes.class_mean(scores), torch.tensor([5.0, 1.0, 4.5, 5.0, 1.0, 4.5]))


def test_modules_must_belong_to_the_model(net):
    other = nn.Conv2d(3, 8, 3)
    with pytest.raises(ValueError, match="ignored_layers: Conv2d is not part of the model being pruned"):
        P.BasePruner(net, X, I.GroupMagnitudeImportance(), ignored_layers=[other])
    with pytest.raises(ValueError, match="pruning_ratio_dict: Conv2d is not part of the model"):
        P.BasePruner(net, X, I.GroupMagnitudeImportance(), pruning_ratio_dict={(net[0], other): 0.2})
    with pytest.raises(ValueError, match="out_channel_groups: Conv2d is not part of the model"):
        P.BasePruner(net, X, I.GroupMagnitudeImportance(), out_channel_groups={other: 2})
    # a tuple key of head_pruning_ratio_dict is one pooled scope: its members are checked one by one
    P.BasePruner(net, X, I.GroupMagnitudeImportance(), head_pruning_ratio_dict={(net[0], net[3]): 0.5})
    with pytest.raises(ValueError, match="head_pruning_ratio_dict: Conv2d is not part of the model"):
        P.BasePruner(net, X, I.GroupMagnitudeImportance(), head_pruning_ratio_dict={(net[0], other): 0.5})


def test_head_options_are_stored(net):
    with pytest.warns(UserWarning, match="prune_num_heads=True, but no attention block"):
        pruner = P.BasePruner(
            net,
            X,
            I.GroupMagnitudeImportance(),
            num_heads={net[0]: 2},
            prune_num_heads=True,
            head_pruning_ratio=0.5,
        )
    assert pruner.options.num_heads == ((net[0], 2),) and pruner.options.head_pruning_ratio == 0.5
    assert pruner.declared_channel_groups()[(net[0], "out")] == 2  # head dims stay aligned across heads
    with pytest.raises(ValueError, match=r"head_pruning_ratio must be a number in \[0, 1\]"):
        P.BasePruner(net, X, I.GroupMagnitudeImportance(), head_pruning_ratio=2.0)


def test_num_heads_keeps_head_dims_aligned(net):
    pruner = P.BasePruner(net, X, I.GroupMagnitudeImportance(), num_heads={net[0]: 2}, pruning_ratio=0.5)
    pruner.step()
    kept = net[0]._depgraph_kept["out"].view(2, 2) % 4
    assert net[0].out_channels == 4 and (kept[0] == kept[1]).all()
