"""Prune every group of a model a little, round after round, and prove the result."""

from __future__ import annotations

import torch

import depgraph as tp
from tests._checks import prune_all_groups


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


def prune_every_group(model: torch.nn.Module, example_inputs, rounds: int = 1, **kwargs) -> tp.VerifyResult:
    """Randomise norm layers, then prune a couple of channels of every group, ``rounds`` times, and verify.

    Exact wherever exactness applies (no norm over a pruned dim), shapes unchanged otherwise.
    The per-prune forward check is off: one bad group would then fail the final
    forward and ``verify`` instead of being rolled back, which is what a test wants
    (and it keeps the zoo fast).
    """
    randomize_norms(model)
    kwargs.setdefault("check_forward", False)
    return prune_all_groups(model, example_inputs, n_per_group=2, rounds=rounds, exact=None, **kwargs).result
