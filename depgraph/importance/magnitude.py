"""Weight-magnitude criteria: group norm, BN scale, LAMP, and random scores.

The magnitude of a channel is ``sum(|w|**p)`` over every weight removed with
it (the p-th power, not the p-norm: powers add up across the members of a
group, norms would not).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from .base import DEFAULT_TARGET_TYPES, GroupImportance, Importance, check_power, register_importance
from .channels import ChannelSlice, channel_slices
from .reduce import Normalizer, Reduction

if TYPE_CHECKING:  # the graph imports criteria and pruners; only the types are needed here
    from ..dependency.group import Group
    from ..dependency.node import Dependency


__all__ = [
    "GroupMagnitudeImportance",
    "MagnitudeImportance",
    "GroupNormImportance",
    "BNScaleImportance",
    "LAMPImportance",
    "RandomImportance",
]


def power_sum(x: torch.Tensor, p: float) -> torch.Tensor:
    """``sum |x|**p`` over every dim but the first, in one pass."""
    if x.dim() == 1:
        return x.abs().pow(p)
    dims = tuple(range(1, x.dim()))
    x = x.float()
    if x.is_contiguous():  # each channel's entries are one contiguous row: the fused norm is fastest
        return torch.linalg.vector_norm(x, ord=p, dim=dims).pow(p)
    home = _contiguous_home(x)
    if home is None:
        return _powers(x, p).sum(dim=dims)
    # The channel dim of a contiguous tensor moved to the front (the input side of a conv or
    # linear). A reduction over that strided view walks it entry by entry, and the powers of a
    # whole weight are a weight-sized temporary (fresh pages in a new process); summing the
    # leading dims in blocks of contiguous rows is ~3x faster and needs one block's memory.
    laid = x.movedim(0, home)
    rows = laid.reshape(math.prod(laid.shape[:home]), -1)
    total = rows.new_zeros(rows.shape[1])
    block = max(1, _BLOCK_ELEMENTS // max(rows.shape[1], 1))
    for start in range(0, rows.shape[0], block):
        total += _powers(rows[start : start + block], p).sum(dim=0)
    return total.reshape(x.shape[0], -1).sum(dim=1)


_BLOCK_ELEMENTS = 1 << 18  # 1 MB of float32 per block: cache-sized, reused from one block to the next


def _powers(x: torch.Tensor, p: float) -> torch.Tensor:
    return x * x if p == 2 else x.abs().pow(p)


def _contiguous_home(x: torch.Tensor) -> int | None:
    """The position ``k > 0`` that puts dim 0 of ``x`` back into a contiguous layout, if any."""
    if x.numel() == 0:
        return None
    for k in range(1, x.dim()):
        if x.movedim(0, k).is_contiguous():
            return k
    return None


def row_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum over every dim but the first."""
    return x if x.dim() == 1 else x.sum(dim=tuple(range(1, x.dim())))


class SliceImportance(GroupImportance):
    """A criterion computed from per-channel rows of the member's parameters.

    Subclasses implement :meth:`score_slice`; this class picks the weight and,
    with ``bias=True``, the bias rows of each member (see
    :mod:`depgraph.importance.channels`).
    """

    def score_slice(self, sl: ChannelSlice, idxs: torch.Tensor) -> torch.Tensor | None:
        """Scores ``(len(idxs),)`` from one parameter view; None to skip it."""
        raise NotImplementedError

    def member_scores(self, target: object, side: str, idxs: torch.Tensor, dep: Dependency) -> list[torch.Tensor]:
        out = []
        dim = getattr(dep.target, "pruning_dim", None)
        for sl in channel_slices(target, side, dim):
            if sl.is_bias and not self.bias:
                continue
            s = self.score_slice(sl, idxs.to(sl.param.device))
            if s is not None:
                out.append(s)
        return out


@register_importance("magnitude")
class GroupMagnitudeImportance(SliceImportance):
    """Channel score = ``sum |w|**p`` over the channel's weights in every group member.

    Args:
        p: the power of the magnitude (1: L1, 2: L2).
        group_reduction: see
            :class:`~depgraph.importance.GroupImportance`.
        normalizer: as ``group_reduction``.
        bias: as ``group_reduction``.
        target_types: as ``group_reduction``.

    Raises:
        ValueError: ``p <= 0``, or an unknown reduction/normaliser.

    Example:
        >>> imp = GroupMagnitudeImportance(p=2)
        >>> group = DG.get_pruning_group(model.conv1, tp.prune_conv_out_channels, idxs=[2, 6, 9])
        >>> imp(group).shape
        torch.Size([3])
    """

    def __init__(
        self,
        p: float = 2,
        group_reduction: Reduction = "mean",
        normalizer: Normalizer = "mean",
        bias: bool = False,
        target_types: Sequence[type] | None = DEFAULT_TARGET_TYPES,
    ) -> None:
        super().__init__(group_reduction, normalizer, bias, target_types)
        self.p = check_power(p)

    def score_slice(self, sl: ChannelSlice, idxs: torch.Tensor) -> torch.Tensor:
        return power_sum(sl.select(sl.param.detach(), idxs), self.p)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p}, {super().__repr__().split('(', 1)[1]}"


class MagnitudeImportance(GroupMagnitudeImportance):
    """Alias of :class:`GroupMagnitudeImportance` (the original's name)."""


class GroupNormImportance(GroupMagnitudeImportance):
    """Alias of :class:`GroupMagnitudeImportance` (the name used by the group-norm paper)."""


@register_importance("bn_scale")
class BNScaleImportance(GroupMagnitudeImportance):
    """Network slimming: channel score = ``|gamma|`` of the batch norms in the group.

    Groups without a batch norm get no score (``None``) and are not pruned by
    this criterion.
    """

    def __init__(
        self,
        group_reduction: Reduction = "mean",
        normalizer: Normalizer = "mean",
        *,
        bias: bool = False,
        target_types: Sequence[type] | None = None,
    ) -> None:
        types = target_types if target_types is not None else (nn.modules.batchnorm._BatchNorm,)
        super().__init__(
            p=1, group_reduction=group_reduction, normalizer=normalizer, bias=bias, target_types=types
        )


@register_importance("lamp")
class LAMPImportance(GroupMagnitudeImportance):
    """Layer-adaptive magnitude pruning: magnitudes normalised by the LAMP rule.

    A channel's LAMP score is its magnitude divided by the total magnitude of
    all channels at least as large, which makes scores comparable across
    groups of different sizes for global ranking.
    """

    def __init__(
        self,
        p: float = 2,
        group_reduction: Reduction = "mean",
        normalizer: Normalizer = "lamp",
        bias: bool = False,
        *,
        target_types: Sequence[type] | None = None,
    ) -> None:
        super().__init__(p, group_reduction, normalizer, bias, target_types)


@register_importance("random")
class RandomImportance(Importance):
    """Uniform random scores: the baseline every criterion should beat.

    Args:
        generator: **(new)** an optional ``torch.Generator`` for reproducible choices.
    """

    def __init__(self, *, generator: torch.Generator | None = None) -> None:
        self.generator = generator

    @torch.no_grad()
    def __call__(self, group: Group, **kwargs: Any) -> torch.Tensor:
        return torch.rand(len(group[0].idxs), generator=self.generator)

    def __repr__(self) -> str:
        return "RandomImportance()"
