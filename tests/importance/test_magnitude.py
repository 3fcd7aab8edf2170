"""Tests of depgraph/importance/{base,magnitude,reduce,channels}.py on hand-built groups."""

import pytest
import torch
import torch.nn as nn

import depgraph.importance as I
from depgraph.errors import DepgraphError


@pytest.fixture
def chain():
    torch.manual_seed(0)
    conv1, bn, conv2 = nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.Conv2d(6, 4, 1)
    with torch.no_grad():
        bn.weight.uniform_(-1, 1)
    return conv1, bn, conv2


def _expected_members(conv1, bn, conv2, p=2):
    return torch.stack(
        [
            conv1.weight.detach().abs().pow(p).flatten(1).sum(1),
            bn.weight.detach().abs().pow(p),
            conv2.weight.detach().abs().pow(p).transpose(0, 1).flatten(1).sum(1),
        ]
    )


def test_stack_and_every_reduction(chain, make_group):
    conv1, bn, conv2 = chain
    group = make_group((conv1, "out", range(6)), (bn, "out", range(6)), (conv2, "in", range(6)))
    stack = I.GroupMagnitudeImportance(group_reduction=None, normalizer=None)(group)
    expect = _expected_members(conv1, bn, conv2)
    torch.testing.assert_close(stack, expect)
    checks = {
        "mean": expect.mean(0),
        "sum": expect.sum(0),
        "max": expect.amax(0),
        "prod": expect.prod(0),
        "first": expect[0],
        "gate": expect[-1],
    }
    for how, want in checks.items():
        got = I.GroupMagnitudeImportance(group_reduction=how, normalizer=None)(group)
        torch.testing.assert_close(got, want, msg=how)


def test_target_types_and_bias_rows(chain, make_group):
    conv1, bn, conv2 = chain
    conv1.bias.data.fill_(3.0)
    group = make_group((conv1, "out", range(6)), (bn, "out", range(6)), (conv2, "in", range(6)))
    only_bn = I.GroupMagnitudeImportance(
        p=1, group_reduction=None, normalizer=None, target_types=[nn.BatchNorm2d]
    )
    torch.testing.assert_close(only_bn(group), bn.weight.detach().abs()[None])
    with_bias = I.GroupMagnitudeImportance(group_reduction=None, normalizer=None, bias=True)(group)
    assert with_bias.shape == (5, 6)  # conv1 weight, conv1 bias, bn weight, bn bias, conv2 weight
    torch.testing.assert_close(with_bias[1], torch.full((6,), 9.0))


def test_subset_root_idxs_and_repeated_positions(make_group):
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 4, 1, bias=False)
    fc = nn.Linear(8, 3)  # conv channels flattened over 2 positions: feature 2c, 2c+1 <- channel c
    group = make_group(
        (conv, "out", [3, 1]),
        (fc, "in", [6, 7, 2, 3], [3, 3, 1, 1]),
    )
    stack = I.GroupMagnitudeImportance(group_reduction=None, normalizer=None)(group)
    w, f = conv.weight.detach().flatten(1), fc.weight.detach()
    torch.testing.assert_close(stack[0], w[[3, 1]].pow(2).sum(1))
    col = f.pow(2).sum(0)
    torch.testing.assert_close(stack[1], torch.stack([col[6] + col[7], col[2] + col[3]]))


def test_mean_counts_only_members_that_cover_a_channel(make_group):
    lin1, lin2 = nn.Linear(2, 4, bias=False), nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        lin1.weight.fill_(1.0)
        lin2.weight.fill_(2.0)
    # lin2's input is only root channels 2 and 3 (a slice after a concat)
    group = make_group((lin1, "out", range(4)), (lin2, "in", [0, 1], [2, 3]))
    got = I.GroupMagnitudeImportance(normalizer=None)(group)
    torch.testing.assert_close(got, torch.tensor([2.0, 2.0, (2.0 + 12.0) / 2, (2.0 + 12.0) / 2]))
    stack = I.GroupMagnitudeImportance(group_reduction=None, normalizer=None)(group)
    torch.testing.assert_close(stack[1], torch.tensor([0.0, 0.0, 12.0, 12.0]))


