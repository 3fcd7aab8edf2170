"""Find the pruning ratio that reaches a target by bisection over trials.

A pruner takes a per-group channel ratio, but users and benchmarks ask for a cost: half the
MACs, 30% fewer parameters. How much a ratio removes depends on the criterion under global
pruning (it decides which layers shrink) and on ``round_to``, so the ratio is searched: each
trial prunes a fresh copy and measures it. ``benchmarks/quality`` uses this too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from ..errors import TargetUnreachableError

__all__ = ["SearchResult", "search_ratio"]

T = TypeVar("T")


@dataclass
class SearchResult(Generic[T]):
    """The ratio chosen, its value and result, and how many trials the search took."""

    ratio: float
    value: float
    result: T
    trials: int


def search_ratio(trial: Callable[[float], tuple[T, float]], target: float, lo: float = 0.0, hi: float = 0.9,
                 steps: int = 10, rel_tol: float = 0.01, interpolate: bool = False,
                 lo_value: float = 0.0) -> SearchResult[T]:
    """A ratio in ``[lo, hi]`` whose ``trial(ratio)`` value reaches ``target``, with the value as close as found.

    Bisection keeps the smallest ratio seen that reaches the target; it stops early at a value
    within ``rel_tol`` of the target, otherwise after ``steps`` halvings (then the ratio is
    within ``(hi - lo) / 2**steps`` of the smallest one that reaches the target). The bracket
    end ``hi`` is tried first, so an unreachable target fails after one trial.

    Args:
        trial: ``ratio -> (result, value)``, e.g. a pruned copy and its MACs speed-up; the
            value must not decrease as the ratio grows (channels come off in whole units, so
            it is a staircase, and bisection converges to the step that crosses the target).
        target: the value to reach.
        lo: the low end of the bracket (a ratio that need not reach the target).
        hi: the high end; ``trial(hi)`` must reach the target.
        steps: bisection steps after the bracket check (the bracket shrinks 2**steps times).
        rel_tol: stop early once a value within ``target * (1 + rel_tol)`` is reached.
        interpolate: choose each next ratio by linear interpolation between the bracket ends
            (``lo`` taken to give ``lo_value``) aiming inside the tolerance, instead of the middle:
            on smooth costs (parameters, MACs) it needs a few trials instead of ``log2``.
        lo_value: the value at ``lo`` (no trial is run there; 0 for "nothing removed").

    Returns:
        The smallest ratio found that reaches ``target``, with its value, result and trial count.

    Raises:
        TargetUnreachableError (also a ``ValueError``): ``trial(hi)`` does not reach the target,
            so no ratio in the bracket does.

    Example:
        >>> search_ratio(lambda r: (None, r), target=0.3, steps=20).ratio  # about 0.3
    """
    result, value = trial(hi)
    trials = 1
    if value < target:
        raise TargetUnreachableError(
            f"the ratio search cannot reach {target:g}: ratio {hi:g} gives only {value:g}; raise hi")
    best = SearchResult(hi, value, result, trials)
    aim = target * (1 + rel_tol / 2)  # interpolation lands inside the tolerance, from above
    f_lo, f_hi, side = lo_value - aim, value - aim, 0
    for _ in range(steps):
        if best.value <= target * (1 + rel_tol):
            break
        mid = (lo + best.ratio) / 2
        if interpolate and f_hi > f_lo:  # regula falsi, Illinois variant: a stuck end's weight halves
            width = best.ratio - lo
            mid = lo + width * -f_lo / (f_hi - f_lo)
            mid = min(max(mid, lo + 0.02 * width), best.ratio - 0.02 * width)  # always shrink the bracket
        result, value = trial(mid)
        trials += 1
        if value >= target:
            best = SearchResult(mid, value, result, trials)
            f_hi = value - aim
            f_lo = f_lo / 2 if side == 1 else f_lo
            side = 1
        else:
            lo, f_lo = mid, value - aim
            f_hi = f_hi / 2 if side == -1 else f_hi
            side = -1
    best.trials = trials
    return best
