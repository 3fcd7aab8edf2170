"""Activation-based importance: channels that carry little signal are pruned first.

The score of a channel is the mean ``|x|**p`` of the activation that enters
each scored convolution or linear through that channel, averaged over every
position and every forward pass run inside
:meth:`ActivationImportance.compute_importance`. (Torch-Pruning accepts ``p``
but scores ``|x|`` of the last forward pass only; ``p=1`` and one batch give
its ranking.)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn as nn

from ..functional.base import matches_layer_types
from ..functional.hf_conv1d import is_hf_conv1d
from .base import CONV_AND_LINEAR, DEFAULT_TARGET_TYPES, GroupImportance, check_power, register_importance
from .reduce import Normalizer, Reduction
from .stats import RunningMoments, hooked

__all__ = ["ActivationImportance"]


def in_width(module: nn.Module) -> int | None:
    """Number of input channels of the common layer types."""
    if is_hf_conv1d(module):  # transformers' Conv1D: weight (in, out); older versions have no ``nx``
        return int(module.weight.shape[0])
    for attr in ("in_channels", "in_features", "num_features"):
        n = getattr(module, attr, None)
        if n is not None:
            return int(n)
    shape = getattr(module, "normalized_shape", None)
    return int(shape[-1]) if shape else None


@register_importance("activation")
class ActivationImportance(GroupImportance):
    """Channel score = mean ``|input activation|**p`` of the layers consuming it.

    Statistics accumulate across every forward pass inside
    :meth:`compute_importance` (also spelled :meth:`collect`) until
    :meth:`reset`; they are kept here, keyed by module, not on the modules.

    Args:
        p: the power of the activation magnitude.
        group_reduction, normalizer, target_types: see
            :class:`~depgraph.importance.GroupImportance`; only convolutions
            and linears among ``target_types`` have activation statistics.
        bias: accepted for Torch-Pruning compatibility (activations have no bias).

    Example:
        >>> imp = ActivationImportance()
        >>> with imp.compute_importance(model):
        ...     for x, _ in calibration_batches:
        ...         model(x)
        >>> pruner = tp.pruner.BasePruner(model, example_inputs, imp, pruning_ratio=0.3)

    Raises:
        DepgraphError (when called): a scored layer was never run inside the
            context, or was pruned after its statistics were collected.
    """

    def __init__(
        self,
        p: float = 2,
        group_reduction: Reduction = "mean",
        normalizer: Normalizer = "mean",
        bias: bool = False,
        target_types: Sequence[type] | None = DEFAULT_TARGET_TYPES,
    ) -> None:
        types = tuple(target_types) if target_types is not None else CONV_AND_LINEAR
        super().__init__(group_reduction, normalizer, bias=False, target_types=types)
        self.p = check_power(p)
        self._moments = RunningMoments(p)

    @contextmanager
    def compute_importance(self, model: nn.Module) -> Iterator[None]:
        """Collect input statistics of the target layers during the block's forward passes."""

        def hook(module: nn.Module, inputs: tuple, output: Any) -> None:
            if inputs:
                self._moments.add(module, "in", inputs[0])

        targets = [m for m in model.modules() if self._has_stats(m)]
        with hooked(targets, hook):
            yield

    collect = compute_importance

    def reset(self) -> None:
        """Forget the collected statistics."""
        self._moments.clear()

    def _has_stats(self, module: nn.Module) -> bool:
        return matches_layer_types(module, self.target_types) and matches_layer_types(module, CONV_AND_LINEAR)

    def score_member(self, target: object, side: str, idxs: torch.Tensor, dep: Any) -> torch.Tensor | None:
        if side != "in" or not isinstance(target, nn.Module) or not self._has_stats(target):
            return None
        width = in_width(target)
        if width is None:
            return None
        return self._moments.get(target, "in", width, type(self).__name__)[idxs.to("cpu")]
