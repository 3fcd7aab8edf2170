"""Weight-magnitude criteria: group norm, BN scale, LAMP, and random scores.

The magnitude of a channel is ``sum(|w|**p)`` over every weight removed with
it (the p-th power, not the p-norm: powers add up across the members of a
group, norms would not).
"""

from __future__ import annotations

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
    if x.is_contiguous():  # each channel's entries are one contiguous row: the fused norm is fastest
        return torch.linalg.vector_norm(x.float(), ord=p, dim=dims).pow(p)
    # A strided channel view (the input side of a conv or linear, channels along dim 1): the
    # norm kernel walks it entry by entry, ~5x slower than summing the powers over the other dims.
    x = x.float()
    return (x * x if p == 2 else x.abs().pow(p)).sum(dim=dims)


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
