"""Tests of depgraph/importance/{taylor,fpgm,activation,obdc}.py with real backward passes."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import depgraph.importance as I
from depgraph.errors import DepgraphError


@pytest.fixture
def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 6), nn.ReLU(inplace=True), nn.Linear(6, 3))


def _mlp_group(mlp, make_group):
    return make_group((mlp[0], "out", range(6)), (mlp[2], "in", range(6)))


def test_taylor_from_real_backward(mlp, make_group):
    x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
    F.cross_entropy(mlp(x), y).backward()
    group = _mlp_group(mlp, make_group)
    w0, g0 = mlp[0].weight.detach(), mlp[0].weight.grad
    w2, g2 = mlp[2].weight.detach(), mlp[2].weight.grad
    stack = I.GroupTaylorImportance(group_reduction=None, normalizer=None)(group)
    torch.testing.assert_close(stack[0], (w0 * g0).abs().sum(1))
    torch.testing.assert_close(stack[1], (w2 * g2).abs().sum(0))
    multi = I.TaylorImportance(group_reduction=None, normalizer=None, multivariable=True)(group)
    torch.testing.assert_close(multi[0], (w0 * g0).sum(1).abs())


def test_taylor_without_gradients_says_what_to_do(mlp, make_group):
    with pytest.raises(DepgraphError, match=r"has no \.grad; call loss\.backward\(\)"):
        I.GroupTaylorImportance()(_mlp_group(mlp, make_group))


def test_hessian_is_mean_squared_per_sample_gradient(mlp, make_group):
    x, y = torch.randn(4, 5), torch.randint(0, 3, (4,))
    imp = I.GroupHessianImportance(group_reduction=None, normalizer=None)
    imp.zero_grad()
    squares = []
    for loss in F.cross_entropy(mlp(x), y, reduction="none"):
        mlp.zero_grad()
        loss.backward(retain_graph=True)
        imp.accumulate_grad(mlp)
        squares.append(mlp[0].weight.grad.detach().pow(2))
    h = torch.stack(squares).mean(0)
    got = imp(_mlp_group(mlp, make_group))
    torch.testing.assert_close(got[0], (mlp[0].weight.detach().pow(2) * h).sum(1) / 2)
    imp.zero_grad()
    with pytest.raises(DepgraphError, match=r"no accumulated gradients .* imp\.accumulate_grad\(model\)"):
        imp(_mlp_group(mlp, make_group))
    assert issubclass(I.HessianImportance, I.GroupHessianImportance)


def test_fpgm_scores_distance_to_other_filters(make_group):
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 5, 3)
    w = conv.weight.detach().flatten(1)
    got = I.FPGMImportance(normalizer=None)(make_group((conv, "out", [0, 2, 3])))
    sub = w[[0, 2, 3]].abs().pow(2)  # filters are |w|**p, distances Euclidean (as in Torch-Pruning)
    want = torch.stack([(sub[i] - sub).norm(dim=1).sum() for i in range(3)])
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    cols = conv.weight.detach().transpose(0, 1).flatten(1).abs()  # the in side: one column per channel
    got = I.FPGMImportance(p=1, normalizer=None)(make_group((conv, "in", [0, 1])))
    torch.testing.assert_close(got, (cols[0] - cols[1]).norm().expand(2), rtol=1e-4, atol=1e-5)


def test_activation_importance_collects_over_passes(mlp, make_group):
    imp = I.ActivationImportance(p=1, normalizer=None)
    xs = [torch.randn(4, 5) for _ in range(3)]
    with imp.compute_importance(mlp):
        hidden = [mlp[1](mlp[0](x)).detach().clone() for x in xs]  # input of mlp[2]
        for x in xs:
            mlp(x)
    assert all(not m._forward_hooks for m in mlp.modules())
    want = torch.stack([h.abs().mean(0) for h in hidden]).mean(0)
    torch.testing.assert_close(imp(_mlp_group(mlp, make_group)), want)
    mlp[2].in_features = 4  # as if pruned after collection
    with pytest.raises(DepgraphError, match="collect them again after pruning"):
        imp(_mlp_group(mlp, make_group))


def test_activation_without_statistics(mlp, make_group):
    with pytest.raises(DepgraphError, match="has no in statistics for Linear"):
        I.ActivationImportance()(_mlp_group(mlp, make_group))


def test_obdc_diagonal_kfac(mlp, make_group):
    imp = I.OBDCImportance(group_reduction=None, normalizer=None)
    x, y = torch.randn(16, 5), torch.randint(0, 3, (16,))
    with imp.collect(mlp):  # mlp has an in-place ReLU right after the scored layer
        F.cross_entropy(mlp(x), y).backward()
    # the same gradient, computed independently of any hook
    w0, b0 = mlp[0].weight.detach(), mlp[0].bias.detach()
    pre = (x @ w0.T + b0).requires_grad_()
    loss = F.cross_entropy(F.relu(pre) @ mlp[2].weight.detach().T + mlp[2].bias.detach(), y)
    (grad,) = torch.autograd.grad(loss, pre)
    a, g = x.pow(2).mean(0), grad.pow(2).mean(0)
    stack = imp(make_group((mlp[0], "out", range(6))))
    torch.testing.assert_close(stack[0], (w0.pow(2) * g[:, None] * a[None]).sum(1) / 2)


def test_obdc_grouped_conv_and_classifier_skip(make_group):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 6, 1, groups=2), nn.Flatten(), nn.Linear(6 * 9, 10))
    imp = I.OBDCImportance(num_classes=10, normalizer=None)
    with imp.collect(model):
        model(torch.randn(2, 4, 3, 3)).sum().backward()
    scores = imp(make_group((model[0], "out", range(6))))
    assert scores.shape == (6,) and (scores > 0).all()
    assert imp(make_group((model[2], "out", range(10)))) is None
