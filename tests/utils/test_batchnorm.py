"""``recalibrate_batchnorm``: statistics measured on the data, nothing else changed, one transaction."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

import depgraph as tp
from depgraph.utils import batchnorm_layers, recalibrate_batchnorm

torchvision = pytest.importorskip("torchvision")


def _bn_train_output(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The output with every BatchNorm normalising by the batch's own statistics (on a copy)."""
    m = copy.deepcopy(model).eval()
    for _, bn in batchnorm_layers(m):
        bn.train()
    with torch.no_grad():
        return m(x)


def _pruned_resnet18(x: torch.Tensor) -> nn.Module:
    """resnet18 whose statistics fit ``x`` before a 50% prune (as a trained model's fit its data)."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    recalibrate_batchnorm(model, [x])
    tp.pruner.BasePruner(model, x[:1], tp.importance.GroupMagnitudeImportance(p=2), pruning_ratio=0.5,
                         ignored_layers=[model.fc]).step()
    return model.eval()


def test_pruned_resnet_eval_output_matches_its_batch_statistics_again() -> None:
    x = torch.randn(32, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    model = _pruned_resnet18(x)
    target = _bn_train_output(model, x)
    with torch.no_grad():
        stale = (model(x) - target).abs().max().item()
    assert recalibrate_batchnorm(model, list(x.split(8))) == 20  # resnet18's BatchNorm layers
    with torch.no_grad():
        fresh = (model(x) - target).abs().max().item()
    # stale statistics move the logits by about their own size; measured ones leave only the
    # difference between 4 batch variances' average and the whole data's variance
    assert stale > 0.5 * target.abs().max().item()
    assert fresh < 0.15 * stale


def test_one_batch_gives_its_exact_mean_and_unbiased_variance() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1), nn.BatchNorm2d(4))
    x = torch.randn(5, 3, 9, 9)
    with torch.no_grad():
        h = model[0](x)
    recalibrate_batchnorm(model, [x])
    torch.testing.assert_close(model[1].running_mean, h.mean(dim=(0, 2, 3)))
    torch.testing.assert_close(model[1].running_var, h.var(dim=(0, 2, 3), unbiased=True))
    assert int(model[1].num_batches_tracked) == 1


def test_average_over_batches_ignores_their_order_and_keeps_momentum_and_modes() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 6), nn.BatchNorm1d(6, momentum=0.3), nn.Dropout(1.0), nn.Linear(6, 2))
    model.train()  # the caller's modes come back as they were
    batches = [torch.randn(4, 6) + i for i in range(3)]
    a = copy.deepcopy(model)
    recalibrate_batchnorm(a, batches)
    b = copy.deepcopy(model)
    recalibrate_batchnorm(b, batches[::-1])
    torch.testing.assert_close(a[1].running_mean, b[1].running_mean)
    torch.testing.assert_close(a[1].running_var, b[1].running_var)
    with torch.no_grad():
        means = torch.stack([model[0](x).mean(0) for x in batches]).mean(0)
    torch.testing.assert_close(a[1].running_mean, means)
    assert a[1].momentum == 0.3 and all(m.training for m in a.modules())
    # weights untouched; dropout(p=1) stayed in eval mode, or the second Linear would have seen zeros
    torch.testing.assert_close(a[0].weight, model[0].weight)


def test_dropout_before_batchnorm_stays_off() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 6), nn.Dropout(1.0), nn.BatchNorm1d(6))
    recalibrate_batchnorm(model, [torch.randn(8, 6) + 3.0])
    assert model[2].running_mean.abs().min() > 0  # p=1 in training mode would have fed zeros


def test_a_failing_batch_restores_every_statistic_and_mode() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    recalibrate_batchnorm(model, [torch.randn(4, 3, 32, 32)])
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(RuntimeError):
        recalibrate_batchnorm(model, [torch.randn(4, 3, 32, 32), torch.randn(4, 5, 32, 32)])  # 5 channels: fails
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(m.training for m in model.modules())
    assert all(bn.momentum == 0.1 for _, bn in batchnorm_layers(model))


def test_no_batches_is_refused_and_no_batchnorm_is_a_no_op() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    model[1].running_mean.fill_(2.0)
    with pytest.raises(ValueError, match="at least one batch"):
        recalibrate_batchnorm(model, [])
    assert torch.equal(model[1].running_mean, torch.full((4,), 2.0))
    assert recalibrate_batchnorm(nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3)), []) == 0
    untracked = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False))
    assert batchnorm_layers(untracked) == []


def test_dict_batches_are_keyword_arguments() -> None:
    class Keyed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bn = nn.BatchNorm1d(3)

        def forward(self, pixels: torch.Tensor, shift: float = 0.0) -> torch.Tensor:
            return self.bn(pixels + shift)

    model = Keyed()
    recalibrate_batchnorm(model, [{"pixels": torch.ones(4, 3) * torch.tensor([1.0, 2.0, 3.0])}])
    torch.testing.assert_close(model.bn.running_mean, torch.tensor([1.0, 2.0, 3.0]))


def test_timm_batchnorm_act_layers_are_measured_on_their_own_input() -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("mobilenetv3_small_050", pretrained=False).eval()
    layers = batchnorm_layers(model)
    assert layers and all(type(bn).__name__ == "BatchNormAct2d" for _, bn in layers)  # BN + activation in one
    seen = {}
    name, first = layers[0]
    handle = first.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0].detach().clone()))
    x = torch.randn(6, 3, 32, 32)
    assert recalibrate_batchnorm(model, [x]) == len(layers)
    handle.remove()
    torch.testing.assert_close(first.running_mean, seen["x"].mean(dim=(0, 2, 3)))
    torch.testing.assert_close(first.running_var, seen["x"].var(dim=(0, 2, 3)))
    assert not model.training
