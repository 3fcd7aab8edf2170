"""CI smoke test of pruning quality on real data: scikit-learn's bundled 8x8 digits.

A tiny CNN is trained for a few seconds (fixed seeds, one thread), half of
every prunable group's channels are removed with a data-aware criterion or
with magnitude, and the pruned net is fine-tuned for 60 small steps. It must
recover to at least 0.92 test accuracy (the unpruned net reaches 0.985;
measured after the fine-tune: magnitude 0.970, activation x weight 0.972,
fluctuation + bias compensation 0.985). The threshold is chosen so that a
prune which destroyed the trained weights misses it: the same pruned shapes
re-initialised and fine-tuned the same way reach only 0.819.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import depgraph as tp

sklearn_datasets = pytest.importorskip("sklearn.datasets")

THRESHOLD = 0.92
FINE_TUNE_STEPS = 60


class Digits:
    """The 1797 digits as (N, 1, 8, 8) floats in [0, 1]; a fixed 1400 / 397 split."""

    def __init__(self) -> None:
        d = sklearn_datasets.load_digits()
        self.x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
        self.y = torch.tensor(d.target)
        perm = torch.randperm(len(self.y), generator=torch.Generator().manual_seed(0))
        self.train_idx, self.test_idx = perm[:1400], perm[1400:]

    def batches(self, steps: int, size: int = 64):
        n = len(self.train_idx)
        order = self.train_idx[torch.randperm(n, generator=torch.Generator().manual_seed(1))]
        per_epoch = len(order) // size
        for s in range(steps):
            if s and s % per_epoch == 0:
                order = self.train_idx[torch.randperm(len(order), generator=torch.Generator().manual_seed(s))]
            b = order[(s % per_epoch) * size:(s % per_epoch + 1) * size]
            yield self.x[b], self.y[b]

    def accuracy(self, model: nn.Module) -> float:
        model.eval()
        with torch.no_grad():
            return (model(self.x[self.test_idx]).argmax(1) == self.y[self.test_idx]).float().mean().item()


def small_cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    )


def train(model: nn.Module, data: Digits, steps: int, lr: float) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=lr)  # built after pruning: it sees new biases
    model.train()
    for x, y in data.batches(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()


@pytest.fixture(scope="module")
def trained():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data = Digits()
        model = small_cnn()
        train(model, data, steps=88, lr=1e-2)  # four epochs, ~3 s
        yield data, model, data.accuracy(model)
    finally:
        torch.set_num_threads(threads)


CASES = {
    "magnitude": (lambda: tp.importance.GroupMagnitudeImportance(p=2), False),
    "activation_weight": (lambda: tp.importance.ActivationWeightImportance(), False),
    "fluctuation_bias_compensation": (lambda: tp.importance.FluctuationImportance(), True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_half_pruned_digits_cnn_recovers_after_short_fine_tune(trained, case):
    data, base, base_acc = trained
    assert base_acc >= 0.95
    make, compensate = CASES[case]
    model = copy.deepcopy(base)
    imp = make()
    if hasattr(imp, "calibrate"):
        imp.calibrate(model, [data.x[data.train_idx[i:i + 128]] for i in range(0, 512, 128)])
    example = data.x[:2]
    tp.pruner.BasePruner(model, example, imp, pruning_ratio=0.5, ignored_layers=[model[-1]],
                         bias_compensation=compensate).step()

    assert [model[i].out_channels for i in (0, 3, 7)] == [8, 16, 16]
    params = sum(p.numel() for p in model.parameters())
    assert params < 0.35 * sum(p.numel() for p in base.parameters())
    if not compensate:  # compensation changes biases on purpose: the zeroed-channel proof does not apply
        result = tp.verify(base, model, example)
        assert result.exact, str(result)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(model, data, FINE_TUNE_STEPS, lr=3e-3)
    finally:
        torch.set_num_threads(threads)
    assert data.accuracy(model) >= THRESHOLD, f"{case}: {data.accuracy(model):.3f} (base {base_acc:.3f})"