def test_grouped_conv_in_rows_are_exact(make_group):
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, groups=2, bias=False)  # weight (6, 2, 3, 3)
    group = make_group((conv, "in", range(4)))
    got = I.GroupMagnitudeImportance(p=1, normalizer=None)(group)
    w = conv.weight.detach().abs()
    # in-channel c of block b = c // 2 meets outputs 3b..3b+2 at local position c % 2
    want = torch.stack([w[3 * (c // 2) : 3 * (c // 2) + 3, c % 2].sum() for c in range(4)])
    torch.testing.assert_close(got, want)


def test_transposed_conv_rows(make_group):
    torch.manual_seed(0)
    deconv = nn.ConvTranspose2d(4, 6, 2, groups=2, bias=False)  # weight (4, 3, 2, 2)
    w = deconv.weight.detach().abs()
    out = I.GroupMagnitudeImportance(p=1, normalizer=None)(make_group((deconv, "out", range(6))))
    want = torch.stack([w[2 * (o // 3) : 2 * (o // 3) + 2, o % 3].sum() for o in range(6)])
    torch.testing.assert_close(out, want)
    inn = I.GroupMagnitudeImportance(p=1, normalizer=None)(make_group((deconv, "in", range(4))))
    torch.testing.assert_close(inn, w.flatten(1).sum(1))


def test_bare_parameter_member(make_group):
    lin = nn.Linear(3, 4, bias=False)
    token = nn.Parameter(torch.arange(8.0).reshape(1, 2, 4))  # channels on dim 2
    group = make_group((lin, "out", range(4)), (token, "in", range(4), None, 2))
    imp = I.GroupMagnitudeImportance(
        p=1, group_reduction=None, normalizer=None, target_types=[nn.Linear, nn.Parameter]
    )
    torch.testing.assert_close(imp(group)[1], torch.tensor([4.0, 6.0, 8.0, 10.0]))


def test_normalizers():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    eps = 1e-6
    torch.testing.assert_close(I.normalize(x, "mean"), x / 2.5, atol=eps, rtol=eps)
    torch.testing.assert_close(I.normalize(x, "max"), x / 4, atol=eps, rtol=eps)
    torch.testing.assert_close(I.normalize(x, "sum"), x / 10, atol=eps, rtol=eps)
    torch.testing.assert_close(I.normalize(x, "standarization"), (x - 1) / 3, atol=eps, rtol=eps)
    torch.testing.assert_close(I.normalize(x, "gaussian"), (x - 2.5) / x.std(), atol=eps, rtol=eps)
    # LAMP: x_i / sum of x_j >= x_i
    torch.testing.assert_close(
        I.normalize(x, "lamp"), torch.tensor([1 / 10, 2 / 9, 3 / 7, 4 / 4]), atol=eps, rtol=eps
    )
    assert I.normalize(x, None) is x


def test_lamp_and_bn_scale_criteria(chain, make_group):
    conv1, bn, conv2 = chain
    group = make_group((conv1, "out", range(6)), (bn, "out", range(6)), (conv2, "in", range(6)))
    mean = _expected_members(conv1, bn, conv2).mean(0)
    torch.testing.assert_close(I.LAMPImportance()(group), I.normalize(mean, "lamp"))
    torch.testing.assert_close(I.BNScaleImportance(normalizer=None)(group), bn.weight.detach().abs())
    assert I.BNScaleImportance()(make_group((conv1, "out", range(6)))) is None


def test_aliases_and_random(chain, make_group):
    assert issubclass(I.MagnitudeImportance, I.GroupMagnitudeImportance)
    assert issubclass(I.GroupNormImportance, I.GroupMagnitudeImportance)
    group = make_group((chain[0], "out", [0, 4, 5]))
    r = I.RandomImportance(generator=torch.Generator().manual_seed(1))(group)
    assert r.shape == (3,) and ((r >= 0) & (r < 1)).all()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"group_reduction": "median"}, "unknown group_reduction 'median'; choose one of 'mean', 'sum'"),
        (
            {"normalizer": "l2"},
            "unknown normalizer 'l2'; choose one of 'mean', 'max', 'sum', 'standarization'",
        ),
        ({"p": 0}, "p must be positive"),
    ],
)
def test_invalid_options_fail_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        I.GroupMagnitudeImportance(**kwargs)


def test_registry():
    imp = I.create_importance("lamp", p=1)
    assert isinstance(imp, I.LAMPImportance) and imp.p == 1
    with pytest.raises(
        DepgraphError, match="no importance criterion is registered as 'nope'; known: activation"
    ):
        I.create_importance("nope")

    @I.register_importance("test_only")
    class Mine(I.GroupMagnitudeImportance):
        pass

    assert "test_only" in I.list_importances()
    with pytest.warns(UserWarning, match="replacing the importance registered as 'test_only'"):
        I.register_importance("test_only")(I.LAMPImportance)


def test_criteria_read_the_side_the_graph_recorded():
    """The side of a member is ``dep.side`` (recorded at build), not guessed from its handler:
    a custom layer whose handler names its methods differently is scored on the right side."""
    import depgraph as tp

    class Shrink(tp.BasePruningFunc):
        TARGET_MODULES = nn.Linear

        def drop_rows(self, layer, idxs):
            return tp.prune_linear_out_channels(layer, idxs)

        def drop_cols(self, layer, idxs):
            return tp.prune_linear_in_channels(layer, idxs)

        prune_out_channels, prune_in_channels = drop_rows, drop_cols

        def get_out_channels(self, layer):
            return layer.out_features

        def get_in_channels(self, layer):
            return layer.in_features

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Linear(6, 3))
    DG = tp.DependencyGraph().build_dependency(model, torch.randn(2, 4), customized_pruners={nn.Linear: Shrink()})
    group = DG.get_pruning_group(model[0], DG.get_pruner_of_module(model[0]).prune_out_channels, [0, 1, 2, 3, 4, 5])
    assert [dep.side for dep, _ in group] == ["out", "in"]
    stack = I.GroupMagnitudeImportance(group_reduction=None, normalizer=None, bias=False)(group)
    torch.testing.assert_close(stack[0], model[0].weight.detach().pow(2).sum(1))
    torch.testing.assert_close(stack[1], model[1].weight.detach().pow(2).sum(0))


@pytest.mark.parametrize("p", [1, 2, 3, 0.5])
@pytest.mark.parametrize(
    "shape, channel_dim",
    [((64, 32, 3, 3), 1), ((96, 40), 1), ((2048, 300), 1), ((4, 5, 6, 7), 2), ((4, 5, 6, 7), 3), ((3, 0, 2), 1)],
)
def test_power_sum_on_channel_views_matches_the_plain_sum(p, shape, channel_dim):
    # The input side of a conv / linear is a strided view (channels moved to the front); it is
    # summed in blocks of contiguous rows, which must give the plain per-channel sum.
    from depgraph.importance.magnitude import power_sum

    torch.manual_seed(0)
    view = torch.randn(*shape).movedim(channel_dim, 0)
    expected = view.double().abs().pow(p).sum(dim=tuple(range(1, view.dim()))).float()
    got = power_sum(view, p)
    assert got.shape == expected.shape and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    half = power_sum(view.half(), p)  # a half-precision weight is scored in float32
    torch.testing.assert_close(half, view.half().float().abs().pow(p).sum(dim=tuple(range(1, view.dim()))),
                               rtol=1e-5, atol=1e-5)
