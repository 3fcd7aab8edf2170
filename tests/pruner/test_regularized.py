"""Tests of depgraph/pruner/regularized.py: ``regularize`` changes ``.grad`` exactly as documented."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

import depgraph.importance as I
import depgraph.pruner as P

X = torch.randn(2, 3, 8, 8)


class Net(nn.Module):
    """conv1 -> bn -> relu -> conv2 -> pool -> fc: one prunable group (conv1) and fc's input."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 5, 1)
        self.fc = nn.Linear(5, 4)
        with torch.no_grad():
            self.bn.weight.uniform_(-1, 1)

    def forward(self, x):
        x = self.conv2(torch.relu(self.bn(self.conv1(x))))
        return self.fc(x.mean((2, 3)))


def _backward(model):
    model.zero_grad()
    F.cross_entropy(model(X), torch.tensor([0, 1])).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def _delta(model, before):
    return {n: p.grad - before[n] for n, p in model.named_parameters()}


def _conv1_group_norm(model):
    sq = (
        model.conv1.weight.pow(2).flatten(1).sum(1)
        + model.bn.weight.pow(2)
        + model.conv2.weight.pow(2).transpose(0, 1).flatten(1).sum(1)
    )
    return sq.detach().sqrt()


def test_bn_scale_l1():
    model = Net()
    pruner = P.BNScalePruner(model, X, I.BNScaleImportance(), reg=1e-2, ignored_layers=[model.fc])
    before = _backward(model)
    pruner.regularize(model)
    d = _delta(model, before)
    torch.testing.assert_close(d["bn.weight"], 1e-2 * torch.sign(model.bn.weight.detach()))
    assert all(d[n].abs().max() == 0 for n in d if n != "bn.weight")


def test_bn_scale_group_lasso_on_a_residual_group():
    model = torchvision.models.resnet18(weights=None)
    x = torch.randn(2, 3, 32, 32)
    pruner = P.BNScalePruner(model, x, I.BNScaleImportance(), reg=1e-3, group_lasso=True)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
    model(x).sum().backward()
    for p in model.parameters():
        p.grad.zero_()  # real gradients exist; what regularize adds is then the whole .grad
    pruner.regularize(model)
    # the stem group: bn1 and the two BNs ending each layer1 block share the same channels
    bns = [model.bn1, model.layer1[0].bn2, model.layer1[1].bn2]
    norm = torch.stack([b.weight.detach() for b in bns]).pow(2).sum(0).sqrt()
    for bn in bns:
        torch.testing.assert_close(bn.weight.grad, 1e-3 * bn.weight.detach() / norm)
    assert model.conv1.weight.grad.abs().max() == 0


def test_group_norm_pruner_formula():
    model = Net()
    pruner = P.GroupNormPruner(
        model, X, I.GroupMagnitudeImportance(), reg=1e-2, alpha=4, ignored_layers=[model.fc, model.conv2]
    )
    before = _backward(model)
    pruner.regularize(model, alpha=4)  # the scale is regularize's alpha (default 2**4), as in the original
    d = _delta(model, before)
    n = _conv1_group_norm(model)
    a = 1e-2 * 4 ** ((n.max() - n) / (n.max() - n.min()))
    torch.testing.assert_close(d["conv1.weight"], a[:, None, None, None] * model.conv1.weight.detach())
    torch.testing.assert_close(d["bn.weight"], a * model.bn.weight.detach())
    torch.testing.assert_close(d["conv2.weight"], a[None, :, None, None] * model.conv2.weight.detach())
    for name in ("conv1.bias", "bn.bias", "fc.weight", "fc.bias"):
        assert d[name].abs().max() == 0, name


def test_growing_reg_grows_on_weak_channels():
    model = Net()
    pruner = P.GrowingRegPruner(
        model,
        X,
        I.GroupMagnitudeImportance(),
        reg=1e-3,
        delta_reg=1e-2,
        ignored_layers=[model.fc, model.conv2],
    )
    before = _backward(model)
    pruner.regularize(model)
    torch.testing.assert_close(_delta(model, before)["conv1.weight"], 1e-3 * model.conv1.weight.detach())
    pruner.update_reg()
    n = _conv1_group_norm(model) ** 2  # weakness measured on the squared norm, as the original does
    r = 1e-3 + 1e-2 * (n.max() - n) / (n.max() - n.min())
    before = _backward(model)
    pruner.regularize(model)
    d = _delta(model, before)
    torch.testing.assert_close(d["conv1.weight"], r[:, None, None, None] * model.conv1.weight.detach())
    torch.testing.assert_close(d["bn.weight"], r * model.bn.weight.detach())


@pytest.mark.parametrize("cls", [P.BNScalePruner, P.GroupNormPruner, P.GrowingRegPruner])
def test_sparse_training_then_prune_then_regularize_again(cls):
    model = torchvision.models.resnet18(weights=None)
    x = torch.randn(2, 3, 32, 32)
    pruner = cls(model, x, I.GroupMagnitudeImportance(), pruning_ratio=0.5, ignored_layers=[model.fc])
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(2):
        opt.zero_grad()
        model(x).sum().backward()
        pruner.regularize(model)
        opt.step()
    pruner.step()
    pruner.update_regularizer()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    model(x).sum().backward()
    pruner.regularize(model)  # groups re-read: shapes match the pruned model
    opt.step()
    assert model.layer1[0].conv1.out_channels == 32
