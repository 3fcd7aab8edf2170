"""Gradient-based criteria: first-order Taylor and diagonal-Hessian (OBD) scores.

Both estimate the loss increase caused by zeroing a channel's weights:

* Taylor (first order): ``dL ~ |sum w * dL/dw|`` (``multivariable=True``,
  the joint removal of the whole row) or ``sum |w * dL/dw|`` (each weight on
  its own, the default);
* Hessian / Optimal Brain Damage: ``dL ~ 1/2 sum h * w**2`` with the
  diagonal ``h`` approximated by the mean squared per-sample gradient
  (the empirical Fisher), gathered with :meth:`GroupHessianImportance.accumulate_grad`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from ..errors import DepgraphError
from .base import DEFAULT_TARGET_TYPES, register_importance
from .channels import ChannelSlice
from .magnitude import SliceImportance, row_sum
from .reduce import Normalizer, Reduction

__all__ = ["GroupTaylorImportance", "TaylorImportance", "GroupHessianImportance", "HessianImportance"]


def _name(param: torch.Tensor) -> str:
    return str(tuple(param.shape))


@register_importance("taylor")
class GroupTaylorImportance(SliceImportance):
    """First-order Taylor score from the ``.grad`` of a preceding ``loss.backward()``.

    Args:
        multivariable: score a channel by ``|sum(w * g)|`` (the first-order
            change when the whole channel goes) instead of ``sum(|w * g|)``.
        group_reduction, normalizer, bias, target_types: see
            :class:`~depgraph.importance.GroupImportance`.

    Raises:
        DepgraphError (when called): a scored parameter has no gradient; run
            ``loss.backward()`` on a batch first.

    Example:
        >>> loss = criterion(model(x), y); loss.backward()
        >>> GroupTaylorImportance()(group)
    """

    def __init__(
        self,
        group_reduction: Reduction = "mean",
        normalizer: Normalizer = "mean",
        multivariable: bool = False,
        bias: bool = False,
        target_types: Sequence[type] | None = DEFAULT_TARGET_TYPES,
    ) -> None:
        super().__init__(group_reduction, normalizer, bias, target_types)
        self.multivariable = bool(multivariable)

    def score_slice(self, sl: ChannelSlice, idxs: torch.Tensor) -> torch.Tensor | None:
        param = sl.param
        if param.grad is None and not param.requires_grad:
            return None  # a frozen parameter carries no gradient signal
        if param.grad is None:
            raise DepgraphError(
                f"{type(self).__name__} needs gradients, but the parameter of shape {_name(param)} "
                "has no .grad; call loss.backward() on a batch before estimating importance "
                "(and do not run under torch.no_grad())"
            )
        wg = sl.select(param.detach(), idxs) * sl.select(param.grad.detach(), idxs)
        return row_sum(wg).abs() if self.multivariable else row_sum(wg.abs())


class TaylorImportance(GroupTaylorImportance):
    """Alias of :class:`GroupTaylorImportance`."""


@register_importance("hessian")
class GroupHessianImportance(SliceImportance):
    """Optimal Brain Damage with the diagonal Hessian estimated from per-sample gradients.

    Gradients must come one sample at a time: the mean of squared per-sample
    gradients estimates the Hessian diagonal, while the square of a batch
    gradient does not. The accumulated statistics belong to the current
    parameter shapes: after pruning, call :meth:`zero_grad` and accumulate
    again.

    Example:
        >>> imp = GroupHessianImportance()
        >>> imp.zero_grad()
        >>> for loss in loss_fn(model(x), y, reduction="none"):
        ...     model.zero_grad()
        ...     loss.backward(retain_graph=True)
        ...     imp.accumulate_grad(model)
        >>> imp(group)

    Raises:
        DepgraphError (when called): nothing was accumulated for a scored
            parameter, or it changed shape since.
    """

    def __init__(
        self,
        group_reduction: Reduction = "mean",
        normalizer: Normalizer = "mean",
        bias: bool = False,
        target_types: Sequence[type] | None = DEFAULT_TARGET_TYPES,
    ) -> None:
        super().__init__(group_reduction, normalizer, bias, target_types)
        self._sq_grad: dict[torch.Tensor, torch.Tensor] = {}
        self._count: dict[torch.Tensor, int] = {}

    def zero_grad(self) -> None:
        """Forget every accumulated gradient."""
        self._sq_grad = {}
        self._count = {}

    @torch.no_grad()
    def accumulate_grad(self, model: nn.Module) -> None:
        """Add the squares of the current ``.grad`` of every parameter of ``model``."""
        for param in model.parameters():
            if param.grad is None:
                continue
            sq = param.grad.detach().pow(2)
            prev = self._sq_grad.get(param)
            if prev is not None and prev.shape != sq.shape:
                prev = None  # the parameter was pruned: start over for it
            self._sq_grad[param] = sq.clone() if prev is None else prev + sq
            self._count[param] = 1 if prev is None else self._count[param] + 1

    def hessian_diagonal(self, param: torch.Tensor) -> torch.Tensor:
        """Mean squared per-sample gradient of ``param``."""
        sq = self._sq_grad.get(param)
        if sq is None or sq.shape != param.shape:
            raise DepgraphError(
                f"{type(self).__name__} has no accumulated gradients for the parameter of shape "
                f"{_name(param)}; for each sample run backward() then imp.accumulate_grad(model) "
                "(again after pruning, since the statistics follow the parameter shapes)"
            )
        return sq / self._count[param]

    def score_slice(self, sl: ChannelSlice, idxs: torch.Tensor) -> torch.Tensor:
        h = self.hessian_diagonal(sl.param)
        return row_sum(sl.select(sl.param.detach(), idxs).pow(2) * sl.select(h, idxs)) / 2


class HessianImportance(GroupHessianImportance):
    """Alias of :class:`GroupHessianImportance`."""
