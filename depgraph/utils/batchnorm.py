"""Re-estimating BatchNorm running statistics after a prune.

A BatchNorm layer normalises with the mean and variance it saw in training. Pruning the
input channels of the convolution before it changes what that convolution outputs, so the
stored statistics no longer describe its input: in eval mode the layer then shifts and
scales by the wrong amounts, and the error compounds through the network. Re-measuring the
statistics on a few batches of real data (no gradient, no weight changes) repairs most of
that: ResNet-20 on Fashion-MNIST at 2x fewer MACs goes from 10.07% to 84.52% test accuracy
before any training (benchmarks/quality, 256 images). Training-time recovery re-estimates them anyway;
this is for a pruned model used as it is, or to see its true quality before recovery.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn as nn

from ._inputs import call_model
from .compat import TORCH_BATCHNORM

__all__ = ["batchnorm_layers", "recalibrate_batchnorm"]


def batchnorm_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The BatchNorm layers of ``model`` that keep running statistics (those eval mode normalises with)."""
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, TORCH_BATCHNORM) and m.track_running_stats and m.running_mean is not None]


def recalibrate_batchnorm(model: nn.Module, batches: Iterable[Any]) -> int:
    """Replace every BatchNorm layer's running mean and variance by those of its inputs over ``batches``.

    Each batch is passed as the model takes it: a tensor as ``model(x)``, a tuple or list
    as ``model(*xs)``, a dict as ``model(**d)``; for a loader of ``(images, labels)``
    pairs, pass ``(x for x, _ in loader)``. Only the BatchNorm layers run in training
    mode (each normalises by its batch, as in training); dropout and every other layer stay
    in eval mode, no gradient is taken and no weight changes.

    The statistics are pooled over every input value a layer saw (float64, batch moments
    merged exactly), not an average of per-batch statistics: batches that each hold one
    class would otherwise leave out the spread between classes and understate the variance.
    The order of the batches does not matter; the variance is unbiased, as in training.

    It is one transaction: if a batch fails (or the run is interrupted), every statistic
    and training flag is put back as it was and the error propagates.

    Args:
        model: the model to update in place.
        batches: the data, in the form the model is called with; at least one batch.

    Returns:
        The number of BatchNorm layers re-estimated: 0 when the model has none (nothing is run);
        a layer the data never reaches (a training-only auxiliary head) keeps its statistics.

    Raises:
        ValueError: ``batches`` is empty while the model has BatchNorm layers.
    """
    layers = [m for _, m in batchnorm_layers(model)]
    if not layers:
        return 0
    flags = [(m, m.training) for m in model.modules()]
    saved = [(m, {k: b.clone() for k, b in m.named_buffers(recurse=False) if b is not None}) for m in layers]
    moments = {m: _Moments() for m in layers}
    hooks = [m.register_forward_pre_hook(lambda mod, args: moments[mod].add(args[0])) for m in layers]
    fed = 0
    try:
        model.eval()
        for m in layers:
            m.train()
        with torch.no_grad():
            for batch in batches:
                call_model(model, batch)
                fed += 1
        if fed == 0:
            raise ValueError("recalibrate_batchnorm needs at least one batch of data; got none")
        reached = [m for m in layers if moments[m].n > 0]  # one the data never reaches keeps its own
        for m in reached:
            mean, var = moments[m].mean_var()
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            if m.num_batches_tracked is not None:
                m.num_batches_tracked.fill_(fed)
    except BaseException:
        for m, buffers in saved:
            for k, b in buffers.items():
                getattr(m, k).copy_(b)
        raise
    finally:
        for h in hooks:
            h.remove()
        for m, was_training in flags:
            m.training = was_training
    return len(reached)


class _Moments:
    """Count, mean and sum of squared deviations per channel (dim 1), merged batch by batch (Chan et al.)."""

    def __init__(self) -> None:
        self.n = 0
        self.mean: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None

    def add(self, x: torch.Tensor) -> None:
        dims = [d for d in range(x.dim()) if d != 1]
        count = x.numel() // x.shape[1]
        var, mean = torch.var_mean(x.detach().double(), dim=dims, correction=0)
        m2 = var * count
        if self.mean is None or self.m2 is None:
            self.n, self.mean, self.m2 = count, mean, m2
            return
        total = self.n + count
        delta = mean - self.mean
        self.mean = self.mean + delta * (count / total)
        self.m2 = self.m2 + m2 + delta**2 * (self.n * count / total)
        self.n = total

    def mean_var(self) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.mean is not None and self.m2 is not None, "mean_var of a layer no batch reached"
        return self.mean, self.m2 / max(self.n - 1, 1)
