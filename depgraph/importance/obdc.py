"""OBDC: Optimal Brain Damage with a diagonal Kronecker-factored curvature.

A simplified, documented variant of EigenDamage (Wang et al., ICML 2019).
K-FAC approximates a layer's Fisher as ``A (x) G``, the Kronecker product of
the second moments of its inputs ``a`` and of the gradients ``g`` at its
outputs. EigenDamage prunes in the eigenbasis of ``A`` and ``G``; this
variant keeps only their diagonals, per channel::

    F[o, i, k] ~ E[g_o**2] * E[a_i**2]            (kernel positions share a_i)
    score(channel) = 1/2 * sum over its weights of F * w**2

Collect the moments by running forward and backward passes inside
:meth:`OBDCImportance.collect`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn as nn

from ..functional.base import matches_layer_types
from ..functional.hf_conv1d import is_hf_conv1d
from .base import CONV_AND_LINEAR, GroupImportance, register_importance
from .channels import channel_slices
from .magnitude import row_sum
from .reduce import Normalizer, Reduction
from .stats import RunningMoments, hooked

__all__ = ["OBDCImportance"]


def _fisher(layer: nn.Module, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Diagonal K-FAC Fisher shaped like ``layer.weight`` from input/output moments."""
    w = layer.weight
    if isinstance(layer, nn.Linear):
        return g[:, None] * a[None, :]  # (O, I)
    if is_hf_conv1d(layer):
        return a[:, None] * g[None, :]  # transformers' Conv1D: (I, O)
    groups = layer.groups
    k_dims = (1,) * (w.dim() - 2)
    if layer.transposed:  # weight (I, O/g, *k): row i of block b meets outputs b*O/g + j
        ig, og = w.shape[0] // groups, w.shape[1]
        f = a.view(groups, ig, 1) * g.view(groups, 1, og)
    else:  # weight (O, I/g, *k): row o of block b meets inputs b*I/g + j
        og, ig = w.shape[0] // groups, w.shape[1]
        f = g.view(groups, og, 1) * a.view(groups, 1, ig)
    return f.reshape(w.shape[0], w.shape[1], *k_dims)


@register_importance("obdc")
class OBDCImportance(GroupImportance):
    """Channel score from OBD with a diagonal K-FAC Fisher (see the module docstring).

    Args:
        group_reduction, normalizer, bias, target_types: see
            :class:`~depgraph.importance.GroupImportance` (default targets:
            convolutions and linears).
        num_classes: linear layers with that many outputs (the classifier)
            are not scored, as in the original (default 100, as there; ``None``
            scores every linear).

    Example:
        >>> imp = OBDCImportance()
        >>> with imp.collect(model):
        ...     for x, y in batches:
        ...         model.zero_grad(); loss_fn(model(x), y).backward()
    """

    def __init__(
        self,
        group_reduction: Reduction = "mean",
        normalizer: Normalizer = "mean",
        bias: bool = False,
        target_types: Sequence[type] | None = CONV_AND_LINEAR,
        num_classes: int | None = 100,
    ) -> None:
        types = target_types if target_types is not None else CONV_AND_LINEAR
        super().__init__(group_reduction, normalizer, bias=bias, target_types=types)
        self.num_classes = num_classes
        self._moments = RunningMoments(2)

    @contextmanager
    def collect(self, model: nn.Module) -> Iterator[None]:
        """Gather input and output-gradient second moments during the block."""

        def hook(module: nn.Module, inputs: tuple, output: Any) -> None:
            if inputs:
                self._moments.add(module, "in", inputs[0])
            if isinstance(output, torch.Tensor) and output.requires_grad:
                output.register_hook(lambda grad: self._moments.add(module, "grad", grad))

        targets = [m for m in model.modules() if matches_layer_types(m, self.target_types)]
        with hooked(targets, hook):
            yield

    def reset(self) -> None:
        """Forget the collected moments."""
        self._moments.clear()

    def step(self) -> None:
        """Torch-Pruning's per-batch accumulation call: a no-op here.

        Moments are added by the hooks of :meth:`collect` at every forward and
        backward inside it, so there is nothing left to fold in per batch.
        """

    def adjust_fisher(self, group: Any, idxs: Any) -> None:
        """Torch-Pruning's hook for pruned channels: a no-op here.

        The pruner scores every group before it removes anything, and the
        moments refuse (with a ``DepgraphError``) to score a layer pruned after
        they were collected; collect again to score the pruned model.
        """

    def accepts(self, target: object) -> bool:
        if not super().accepts(target) or getattr(target, "weight", None) is None:
            return False
        return not (isinstance(target, nn.Linear) and target.out_features == self.num_classes)

    def member_scores(self, target: object, side: str, idxs: torch.Tensor, dep: Any) -> list[torch.Tensor]:
        who = type(self).__name__
        w = target.weight
        if is_hf_conv1d(target):  # weight (in, out)
            n_in, n_out = w.shape
        else:
            n_in = getattr(target, "in_channels", None) or target.in_features
            n_out = getattr(target, "out_channels", None) or target.out_features
        a = self._moments.get(target, "in", n_in, who).to(w.device)
        g = self._moments.get(target, "grad", n_out, who).to(w.device)
        curvature = {w: _fisher(target, a, g)}
        if getattr(target, "bias", None) is not None:
            curvature[target.bias] = g  # the bias sees a constant input of 1
        out = []
        for sl in channel_slices(target, side):
            if sl.is_bias and not self.bias:
                continue
            f = curvature[sl.param]
            i = idxs.to(w.device)
            out.append(
                row_sum(sl.select(sl.param.detach(), i).pow(2) * sl.select(f.expand_as(sl.param), i)) / 2
            )
        return out
