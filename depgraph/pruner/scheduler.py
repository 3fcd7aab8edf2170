"""Iterative pruning schedules: the ratio to reach after each step.

A scheduler is ``scheduler(pruning_ratio, steps) -> list`` of ``steps + 1``
ratios, entry 0 being 0 (nothing pruned yet) and entry ``steps`` being the
target. The pruner reaches ``schedule[k]`` after its k-th ``step()``.
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import OptionError

__all__ = ["linear_scheduler", "Scheduler", "check_schedule"]

Scheduler = Callable[[float, int], list]


def linear_scheduler(pruning_ratio: float, steps: int) -> list[float]:
    """Equal increments: ``[0, r/steps, 2r/steps, ..., r]``.

    Example:
        >>> linear_scheduler(0.5, 4)
        [0.0, 0.125, 0.25, 0.375, 0.5]
    """
    return [pruning_ratio * i / steps for i in range(steps + 1)]


def check_schedule(schedule: list, pruning_ratio: float, steps: int, who: str = "scheduler") -> list[float]:
    """Validate a scheduler's output; the last entry is forced to the exact target.

    Raises:
        OptionError (a ValueError): wrong length, a ratio outside [0, 1], or a decreasing ratio.
    """
    ratios = [float(r) for r in schedule]
    problems = []
    if len(ratios) != steps + 1:
        problems.append(
            f"returned {len(ratios)} ratios for {steps} steps; expected {steps + 1} (entry 0 is 0)"
        )
    if any(not 0.0 <= r <= 1.0 for r in ratios):
        problems.append(f"returned ratios outside [0, 1]: {ratios}")
    if any(b < a - 1e-12 for a, b in zip(ratios, ratios[1:], strict=False)):
        problems.append(f"returned decreasing ratios {ratios}; pruning cannot grow channels back")
    if problems:
        raise OptionError(f"{who}(pruning_ratio={pruning_ratio}, steps={steps}) " + "; ".join(problems))
    ratios[-1] = float(pruning_ratio)  # the target is reached exactly at the last step
    return ratios
