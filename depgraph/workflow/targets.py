"""Targets: ``macs=0.5``, ``params=0.7``, ``latency=0.5`` (the fraction KEPT), met by a ratio search.

    target = Target.parse("macs=0.5")
    model, found = prune_to_target(model, scoring, keep, make_pruner, example, target, base)

Each trial prunes a copy of the model (with its calibrated criterion, so statistics follow
the copy) at one pruner ratio, under the same allocation (global or per group) and
``round_to`` as the final prune, and measures it; :func:`~depgraph.workflow.search.search_ratio`
bisects to the smallest ratio whose result keeps at most the target fraction. Latency is
measured on the model's device. The bracket end is tried first, so a target no ratio can
meet fails after one prune, before the search.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch.nn as nn

from ..errors import OptionError, TargetUnreachableError
from .recipes import Scoring
from .score_cache import TrialScores
from .search import search_ratio

__all__ = ["Target", "Measurement", "TargetResult", "measure", "prune_to_target", "METRICS"]

METRICS = ("macs", "params", "latency")

#: ``make_pruner(model, scoring, keep, ratio)`` -> a pruner whose ``step()`` prunes ``model``.
PrunerFactory = Callable[[nn.Module, Scoring, Sequence[nn.Module], float], Any]


@dataclass(frozen=True)
class Target:
    """A cost to reach: ``metric`` of the pruned model at most ``kept`` times the original's.

    Raises:
        OptionError: an unknown metric or a fraction outside (0, 1].
    """

    metric: str
    kept: float

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise OptionError(f"unknown target {self.metric!r}; give one of {', '.join(METRICS)} (e.g. macs=0.5)")
        if not 0.0 < self.kept <= 1.0:
            raise OptionError(f"target {self.metric}={self.kept:g}: the fraction kept must be in (0, 1]")

    @classmethod
    def parse(cls, text: str) -> Target:
        """``"macs=0.5"`` -> ``Target("macs", 0.5)``."""
        metric, sep, value = text.partition("=")
        try:
            kept = float(value)
        except ValueError:
            kept = float("nan")
        if not sep or kept != kept:
            raise OptionError(f"--target {text!r}: write METRIC=FRACTION_KEPT, e.g. macs=0.5, params=0.7, latency=0.5")
        return cls(metric.strip().lower(), kept)

    def __str__(self) -> str:
        return f"{self.metric}={self.kept:g}"


@dataclass
class Measurement:
    """Cost of one model on the example input (latency in ms, None when not measured)."""

    params: int
    macs: int
    latency_ms: float | None = None
    output_shape: str = ""  # every output tensor's shape, e.g. "(1, 1000)"

    def get(self, metric: str) -> float:
        """The value of ``metric`` (``params``, ``macs`` or ``latency``).

        Raises:
            OptionError: ``latency`` was not measured.
        """
        value = {"params": self.params, "macs": self.macs, "latency": self.latency_ms}[metric]
        if value is None:
            raise OptionError(f"{metric} was not measured")
        return float(value)


def measure(model: nn.Module, example_inputs: Any, latency: bool = False, repeat: int = 10,
            warmup: int = 3) -> Measurement:
    """Parameters, MACs, output shapes and (optionally) the mean forward latency on the model's device."""
    import torch

    from ..trace import call_model, flatten_tensors
    from ..utils import count_ops_and_params
    from ..utils.benchmark import measure_latency

    macs, params = count_ops_and_params(model, example_inputs)
    ms = measure_latency(model, example_inputs, repeat=repeat, warmup=warmup)[0] if latency else None
    with torch.no_grad():
        outputs = flatten_tensors(call_model(model, example_inputs))
    return Measurement(int(params), int(macs), ms, ", ".join(str(tuple(t.shape)) for t in outputs))


@dataclass
class TargetResult:
    """How close the search came: the ratio chosen and the fraction it keeps, and every trial."""

    target: Target
    ratio: float
    kept: float
    trials: int
    history: list[tuple[float, float]] = field(default_factory=list)  # (ratio, kept) per trial

    def describe(self) -> str:
        """``"macs kept 0.495 (target 0.5, -0.005) at ratio 0.304 after 5 trials"``."""
        gap = self.kept - self.target.kept
        return (f"{self.target.metric} kept {self.kept:.3f} (target {self.target.kept:g}, {gap:+.3f}) "
                f"at ratio {self.ratio:.3f} after {self.trials} trials")


def prune_to_target(model: nn.Module, scoring: Scoring, keep: Sequence[nn.Module], make_pruner: PrunerFactory,
                    example_inputs: Any, target: Target, base: Measurement, *, hi: float = 0.95, steps: int = 8,
                    rel_tol: float = 0.02, on_trial: Callable[[float, float], None] | None = None,
                    reuse_scores: bool = True) -> tuple[nn.Module, Scoring, TargetResult]:
    """The pruned copy of ``model`` that meets ``target`` with the smallest ratio found.

    Args:
        model: the unpruned model (left unchanged: every trial prunes a copy).
        scoring: the calibrated criterion and compensation, copied with each trial's model.
        keep: layers never pruned (copied with the model).
        make_pruner: builds the pruner of one trial (allocation, ``round_to``, heads).
        example_inputs: what the model is measured on.
        target: the fraction of ``target.metric`` to keep at most.
        base: the unpruned model's measurement (latency included for a latency target).
        hi: the largest ratio tried (tried first).
        steps: bisection steps at most.
        rel_tol: stop once the fraction removed is within this relative distance of the target's.
        on_trial: called with ``(ratio, kept)`` after every trial (progress bars).
        reuse_scores: score each group of the unpruned model once for all trials
            (:mod:`depgraph.workflow.score_cache`; the result is the same, the criterion runs once).

    Returns:
        ``(pruned copy, its scoring, TargetResult)``.

    Raises:
        TargetUnreachableError: even ratio ``hi`` keeps more than the target.
    """
    history: list[tuple[float, float]] = []
    scores = TrialScores() if reuse_scores else None

    def trial(ratio: float) -> tuple[tuple[nn.Module, Scoring], float]:
        m, s, k = scoring.copy_with(model, keep)
        cached = dataclasses.replace(s, importance=scores.wrap(s.importance)) if scores is not None else s
        make_pruner(m, cached, k, ratio).step()
        after = measure(m, example_inputs, latency=target.metric == "latency")
        kept = after.get(target.metric) / base.get(target.metric)
        history.append((ratio, kept))
        if on_trial is not None:
            on_trial(ratio, kept)
        return (m, s), 1.0 - kept

    if target.kept >= 1.0:
        m, s, _ = scoring.copy_with(model, keep)
        return m, s, TargetResult(target, 0.0, 1.0, 0, history)
    try:
        found = search_ratio(trial, 1.0 - target.kept, lo=0.0, hi=hi, steps=steps, rel_tol=rel_tol,
                             interpolate=True)
    except TargetUnreachableError:
        best = history[-1][1] if history else float("nan")
        raise TargetUnreachableError(
            f"target {target} cannot be met: pruning at ratio {hi:g} (the most the search tries) keeps "
            f"{best:.3f} of the {target.metric}; the layers kept whole (classifier, embeddings, ignored "
            "layers) and round_to bound how far it can go: ask for a larger fraction") from None
    (pruned, pruned_scoring), _ = found.result, found.value
    kept = next(k for r, k in reversed(history) if r == found.ratio)
    return pruned, pruned_scoring, TargetResult(target, found.ratio, kept, found.trials, history)
