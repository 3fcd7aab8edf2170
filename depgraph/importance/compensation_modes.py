"""Compensation modes: what a pruner does to the consumers of removed channels, as one typed value.

``BasePruner(compensation=...)`` takes one of these instead of the flag pairs
(``bias_compensation=True`` + ``calibration_stats=``, ``lstsq_compensation=``)
that could be given together or half-given and then silently ignore each other.
The flags still work: the pruner maps them onto these modes.

Example:
    >>> stats = tp.importance.collect_activation_stats(model, batches)
    >>> tp.pruner.BasePruner(model, x, imp, compensation=tp.importance.BiasMean(stats))
    >>> cov = tp.importance.collect_input_covariance(model, batches)
    >>> tp.pruner.BasePruner(model, x, imp, compensation=tp.importance.LeastSquares(cov))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import OptionError, OptionTypeError
from .calibration import CalibrationStats
from .compensation import enable_bias_compensation
from .reconstruction import InputCovariance, enable_lstsq_compensation

__all__ = ["CompensationMode", "BiasMean", "LeastSquares"]


class CompensationMode:
    """Base of the compensation modes; :meth:`enable` attaches the mode's hook to a graph."""

    #: whether soft pruning (zeroing, shapes kept) can be combined with the mode
    works_with_soft_pruning: bool = False

    def enable(self, graph: Any, stats_fallback: Callable[[], CalibrationStats | None]) -> Any:
        """Attach to ``graph``; returns the hook (``hook.detach()`` turns it off)."""
        raise NotImplementedError


@dataclass(frozen=True)
class BiasMean(CompensationMode):
    """Fold the mean contribution of removed input channels into each consumer's bias.

    Args:
        stats: from :func:`~depgraph.importance.collect_activation_stats`; None reads the
            importance's current ``.stats`` at each prune (a calibrated criterion).
    """

    stats: CalibrationStats | None = None

    def __post_init__(self) -> None:
        if self.stats is not None and not isinstance(self.stats, CalibrationStats):
            raise OptionTypeError("BiasMean(stats) needs statistics from tp.importance.collect_activation_stats, "
                                  f"got {type(self.stats).__name__}")

    def enable(self, graph: Any, stats_fallback: Callable[[], CalibrationStats | None]) -> Any:
        def current() -> CalibrationStats | None:
            return self.stats if self.stats is not None else stats_fallback()

        if current() is None:
            raise OptionError(
                "bias_compensation=True needs calibration statistics (compensation=BiasMean): calibrate the importance first "
                "(imp.calibrate(model, data)) or pass BiasMean(tp.importance.collect_activation_stats(model, data))"
            )
        return enable_bias_compensation(graph, current)


@dataclass(frozen=True)
class LeastSquares(CompensationMode):
    """Refit the kept input columns and the bias of every measured Linear consumer by least squares.

    Args:
        cov: from :func:`~depgraph.importance.collect_input_covariance`.
        damping: relative ridge added to the covariance before solving.
    """

    cov: InputCovariance
    damping: float = 1e-4

    def __post_init__(self) -> None:
        if not isinstance(self.cov, InputCovariance):
            raise OptionTypeError("LeastSquares(cov) needs covariances from tp.importance.collect_input_covariance, "
                                  f"got {type(self.cov).__name__}")
        if not isinstance(self.damping, (int, float)) or isinstance(self.damping, bool) or self.damping < 0:
            raise OptionError(f"LeastSquares damping must be a non-negative number, got {self.damping!r}")

    def enable(self, graph: Any, stats_fallback: Callable[[], CalibrationStats | None]) -> Any:
        return enable_lstsq_compensation(graph, self.cov, self.damping)
