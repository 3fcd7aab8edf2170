"""Sparse-training pruners: ``regularize`` adds sparsity gradients before pruning.

Use::

    for x, y in loader:
        loss = criterion(model(x), y)
        loss.backward()
        pruner.regularize(model)     # after backward, before the optimizer step
        optimizer.step(); optimizer.zero_grad()
    pruner.step()

Formulas (``w_k``: every weight of root channel ``k`` in every member, as
the importance module slices them; ``gamma``: batch-norm scales):

* :class:`BNScalePruner` (network slimming): ``grad(gamma) += reg * sign(gamma)``;
  with ``group_lasso=True``, ``grad(gamma_k) += reg * gamma_k / ||gamma_k||``,
  the norm taken over the batch norms of the group sharing channel ``k``.
* :class:`GroupNormPruner` (DepGraph): ``grad(w_k) += reg * a_k * w_k`` with
  ``a_k = alpha ** ((n_max - n_k) / (n_max - n_min))``, ``n_k = ||w_k||_2``
  over the whole group: weak channels are pushed up to ``alpha`` times harder.
* :class:`GrowingRegPruner`: ``grad(w_k) += r_k * w_k`` where ``r_k`` starts
  at ``reg`` and grows by ``delta_reg * (n_max - n_k) / (n_max - n_min)``
  at every :meth:`GrowingRegPruner.update_reg`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from ..importance.channels import ChannelSlice, channel_slices, handler_side
from ..importance.magnitude import power_sum
from .base import BasePruner
from .options import PrunerOptions

if TYPE_CHECKING:  # the graph imports criteria and pruners; only the types are needed here
    from ..dependency.group import Group


__all__ = ["BNScalePruner", "GroupNormPruner", "GrowingRegPruner"]

_EPS = 1e-12


def _member_slices(
    group: Group, types: tuple = ()
) -> Iterator[tuple[ChannelSlice, torch.Tensor, torch.Tensor]]:
    """``(slice, member idxs, root positions)`` for every weight slice of every member."""
    position = {int(r): k for k, r in enumerate(group[0].idxs)}
    for item in group.items:
        dep = item.dep
        side = handler_side(dep.handler)
        if side is None or (types and not isinstance(dep.target.module, types)):
            continue
        idxs = torch.as_tensor(list(item.idxs), dtype=torch.long)
        pos = torch.as_tensor([position.get(int(r), -1) for r in item.root_idxs], dtype=torch.long)
        keep = pos >= 0
        for sl in channel_slices(dep.target.module, side, getattr(dep.target, "pruning_dim", None)):
            if not sl.is_bias:
                yield sl, idxs[keep], pos[keep]


def _group_sq_norm(group: Group, types: tuple = ()) -> torch.Tensor:
    """Squared L2 norm of all weights of each root channel, summed over the group."""
    total = torch.zeros(len(group[0].idxs))
    for sl, idxs, pos in _member_slices(group, types):
        sq = power_sum(sl.select(sl.param.detach(), idxs), 2).float().cpu()
        total.index_add_(0, pos, sq)
    return total


def _add_scaled_weight(group: Group, scale: torch.Tensor, types: tuple = ()) -> None:
    """``grad += scale[root(k)] * w`` on every weight entry of the group's channels."""
    for sl, idxs, pos in _member_slices(group, types):
        grad = sl.param.grad
        if grad is None:
            continue
        where = sl.flat_positions(idxs)  # (n, k) flat positions
        s = scale.to(sl.param.device, sl.param.dtype)[pos.to(sl.param.device)][:, None]
        grad.view(-1).index_add_(0, where.flatten(), (sl.param.detach().view(-1)[where] * s).flatten())


def _spread(norm: torch.Tensor) -> torch.Tensor:
    """``(n_max - n) / (n_max - n_min)``: 0 for the strongest channel, 1 for the weakest."""
    return (norm.max() - norm) / (norm.max() - norm.min() + _EPS)


