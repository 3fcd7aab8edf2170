"""FPGM: filters near the geometric median of their layer are redundant.

A filter close to all the others can be replaced by them, so its score is
its summed distance to the other filters of the same member; small totals
are pruned first. As in Torch-Pruning, a channel's "filter" is its weights
raised to ``|w|**p`` and distances are Euclidean; the out side of a
convolution or linear contributes its rows, the in side its columns; norms
and biases do not contribute.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .base import CONV_AND_LINEAR, check_power, register_importance
from .channels import ChannelSlice
from .magnitude import SliceImportance
from .reduce import Normalizer, Reduction

__all__ = ["FPGMImportance"]


@register_importance("fpgm")
class FPGMImportance(SliceImportance):
    """Channel score = sum of Euclidean distances of its ``|w|**p`` filter to the member's other filters.

    Args:
        p: the power applied to the weights' magnitudes before measuring distances.
        group_reduction, normalizer, target_types: see
            :class:`~depgraph.importance.GroupImportance`.
        bias: accepted for Torch-Pruning compatibility; biases are not filters
            and are never scored (the original ignores it too).

    Raises:
        ValueError: ``p <= 0`` or an unknown reduction/normaliser.
    """

    def __init__(
        self,
        p: float = 2,
        group_reduction: Reduction = "mean",
        normalizer: Normalizer = "mean",
        bias: bool = False,
        *,
        target_types: Sequence[type] | None = None,
    ) -> None:
        types = target_types if target_types is not None else CONV_AND_LINEAR
        super().__init__(group_reduction, normalizer, bias=False, target_types=types)
        self.p = check_power(p)

    def __call__(self, group: Any, **kwargs: Any) -> torch.Tensor | None:
        return super().__call__(group)

    def score_slice(self, sl: ChannelSlice, idxs: torch.Tensor) -> torch.Tensor:
        w = sl.select(sl.param.detach(), idxs).reshape(idxs.numel(), -1).float()  # one filter per row
        w = w.abs().pow(self.p)
        return torch.cdist(w[None], w[None], p=2)[0].sum(1)
