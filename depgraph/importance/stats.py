"""Per-channel running statistics of activations and gradients, gathered with hooks.

Used by :class:`~depgraph.importance.ActivationImportance` (mean ``|x|**p``
of the inputs and outputs of a layer) and
:class:`~depgraph.importance.OBDCImportance` (second moments of inputs and of
output gradients). Statistics are means over every non-channel position and
over every forward (or backward) pass seen, and are keyed by module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn

from ..errors import DepgraphError
from ..functional.base import find_handler

__all__ = ["channel_dim", "RunningMoments", "hooked"]

def channel_dim(module: nn.Module, x: torch.Tensor, kind: str = "in") -> int:
    """The dim of ``x`` (an input if ``kind == "in"``, else an output) of ``module`` that holds channels.

    The layer's handler says (``in_channel_dim`` / ``out_channel_dim``); a layer
    without one is taken as channels-first.
    """
    if x.dim() < 2:
        return x.dim() - 1
    handler = find_handler(module)
    if handler is None:
        return 1
    d = handler.in_channel_dim(module, x.dim()) if kind == "in" else handler.out_channel_dim(module, x.dim())
    return d % x.dim()


class RunningMoments:
    """Running per-channel mean of ``|x|**p``, one vector per (module, kind)."""

    def __init__(self, p: float) -> None:
        self.p = p
        self._sum: dict[tuple[nn.Module, str], torch.Tensor] = {}
        self._count: dict[tuple[nn.Module, str], int] = {}

    @torch.no_grad()
    def add(self, module: nn.Module, kind: str, x: torch.Tensor) -> None:
        """Accumulate ``x`` (an input, output or gradient of ``module``, by ``kind``); a changed width restarts."""
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() == 0:
            return
        d = channel_dim(module, x, kind)
        # (..., C, ...) -> (C, rest): mean over everything but the channel dim
        flat = x.detach().movedim(d, 0).reshape(x.shape[d], -1).float()
        moment = flat.abs().pow(self.p).mean(1)
        key = (module, kind)
        prev = self._sum.get(key)
        if prev is not None and prev.shape != moment.shape:
            prev = None  # the layer was pruned since: restart its statistics
            self._count[key] = 0
        self._sum[key] = moment if prev is None else prev + moment
        self._count[key] = self._count.get(key, 0) + 1

    def get(self, module: nn.Module, kind: str, width: int, who: str) -> torch.Tensor:
        """The mean moment of ``module``'s ``kind`` channels; check it still has ``width`` entries."""
        key = (module, kind)
        if key not in self._sum:
            raise DepgraphError(
                f"{who} has no {kind} statistics for {type(module).__name__}; run forward "
                "(and, if needed, backward) passes inside its collecting context first"
            )
        mean = self._sum[key] / self._count[key]
        if mean.numel() != width:
            raise DepgraphError(
                f"{who}: the {kind} statistics of {type(module).__name__} have {mean.numel()} "
                f"channels but the layer now has {width}; collect them again after pruning"
            )
        return mean

    def clear(self) -> None:
        """Forget every accumulated moment."""
        self._sum.clear()
        self._count.clear()


Hook = Callable[[nn.Module, tuple, object], None]


@contextmanager
def hooked(modules: list[nn.Module], forward_hook: Hook) -> Iterator[None]:
    """Attach ``forward_hook`` to ``modules`` for the block; always detach it."""
    handles = []
    try:
        for m in modules:
            handles.append(m.register_forward_hook(forward_hook))
        yield
    finally:
        for h in handles:
            h.remove()
