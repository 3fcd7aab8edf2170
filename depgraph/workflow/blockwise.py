"""Prune a model's stack of blocks one block at a time, each calibrated on the already pruned blocks' outputs.

The one-pass reconstruction recipe measures every refit layer on the unpruned model and holds
all their Gram matrices until the last prune; here block ``i`` is measured, scored, pruned and
refit before block ``i + 1`` is measured (:class:`~depgraph.importance.BlockwiseCalibration`),
so one block's Gram matrices are held at a time. Every group is pruned at the ratio the one-pass
path would prune it at (per-group allocation decides a group's width from the ratio alone), so
a target search with any criterion finds the ratio (:func:`search_stand_in`), and only the
chosen channels and the refit weights differ. Groups not inside one block are kept whole
(:func:`cross_block_roots`).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn as nn

from ..errors import OptionError
from .recipes import Scoring, linear_consumers

__all__ = ["prune_blockwise", "search_stand_in", "cross_block_roots"]


def cross_block_roots(model: nn.Module, keep: Sequence[nn.Module], example_inputs: Any,
                      pruner_kwargs: dict[str, Any] | None = None) -> list[nn.Module]:
    """One layer per group not inside one block, whose outputs are kept so that the group stays whole.

    A residual stream runs through every block, a classifier's inputs come from the last one, a
    group may lie outside the stack: no block's calibration sees all of such a group, so block by
    block leaves it. Kept before the target search too, the search counts the same groups as the
    prune that follows it.
    """
    from ..importance import GroupMagnitudeImportance, block_members
    from ..pruner import BasePruner

    where = block_members(model)
    modules = set(model.modules())
    # the channel groups a step plans: whole heads go per attention layer (inside a block) and, with
    # head dims kept, the head-dim groups (coupled across layers by a shared rotary table) are left whole
    channels = dict(pruner_kwargs or {}, prune_num_heads=False, head_pruning_ratio=0.0)
    pruner = BasePruner(model, example_inputs, GroupMagnitudeImportance(), pruning_ratio=0.0,
                        ignored_layers=list(keep), **channels)
    roots = []
    for group in pruner.shrinkable_groups():
        members = [(dep.target.module, dep.handler) for dep, _ in group if dep.target.module in modules]
        places = {where.get(m, -1) for m, _ in members}
        if len(places) > 1 or -1 in places:
            outs = [m for m, fn in members if pruner.DG.is_out_channel_pruning_fn(fn)]
            roots.append(outs[0] if outs else members[0][0])
    return list(dict.fromkeys(roots))


@torch.no_grad()
def search_stand_in(model: nn.Module, keep: Sequence[nn.Module], example_inputs: Any,
                    pruner_kwargs: dict[str, Any] | None = None) -> tuple[nn.Module, Scoring, list[nn.Module]]:
    """A copy of ``model`` to search the ratio of a target on, with magnitude scoring, and its kept layers.

    Widths per group follow the ratio alone, so any criterion finds the same ratio, except that
    a least-squares refit gives a bias to every refit layer without one (and, in a Hugging Face
    model, to the rest of that layer's projection family, so the config can say so): the copy
    gets those biases (zeros) up front, so the parameters and MACs the search counts are the
    pruned model's.
    """
    from ..importance import GroupMagnitudeImportance
    from ..integrations.hf_bias import BiasFlagSync

    stand_in, scoring, keep2 = Scoring(GroupMagnitudeImportance(p=2), None).copy_with(model, keep)
    flags = BiasFlagSync(stand_in)
    for layer in linear_consumers(stand_in, example_inputs, keep2, pruner_kwargs):
        if layer.bias is None:
            w = layer.weight
            layer.bias = nn.Parameter(w.new_zeros(w.shape[0]), requires_grad=w.requires_grad)
    with warnings.catch_warnings():  # a bias no config flag covers is the real prune's to report
        warnings.simplefilter("ignore", UserWarning)
        flags.sync()
    return stand_in, scoring, keep2


def prune_blockwise(
    model: nn.Module,
    keep: Sequence[nn.Module],
    batches: Sequence[Any],
    example_inputs: Any,
    make_pruner: Callable[[nn.Module, Scoring, Sequence[nn.Module], float], Any],
    ratio: float,
    pruner_kwargs: dict[str, Any] | None = None,
    on_block: Callable[[int, int], None] | None = None,
) -> nn.Module:
    """A copy of ``model`` pruned block by block, with reconstruction + least squares at ``ratio``.

    Args:
        model: the unpruned model (left unchanged).
        keep: layers of ``model`` whose outputs are kept.
        batches: calibration batches.
        example_inputs: the pruner's example inputs.
        make_pruner: ``(model, scoring, keep, ratio) -> pruner`` with per-group allocation.
        ratio: the pruning ratio of every group.
        pruner_kwargs: the pruner's attention settings, as
            :func:`~depgraph.workflow.recipes.linear_consumers` takes them.
        on_block: called with ``(block index, number of blocks)`` after each block (progress).

    Returns:
        The pruned copy.

    Raises:
        OptionError: a refit layer lies outside the model's stack of blocks.
        DepgraphError: the model has no stack of blocks, or they are not a chain.
    """
    from ..importance import BlockwiseCalibration, InputCovariance, LeastSquares, ReconstructionImportance

    pruned, keep2 = copy.deepcopy((model, list(keep)))
    consumers = linear_consumers(pruned, example_inputs, keep2, pruner_kwargs)
    calib = BlockwiseCalibration(pruned, batches)
    by_block = calib.layers_in(consumers)
    outside = by_block.pop(-1, [])
    if outside:
        names = {m: n for n, m in pruned.named_modules()}
        raise OptionError(f"block-by-block pruning refits layers inside the stack {calib.name!r} only; "
                          f"{', '.join(names.get(m, type(m).__name__) for m in outside[:4])} lie outside it: "
                          "keep them (ignore=...) or prune in one pass")
    cov = InputCovariance()  # one block's records at a time, read by the criterion and the refit
    pruner = make_pruner(pruned, Scoring(ReconstructionImportance(cov), LeastSquares(cov)), keep2, ratio)
    for i in range(len(calib)):
        layers = by_block.get(i)
        if layers:
            calib.covariance(layers, into=cov)
            # every group is decided now, the others by a magnitude fallback: only this block's are pruned;
            # pruned groups lose nothing more at the next step (widths count from the initial ones)
            for group in pruner.step(interactive=True):
                if calib.holds(dep.target.module for dep, _ in group):
                    group.prune()
            pruner.reset()
            cov.discard(layers)
        calib.advance()
        if on_block is not None:
            on_block(i, len(calib))
    return pruned
