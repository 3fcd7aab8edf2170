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
  over the whole group: weak channels are pushed up to ``alpha`` times harder
  (``alpha``: the argument of ``regularize``, default ``2**4``).
* :class:`GrowingRegPruner`: ``grad(w_k) += r_k * w_k`` where ``r_k`` starts
  at ``reg`` and grows by ``delta_reg * (s_max - s_k) / (s_max - s_min)``
  (``s_k = n_k**2``) at every :meth:`GrowingRegPruner.update_reg`.

The second argument of ``regularize`` is, as in Torch-Pruning, a strength
(``BNScalePruner``: ``reg``; ``GroupNormPruner``: ``alpha``, default ``2**4``,
which - there as here - sets the scaling rather than the constructor's
``alpha``); ``bias=True`` penalises biases too.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from .._types import CHANNEL_SIDES
from ..errors import OptionTypeError
from ..importance.base import member_indices, root_lookup, root_positions
from ..importance.channels import ChannelSlice, channel_slices
from ..importance.magnitude import power_sum
from .base import BasePruner
from .options import PrunerOptions

if TYPE_CHECKING:  # the graph imports criteria and pruners; only the types are needed here
    from ..dependency.group import Group


__all__ = ["BNScalePruner", "GroupNormPruner", "GrowingRegPruner"]

_EPS = 1e-12


def _member_slices(
    group: Group, types: tuple = (), bias: bool = False, skip: frozenset[int] = frozenset()
) -> Iterator[tuple[ChannelSlice, torch.Tensor, torch.Tensor]]:
    """``(slice, member idxs, root positions)`` for every weight (and with ``bias``, bias) slice.

    Members whose module id is in ``skip`` (ignored layers) are left out.
    """
    _, table = root_lookup(group)
    for item in group.items:
        dep = item.dep
        side = dep.side
        if side not in CHANNEL_SIDES or (types and not isinstance(dep.target.module, types)) or id(dep.target.module) in skip:
            continue
        idxs, roots = member_indices(item)
        pos = root_positions(table, roots)
        keep = pos >= 0
        for sl in channel_slices(dep.target.module, side, getattr(dep.target, "pruning_dim", None)):
            if bias or not sl.is_bias:
                yield sl, idxs[keep], pos[keep]


def _group_sq_norm(group: Group, types: tuple = ()) -> torch.Tensor:
    """Squared L2 norm of all weights of each root channel, summed over the group."""
    total = torch.zeros(len(group[0].idxs))
    for sl, idxs, pos in _member_slices(group, types):
        sq = power_sum(sl.select(sl.param.detach(), idxs), 2).float().cpu()
        total.index_add_(0, pos, sq)
    return total


def _add_scaled_weight(
    group: Group, scale: torch.Tensor, types: tuple = (), bias: bool = False, skip: frozenset[int] = frozenset()
) -> None:
    """``grad += scale[root(k)] * w`` on every weight (and with ``bias``, bias) entry of the group's channels."""
    for sl, idxs, pos in _member_slices(group, types, bias, skip):
        grad = sl.param.grad
        if grad is None:
            continue
        where = sl.flat_positions(idxs)  # (n, k) flat positions
        s = scale.to(sl.param.device, sl.param.dtype)[pos.to(sl.param.device)][:, None]
        grad.view(-1).index_add_(0, where.flatten(), (sl.param.detach().view(-1)[where] * s).flatten())


def _spread(norm: torch.Tensor, eps: float = _EPS) -> torch.Tensor:
    """``(n_max - n) / (n_max - n_min)``: 0 for the strongest channel, 1 for the weakest."""
    return (norm.max() - norm) / (norm.max() - norm.min() + eps)


def _check_strength(name: str, value: Any) -> None:
    """The second argument of ``regularize`` is a strength, as in Torch-Pruning, never the loss."""
    if isinstance(value, torch.Tensor) or isinstance(value, bool) or not isinstance(value, (int, float)):
        raise OptionTypeError(
            f"regularize(model, {name}): {name} is the penalty strength (a number), got "
            f"{type(value).__name__}; call regularize(model) after loss.backward() - it does not need the loss"
        )


def _ignored_ids(pruner: BasePruner) -> frozenset[int]:
    """Ids of the ignored layers and their sub-modules (never regularised, as in the original)."""
    return frozenset(id(m) for layer in pruner.ignored_layers for m in layer.modules())


