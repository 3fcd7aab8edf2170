"""An exponential moving average of the student's weights during a recovery (``ema_decay``).

Why: the weights of a run's last step are one noisy point of a trajectory that keeps
moving around the minimum; an average of the recent steps sits closer to its centre and
usually measures better on held-out data (Polyak averaging; EMA in most modern training
recipes). On the SmolLM2 recovery, averaging the ends of two runs measured below either
run (benchmarks/quality: ``soup_llm_p8``); the EMA is the same idea inside one run, at the
cost of one more copy of the trainable weights on their device and no extra forward pass.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn

from ..errors import OptionError

__all__ = ["WeightAverage", "ema_factor"]


def ema_factor(decay: float, updates: int) -> float:
    """The decay of update number ``updates`` (0-based): ``min(decay, (1 + n) / (10 + n))``.

    Why the ramp: the average starts from the untrained weights; with the full decay from the
    first step (0.999: a memory of about 1000 steps) a short recovery would end near where it
    began. The ramp lets the first updates move it almost all the way, as TensorFlow's
    ``ExponentialMovingAverage(num_updates=...)`` does.
    """
    return min(decay, (1.0 + updates) / (10.0 + updates))


class WeightAverage:
    """The moving average of a module's trainable parameters and floating-point buffers.

    The average lives beside the weights, on their device and in their dtype. ``applied()``
    swaps it in for a measure or a checkpoint and back out; ``apply()`` makes it the weights
    for good. Swapping exchanges the tensors' storage (``.data``), not their values, so it
    copies nothing, and every reference the optimizer and accelerate hold stays the same
    ``Parameter``. Integer buffers (a batch norm's batch count) are not averaged.
    """

    def __init__(self, module: nn.Module, decay: float):
        """Start the average at ``module``'s current weights.

        Raises:
            OptionError: ``decay`` is not strictly between 0 and 1.
        """
        if not 0.0 < decay < 1.0:
            raise OptionError(f"WeightAverage: decay must be in (0, 1), got {decay!r}")
        self.decay, self.updates = decay, 0
        self.tensors = [p for p in module.parameters() if p.requires_grad]
        self.tensors += [b for b in module.buffers() if b.is_floating_point()]
        self.average = [t.detach().clone() for t in self.tensors]
        self.swapped = False

    @torch.no_grad()
    def update(self) -> None:
        """Move the average towards the current weights (after each optimizer step)."""
        if self.swapped:
            raise RuntimeError("WeightAverage.update: the average is swapped in; update it between steps")
        weight = 1.0 - ema_factor(self.decay, self.updates)
        for average, t in zip(self.average, self.tensors, strict=True):
            average.lerp_(t.detach(), weight)
        self.updates += 1

    def _swap(self) -> None:
        for i, t in enumerate(self.tensors):
            current = t.data
            t.data = self.average[i]
            self.average[i] = current
        self.swapped = not self.swapped

    @contextmanager
    def applied(self) -> Iterator[None]:
        """The module holds the average inside the block, its own weights again after it (also on error)."""
        self._swap()
        try:
            yield
        finally:
            self._swap()

    def apply(self) -> None:
        """Make the average the module's weights; the trained weights of the last step are dropped."""
        self._swap()
        self.average, self.tensors, self.swapped = [], [], False
