"""Criteria calibrated on real inputs: weight x activation norm, and activation fluctuation.

Removing input channel ``c`` of a consumer ``y = W x + b`` removes the term
``W[:, c] * X_c``. Its size on the calibration data is what these criteria
score, summed over every consumer in the group (the members pruned on their
*input* side; the producing layers need no score of their own, their effect
is ``X_c``)::

    ActivationWeightImportance   ||W[:, c]||_p * rms(X_c)           (structured |W| * ||X||)
    FluctuationImportance        ||W[:, c]||_2**2 * Var(X_c)         (what a bias cannot absorb)

``rms(X_c)`` is ``||X_c||_2`` over the calibration values divided by the square
root of their count, so layers with more positions (large feature maps) are
not favoured. For a convolution ``W[:, c]`` is the whole kernel slice of the
channel. A group no calibrated consumer scores (e.g. a branch the data never
reached) falls back to :class:`~depgraph.importance.GroupMagnitudeImportance`
with the same ``p``, reduction and normaliser, so every group gets a score.
Consumers that are neither Linear nor convolution (``nn.MultiheadAttention``,
RNNs) are not measured and add nothing to a calibrated score.

Fluctuation pairs with bias compensation: a channel with a steady value
carries a near-constant term that the consumer's bias can absorb
(:func:`~depgraph.importance.compensate_bias`), so only its variance is lost.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from ..errors import DepgraphError
from .base import CONV_AND_LINEAR, GroupImportance, check_power, register_importance
from .calibration import CalibrationStats, ChannelStats, collect_activation_stats, is_channel_consumer
from .channels import channel_slices
from .magnitude import GroupMagnitudeImportance
from .reduce import Normalizer, Reduction

if TYPE_CHECKING:  # the graph imports criteria and pruners; only the types are needed here
    from ..dependency.group import Group
    from ..dependency.node import Dependency


__all__ = ["CalibratedImportance", "ActivationWeightImportance", "FluctuationImportance"]


class CalibratedImportance(GroupImportance):
    """Base of criteria that score input channels of consumers from calibration statistics.

    Call tree (``*``: what a subclass overrides)::

        imp.calibrate(model, data)                 -> imp.stats (CalibrationStats)
        imp(group)
            GroupImportance.__call__ -> score_member(target, side, idxs, dep)
                stats.lookup(target, idxs)           original-index statistics
                score_channels(weight_cols, stats)  *  (len(idxs),)
            no member scored -> GroupMagnitudeImportance(p)(group)

    Args:
        p: the norm of a weight column (and the fallback magnitude's power).
        group_reduction: how consumers' scores combine (default ``sum``: the
            total contribution of the channel).
        normalizer: see :class:`~depgraph.importance.GroupImportance`.
        target_types: as ``normalizer``.
        stats: statistics collected before (instead of calling :meth:`calibrate`).

    Raises:
        DepgraphError (when called): :meth:`calibrate` was never called.
    """

    def __init__(
        self,
        p: float = 2,
        group_reduction: Reduction = "sum",
        normalizer: Normalizer = "mean",
        target_types: Sequence[type] | None = None,
        stats: CalibrationStats | None = None,
    ) -> None:
        types = target_types if target_types is not None else CONV_AND_LINEAR
        super().__init__(group_reduction, normalizer, bias=False, target_types=types)
        self.p = check_power(p)
        self.stats = stats
        self._fallback = GroupMagnitudeImportance(p, group_reduction, normalizer, target_types=target_types)

    def calibrate(
        self,
        model: nn.Module,
        data: Any,
        forward_fn: Callable[[nn.Module, Any], Any] | None = None,
        max_batches: int | None = None,
    ) -> CalibratedImportance:
        """Measure input channels of ``model``'s consumers on ``data``; replaces earlier statistics.

        See :func:`~depgraph.importance.collect_activation_stats` for ``data``
        and ``forward_fn``. Returns ``self``, so it chains.
        """
        self.stats = collect_activation_stats(model, data, forward_fn, max_batches)
        return self

    def score_channels(self, cols: torch.Tensor, st: ChannelStats) -> torch.Tensor:
        """Scores from the weight columns ``(n, fan_out)`` and statistics of ``n`` channels."""
        raise NotImplementedError

    def score_member(self, target: object, side: str, idxs: torch.Tensor, dep: Dependency) -> torch.Tensor | None:
        if side != "in" or not is_channel_consumer(target):
            return None
        st = self.stats.lookup(target, idxs)
        if st is None:
            return None
        (sl,) = [s for s in channel_slices(target, "in") if not s.is_bias]
        cols = sl.select(sl.param.detach(), idxs).reshape(idxs.numel(), -1).to(torch.float64)
        out_dtype = torch.float64 if sl.param.dtype == torch.float64 else torch.float32
        return self.score_channels(cols, st).to(cols.device, out_dtype)  # computed in float64

    @torch.no_grad()
    def __call__(self, group: Group) -> torch.Tensor | None:
        if self.stats is None:
            raise DepgraphError(
                f"{type(self).__name__} has no calibration statistics; call "
                "imp.calibrate(model, data) on a few batches of real inputs before scoring groups"
            )
        scores = super().__call__(group)
        return self._fallback(group) if scores is None else scores

    def __repr__(self) -> str:
        calibrated = "uncalibrated" if self.stats is None else f"{len(self.stats)} layers calibrated"
        return f"{type(self).__name__}(p={self.p}, {super().__repr__().split('(', 1)[1][:-1]}, {calibrated})"


@register_importance("activation_weight")
class ActivationWeightImportance(CalibratedImportance):
    """Channel score = ``sum over consumers of ||W[:, c]||_p * rms(X_c)`` (structured ``|W| * ||X||``).

    With ``p=1`` (the default) a consumer's score is ``sum_o |W[o, c]| * rms(X_c)``,
    the summed per-weight ``|W| * ||X||`` scores of the channel's weights. Suits
    LLMs pruned without fine-tuning: a channel with small weights but large
    activations (outlier features) is kept.

    Example:
        >>> imp = ActivationWeightImportance().calibrate(model, batches, max_batches=8)
        >>> pruner = tp.pruner.BasePruner(model, example_inputs, imp, pruning_ratio=0.2)
        >>> pruner.step()
    """

    def __init__(
        self,
        p: float = 1,
        group_reduction: Reduction = "sum",
        normalizer: Normalizer = "mean",
        target_types: Sequence[type] | None = None,
        stats: CalibrationStats | None = None,
    ) -> None:
        super().__init__(p, group_reduction, normalizer, target_types, stats)

    def score_channels(self, cols: torch.Tensor, st: ChannelStats) -> torch.Tensor:
        return torch.linalg.vector_norm(cols, ord=self.p, dim=1) * st.rms.to(cols.device)


@register_importance("fluctuation")
class FluctuationImportance(CalibratedImportance):
    """Channel score = ``sum over consumers of ||W[:, c]||_2**2 * Var(X_c)``.

    The expected squared change of the consumer's output once the channel is
    replaced by its mean, i.e. what is lost when the removal is paired with
    ``bias_compensation=True``. ``p`` only sets the fallback magnitude.

    Example:
        >>> imp = FluctuationImportance().calibrate(model, batches)
        >>> pruner = tp.pruner.BasePruner(model, example_inputs, imp, pruning_ratio=0.5,
        ...                               bias_compensation=True)
    """

    def score_channels(self, cols: torch.Tensor, st: ChannelStats) -> torch.Tensor:
        return cols.pow(2).sum(1) * st.var.to(cols.device)