def extends_base_signature(init: Callable) -> Callable:
    """Show a subclass ``__init__`` as its own parameters followed by every ``BasePruner`` one.

    The subclass takes ``(self, model, example_inputs, importance, <its own>, *args, **kwargs)``
    and forwards ``*args`` / ``**kwargs``, so positional calls written for the
    original's subclasses (which repeat the whole base signature) bind the same way.
    """
    own = [p for p in inspect.signature(init).parameters.values()
           if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)]
    base = list(inspect.signature(BasePruner.__init__).parameters.values())[4:]
    init.__signature__ = inspect.signature(init).replace(parameters=own + base)
    return init


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

    @extends_base_signature
    def __init__(
        self,
        model: nn.Module,
        example_inputs: Any,
        importance: Any,
        reg: float = 1e-5,
        group_lasso: bool = False,
        *args: Any,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, example_inputs, importance, *args, reg=reg, group_lasso=group_lasso, **kwargs)

    @property
    def reg(self) -> float:
        """The original's attribute: the L1 penalty coefficient on the norm scales."""
        return self.options.reg

    @property
    def group_lasso(self) -> bool:
        """The original's attribute: whether the penalty is a group lasso over coupled scales."""
        return self.options.group_lasso

    @torch.no_grad()
    def regularize(self, model: nn.Module, reg: float | None = None, bias: bool = False) -> None:
        """Add the sparsity gradient of the batch-norm scales (after ``backward``, before the optimizer).

        Args:
            model: the model being trained (its batch norms outside ``ignored_layers`` are penalised).
            reg: strength for this call (default: the constructor's ``reg``).
            bias: also push the batch-norm shifts to zero (``reg * sign(beta)``, or the
                group-lasso term with ``group_lasso=True``).

        Raises:
            OptionTypeError (a TypeError): ``reg`` is not a number (e.g. the loss, passed where Torch-Pruning takes the strength).
        """
        reg = self.options.reg if reg is None else reg
        _check_strength("reg", reg)
        skip = _ignored_ids(self)
        bn_types = (nn.modules.batchnorm._BatchNorm,)
        if not self.options.group_lasso:
            for m in model.modules():
                if not isinstance(m, bn_types) or not m.affine or id(m) in skip:
                    continue
                for p in (m.weight, m.bias) if bias else (m.weight,):
                    if p is not None and p.grad is not None:
                        p.grad.add_(reg * torch.sign(p.detach()))
            return
        for group in self._groups:
            norm = _group_sq_norm(group, bn_types).sqrt()
            _add_scaled_weight(group, reg / (norm + _EPS), bn_types, bias, skip)


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

    @extends_base_signature
    def __init__(
        self,
        model: nn.Module,
        example_inputs: Any,
        importance: Any,
        reg: float = 1e-4,
        alpha: float = 4,
        *args: Any,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, example_inputs, importance, *args, reg=reg, alpha=alpha, **kwargs)

    @property
    def reg(self) -> float:
        """The original's attribute: the group-norm penalty coefficient."""
        return self.options.reg

    @property
    def alpha(self) -> float:
        """The original's attribute: how strongly the penalty grows across a group's channels."""
        return self.options.alpha

    @torch.no_grad()
    def regularize(self, model: nn.Module, alpha: float = 2**4, bias: bool = False) -> None:
        """Add ``reg * alpha**spread_k * w`` to every weight gradient of each group's channel ``k``.

        Args:
            model: the model being trained.
            alpha: the weakest channel's pressure relative to the strongest; as in
                Torch-Pruning this argument (default ``2**4``) sets it, not the constructor's ``alpha``.
            bias: also penalise the biases of the channels' producers and norms.

        Raises:
            OptionTypeError (a TypeError): ``alpha`` is not a number (e.g. the loss).
        """
        _check_strength("alpha", alpha)
        for group in self._groups:
            norm = _group_sq_norm(group).sqrt()
            _add_scaled_weight(group, self.options.reg * alpha ** _spread(norm), bias=bias)


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

    @extends_base_signature
    def __init__(
        self,
        model: nn.Module,
        example_inputs: Any,
        importance: Any,
        reg: float = 1e-5,
        delta_reg: float = 1e-5,
        *args: Any,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, example_inputs, importance, *args, reg=reg, delta_reg=delta_reg, **kwargs)

    @property
    def base_reg(self) -> float:
        """The original's attribute: the penalty every channel starts with."""
        return self.options.reg

    @property
    def delta_reg(self) -> float:
        """The original's attribute: how much the penalty of weak channels grows per update."""
        return self.options.delta_reg

    def update_regularizer(self) -> None:
        super().update_regularizer()
        self._reg = [torch.full((len(g[0].idxs),), float(self.options.reg)) for g in self._groups]

    @torch.no_grad()
    def update_reg(self) -> None:
        """Grow each channel's strength by ``delta_reg`` times its weakness in [0, 1].

        Weakness is measured on the squared group norm, as Torch-Pruning measures it
        with its default (squared-L2) importance.
        """
        for k, group in enumerate(self._groups):
            self._reg[k] = self._reg[k] + self.options.delta_reg * _spread(_group_sq_norm(group), 1e-8)

    @torch.no_grad()
    def regularize(self, model: nn.Module, bias: bool = False) -> None:
        """Add ``r_k * w`` to every weight gradient of each group's channel ``k`` (``bias``: biases too)."""
        if not isinstance(bias, bool):
            raise OptionTypeError(
                f"regularize(model, bias): bias must be True or False, got {type(bias).__name__}; "
                "call regularize(model) after loss.backward() - it does not need the loss"
            )
        for group, reg in zip(self._groups, self._reg, strict=True):
            _add_scaled_weight(group, reg, bias=bias)
