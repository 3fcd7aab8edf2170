"""Find the pruning ratio that reaches a target (MACs speed-up, parameters removed) by bisection.

A pruner takes a per-group channel ratio, but benchmarks compare criteria at equal cost:
the same MACs speed-up or the same fraction of parameters gone. How much a ratio removes
depends on the criterion under global pruning (it decides which layers shrink), so the
ratio is searched per criterion, each trial pruning a fresh copy of the model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass
class SearchResult(Generic[T]):
    """The ratio chosen, its value and result, and how many trials the search took."""

    ratio: float
    value: float
    result: T
    trials: int


def search_ratio(trial: Callable[[float], tuple[T, float]], target: float, lo: float = 0.0, hi: float = 0.9,
                 steps: int = 10, rel_tol: float = 0.01) -> SearchResult[T]:
    """A ratio in ``[lo, hi]`` whose ``trial(ratio)`` value reaches ``target``, with the value as close as found.

    Bisection keeps the smallest ratio seen that reaches the target; it stops early at a value
    within ``rel_tol`` of the target, otherwise after ``steps`` halvings (then the ratio is
    within ``(hi - lo) / 2**steps`` of the smallest one that reaches the target).

    Args:
        trial: ``ratio -> (result, value)``, e.g. a pruned copy and its MACs speed-up; the
            value must not decrease as the ratio grows (channels come off in whole units, so
            it is a staircase, and bisection converges to the step that crosses the target).
        target: the value to reach.
        lo, hi: the bracket; ``trial(hi)`` must reach the target.
        steps: bisection steps after the bracket check (the bracket shrinks 2**steps times).
        rel_tol: stop early once a value within ``target * (1 + rel_tol)`` is reached.

    Raises:
        ValueError: ``trial(hi)`` does not reach the target, so no ratio in the bracket does.
    """
    result, value = trial(hi)
    trials = 1
    if value < target:
        raise ValueError(f"the ratio search cannot reach {target:g}: ratio {hi:g} gives only {value:g}; raise hi")
    best = SearchResult(hi, value, result, trials)
    for _ in range(steps):
        if best.value <= target * (1 + rel_tol):
            break
        mid = (lo + best.ratio) / 2
        result, value = trial(mid)
        trials += 1
        if value >= target:
            best = SearchResult(mid, value, result, trials)
        else:
            lo = mid
    best.trials = trials
    return best
