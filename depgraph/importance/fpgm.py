"""FPGM: filters near the geometric median of their layer are redundant.

A filter close to all the others can be replaced by them, so its score is
its summed distance to the other filters of the same member; small totals
are pruned first. Only the out side of convolutions and linears has filters,
so other members do not contribute.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from .base import CONV_AND_LINEAR, check_power, register_importance
from .channels import ChannelSlice
from .magnitude import SliceImportance
from .reduce import Normalizer, Reduction

if TYPE_CHECKING:  # the graph imports criteria and pruners; only the types are needed here
    from ..dependency.node import Dependency


__all__ = ["FPGMImportance"]


@register_importance("fpgm")
class FPGMImportance(SliceImportance):
    """Channel score = sum of ``p``-norm distances of its filter to the member's other filters.

    Args:
        p: the norm of the distance.
        group_reduction: see
            :class:`~depgraph.importance.GroupImportance`.
        normalizer: as ``group_reduction``.
        target_types: as ``group_reduction``.

    Raises:
        ValueError: ``p <= 0`` or an unknown reduction/normaliser.
    """

    def __init__(
        self,
        p: float = 2,
        group_reduction: Reduction = "mean",
        normalizer: Normalizer = "mean",
        target_types: Sequence[type] | None = None,
    ) -> None:
        types = target_types if target_types is not None else CONV_AND_LINEAR
        super().__init__(group_reduction, normalizer, bias=False, target_types=types)
        self.p = check_power(p)

    def member_scores(self, target: object, side: str, idxs: torch.Tensor, dep: Dependency) -> list[torch.Tensor]:
        """Geometric-median distances of the output filters only (input sides add nothing)."""
        if side != "out":
            return []
        return super().member_scores(target, side, idxs, dep)

    def score_slice(self, sl: ChannelSlice, idxs: torch.Tensor) -> torch.Tensor:
        w = sl.select(sl.param.detach(), idxs).reshape(idxs.numel(), -1).float()  # one filter per row
        return torch.cdist(w[None], w[None], p=self.p)[0].sum(1)
