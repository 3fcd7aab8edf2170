"""Prune every group of a model a little, round after round, and prove the result."""

from __future__ import annotations

import copy

import torch

import depgraph as tp
from depgraph.trace import call_model, flatten_tensors


def _spread(n: int, k: int) -> list[int]:
    """``k`` indices spread over ``range(n)`` (first, middle, ...), never all of them."""
    k = max(1, min(k, n - 1))
    return sorted({int(i * n / k + n / (2 * k)) % n for i in range(k)})


def randomize_norms(model: torch.nn.Module, seed: int = 0) -> None:
    """Give norm layers non-trivial statistics and affine terms.

    Freshly initialised BatchNorms are the identity per channel (mean 0, var 1,
    weight 1, bias 0), which can hide a wrong channel mapping behind symmetric
    values and, in deep nets, shrink outputs to nothing. Random ones make every
    channel distinguishable, so verify can catch a mismatch.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._NormBase):
                if m.running_var is not None:
                    m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                    m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            if isinstance(m, (torch.nn.modules.batchnorm._NormBase, torch.nn.LayerNorm, torch.nn.GroupNorm)):
                if getattr(m, "weight", None) is not None:
                    m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                if getattr(m, "bias", None) is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)


def prune_every_group(model: torch.nn.Module, example_inputs, per_group: int = 2, rounds: int = 2,
                      root_module_types=(torch.nn.Conv2d, torch.nn.Linear)) -> tp.VerifyResult:
    """Prune ``per_group`` channels from every prunable group, ``rounds`` times, then verify.

    Asserts: at least one group is prunable, every yielded group can be pruned,
    the model runs with unchanged output shapes, and verify is exact wherever it applies.
    """
    randomize_norms(model)
    original = copy.deepcopy(model)
    with torch.no_grad():
        ref_shapes = [t.shape for t in flatten_tensors(call_model(original, example_inputs))]
    with torch.no_grad():
        DG = tp.DependencyGraph().build_dependency(model, example_inputs, verbose=False)
    total = 0
    for _ in range(rounds):
        for group in list(DG.get_all_groups(root_module_types=root_module_types)):
            n = len(group[0].idxs)
            if n < 2:
                continue
            group = DG.get_pruning_group(group[0].dep.target.module, group[0].dep.handler, _spread(n, per_group))
            if not DG.check_pruning_group(group):
                # Coupling widened the removal to a whole layer: try a single channel.
                group = DG.get_pruning_group(group[0].dep.target.module, group[0].dep.handler, [n // 2])
            assert DG.check_pruning_group(group), group.details()
            group.prune()
            total += 1
    assert total > 0, "no prunable group found"
    with torch.no_grad():
        shapes = [t.shape for t in flatten_tensors(call_model(model, example_inputs))]
    assert shapes == ref_shapes
    result = tp.verify(original, model, example_inputs)
    assert result.shapes_match, result
    if result.applies:
        assert result.exact, result
    return result
