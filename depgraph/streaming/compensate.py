"""Bias and least-squares compensation in the streamed path: planned on ``meta``, replayed on real layers.

In memory a compensation hook (:mod:`depgraph.importance.compensation`,
:mod:`depgraph.importance.reconstruction`) changes each consumer's bias (and,
for least squares, its kept columns) inside every group prune, right before
the consumer loses its inputs. Streamed, the model is on ``meta``, so the hook
here does what the in-memory one does to *shapes* and logs the *values* for
later:

- it plans the change with the same planning function and the same statistics
  (``plan_bias_compensation`` / ``plan_refits``: channel positions and means or
  covariance rows, read while the meta layer's channel records are those the
  in-memory layer has at that moment);
- it logs the plan as an :class:`~depgraph.streaming.plan.Adjust` step of the
  consumer, before the group's own prune of it, so replaying the consumer's
  steps on its checkpoint tensors (to score a later group or to write it) runs
  the same arithmetic on the same values in the same order;
- it gives the meta consumer the bias the real one gets, so the output layout
  and the config sync (``mlp_bias`` / ``attention_bias``, the in-memory
  :mod:`~depgraph.integrations.hf_bias` hook, attached here too) see it.

The zero biases the config sync gives the rest of a family are logged after the
prune as :class:`~depgraph.streaming.plan.ZeroBias` steps (zeros pruned or
created late are the same zeros).

Statistics are collected by a calibration pass through the meta model with one
layer's weights at a time (:func:`~depgraph.streaming.calibrate.materialize_on_use`).
Least squares measures the layers the in-memory path measures, asked of the same
pruner (:func:`~depgraph.workflow.recipes.shrinkable_linears`): the ``nn.Linear``
layers whose inputs some group the pruner may shrink removes (an LLM's down
projections; its output projections only when heads go), ``(C + 1)^2`` float64
each. They are *all* held at once, outside the weight budget: one forward per batch
accumulates every layer's matrix, and the logged :class:`Adjust` steps keep
them until the last shard is written (each replay of a layer reads its matrix). So the calibration budget
(``calib_memory``) is checked against their sum, before any read.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

from ..importance.compensation import BeforePruneHook, plan_bias_compensation
from ..importance.reconstruction import plan_refits
from .plan import Adjust, PruneLog, ZeroBias

__all__ = ["StreamedCompensation", "log_zero_biases"]


class StreamedCompensation(BeforePruneHook):
    """A before-prune hook of the meta graph: logs each consumer's compensation and gives it a meta bias.

    Args:
        kind: ``"bias"`` (mean of removed inputs into the bias) or ``"lstsq"`` (refit kept columns
            and bias).
        source: returns the statistics at prune time (``CalibrationStats`` for ``"bias"``,
            ``InputCovariance`` for ``"lstsq"``), keyed by the meta model's layers.
        log: the prune log the consumer's :class:`Adjust` steps go into.
        damping: least-squares ridge term.
    """

    def __init__(self, kind: str, source: Callable[[], Any], log: PruneLog, damping: float = 1e-4) -> None:
        self.kind = kind
        self.source = source
        self.log = log
        self.damping = damping

    def __call__(self, graph: Any, items: list) -> None:
        names = {id(it.dep.target.module): it.dep.target.name for it in items}
        if self.kind == "bias":
            plans = plan_bias_compensation(items, self.source())
        else:
            plans = plan_refits(items, self.source(), self.damping)
        for layer, change in plans.items():
            name = names[id(layer)]
            self.log.precede(name, Adjust(change, _label(self.kind, change)))
            if layer.bias is None:  # the real layer gets one when the step is replayed
                w = layer.weight
                layer.bias = nn.Parameter(torch.zeros(w.shape[0], dtype=w.dtype, device=w.device),
                                          requires_grad=False)


def _label(kind: str, change: Any) -> str:
    """What a step's digest records: the positions it compensates (values follow from the data hash)."""
    if kind == "bias":
        return "bias:" + ";".join(",".join(map(str, i.tolist())) for i, _ in change.parts)
    return f"lstsq:{change.damping}:" + ",".join(map(str, change.removed.tolist()))


def log_zero_biases(model: nn.Module, pristine: nn.Module, log: PruneLog) -> None:
    """Log a :class:`ZeroBias` for every layer of the pruned meta ``model`` that gained a bias."""
    before = dict(pristine.named_modules())
    for name, m in model.named_modules():
        if isinstance(getattr(m, "bias", None), torch.Tensor) and getattr(before.get(name), "bias", None) is None:
            log.append(name, ZeroBias())