@dataclass(frozen=True)
class BNScaleOptions(PrunerOptions):
    reg: float = 1e-5
    group_lasso: bool = False

    def validate(self, problems: list[str]) -> None:
        super().validate(problems)
        if not isinstance(self.reg, (int, float)) or self.reg < 0:
            problems.append(f"reg must be a non-negative number, got {self.reg!r}")


class BNScalePruner(BasePruner):
    """Network slimming: L1 (or group-lasso) sparsity on batch-norm scales, then pruning."""

    options_class = BNScaleOptions

    def __init__(
        self,
        model: nn.Module,
        example_inputs: Any,
        importance: Any,
        reg: float = 1e-5,
        group_lasso: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, example_inputs, importance, reg=reg, group_lasso=group_lasso, **kwargs)

    @torch.no_grad()
    def regularize(
        self, model: nn.Module, loss: torch.Tensor | None = None, reg: float | None = None
    ) -> None:
        reg = self.options.reg if reg is None else reg
        bn_types = (nn.modules.batchnorm._BatchNorm,)
        if not self.options.group_lasso:
            for m in model.modules():
                if isinstance(m, bn_types) and m.weight is not None and m.weight.grad is not None:
                    m.weight.grad.add_(reg * torch.sign(m.weight.detach()))
            return
        for group in self._groups:
            norm = _group_sq_norm(group, bn_types).sqrt()
            _add_scaled_weight(group, reg / (norm + _EPS), bn_types)


@dataclass(frozen=True)
class GroupNormOptions(PrunerOptions):
    reg: float = 1e-4
    alpha: float = 4.0

    def validate(self, problems: list[str]) -> None:
        super().validate(problems)
        if not isinstance(self.reg, (int, float)) or self.reg < 0:
            problems.append(f"reg must be a non-negative number, got {self.reg!r}")
        if not isinstance(self.alpha, (int, float)) or self.alpha < 1:
            problems.append(f"alpha must be >= 1 (1 disables the scaling), got {self.alpha!r}")


class GroupNormPruner(BasePruner):
    """DepGraph's sparse training: group-level L2 pressure scaled up on weak channels."""

    options_class = GroupNormOptions

    def __init__(
        self,
        model: nn.Module,
        example_inputs: Any,
        importance: Any,
        reg: float = 1e-4,
        alpha: float = 4,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, example_inputs, importance, reg=reg, alpha=alpha, **kwargs)

    @torch.no_grad()
    def regularize(self, model: nn.Module, loss: torch.Tensor | None = None) -> None:
        opts = self.options
        for group in self._groups:
            norm = _group_sq_norm(group).sqrt()
            _add_scaled_weight(group, opts.reg * opts.alpha ** _spread(norm))


@dataclass(frozen=True)
class GrowingRegOptions(PrunerOptions):
    reg: float = 1e-5
    delta_reg: float = 1e-5

    def validate(self, problems: list[str]) -> None:
        super().validate(problems)
        for name in ("reg", "delta_reg"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or v < 0:
                problems.append(f"{name} must be a non-negative number, got {v!r}")


class GrowingRegPruner(BasePruner):
    """Growing regularisation: per-channel L2 strength that grows on weak channels."""

    options_class = GrowingRegOptions

    def __init__(
        self,
        model: nn.Module,
        example_inputs: Any,
        importance: Any,
        reg: float = 1e-5,
        delta_reg: float = 1e-5,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, example_inputs, importance, reg=reg, delta_reg=delta_reg, **kwargs)

    def update_regularizer(self) -> None:
        super().update_regularizer()
        self._reg = [torch.full((len(g[0].idxs),), float(self.options.reg)) for g in self._groups]

    @torch.no_grad()
    def update_reg(self) -> None:
        """Grow each channel's strength by ``delta_reg`` times its weakness in [0, 1]."""
        for k, group in enumerate(self._groups):
            self._reg[k] = self._reg[k] + self.options.delta_reg * _spread(_group_sq_norm(group).sqrt())

    @torch.no_grad()
    def regularize(self, model: nn.Module, loss: torch.Tensor | None = None) -> None:
        for group, reg in zip(self._groups, self._reg, strict=True):
            _add_scaled_weight(group, reg)
