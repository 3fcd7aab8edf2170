"""Fixtures for pruner tests.

``prepare`` feeds an importance criterion the data it needs (gradients,
per-sample gradients, activation statistics) so every criterion can run in
the same test. Markers: ``slow`` for large models and the full
criterion x pruner cross; the default run keeps one model per family.
"""

import pytest
import torch
import torch.nn.functional as F

import depgraph.importance as I

#: Every criterion, by a short id, built fresh for each test.
CRITERIA = {
    "magnitude": lambda: I.GroupMagnitudeImportance(p=2),
    "magnitude_l1_max": lambda: I.MagnitudeImportance(p=1, group_reduction="max", normalizer="max"),
    "bn_scale": lambda: I.BNScaleImportance(),
    "lamp": lambda: I.LAMPImportance(),
    "fpgm": lambda: I.FPGMImportance(),
    "random": lambda: I.RandomImportance(generator=torch.Generator().manual_seed(0)),
    "taylor": lambda: I.GroupTaylorImportance(),
    "hessian": lambda: I.GroupHessianImportance(),
    "obdc": lambda: I.OBDCImportance(),
    "activation": lambda: I.ActivationImportance(),
}


def prepare(imp, model, x, n_classes=10):
    """Run what ``imp`` needs (backward passes, statistics) on ``model`` and inputs ``x``."""
    y = torch.arange(x.shape[0]) % n_classes
    if isinstance(imp, I.GroupTaylorImportance):
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
    elif isinstance(imp, I.GroupHessianImportance):
        imp.zero_grad()
        for loss in F.cross_entropy(model(x), y, reduction="none"):
            model.zero_grad()
            loss.backward(retain_graph=True)
            imp.accumulate_grad(model)
    elif isinstance(imp, I.OBDCImportance):
        with imp.collect(model):
            model.zero_grad()
            F.cross_entropy(model(x), y).backward()
    elif isinstance(imp, I.ActivationImportance):
        with imp.compute_importance(model), torch.no_grad():
            model(x)


@pytest.fixture(name="prepare")
def prepare_fixture():
    return prepare
