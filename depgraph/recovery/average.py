"""Weight averaging of recovered models (a model soup).

Several recoveries of one pruned model (different recipes, seeds or learning-rate
cycles) end in nearby points of the same loss basin; the mean of their weights is
often better on held-out data than any of them (Wortsman et al., "Model soups",
2022; averaging the ends of learning-rate cycles is SWA, Izmailov et al., 2018).
On SmolLM2-135M pruned to 80% of its parameters, the mean of two recoveries from
the same pruned model reached perplexity 31.39 where the runs reached 32.67 and
31.88; averaged with a clearly better run (31.09), no set of the others beat it
(README, Benchmarks): compare the average with the best run on held-out data.

Averaging only makes sense for models trained from one starting point: the shapes
are checked here, the common start cannot be. Floating-point tensors are averaged
in float32 (float64 stays float64) and written back in their own dtype; integer
tensors (counters, index buffers) are taken from the first model. BatchNorm running
statistics are averaged like any tensor; re-measure them on data afterwards
(:func:`depgraph.utils.batchnorm.recalibrate_batchnorm`, ``depgraph average --data``),
as SWA does, since the averaged weights change what each layer sees.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping, Sequence

import torch
import torch.nn as nn

from ..errors import OptionError, RecoveryError

__all__ = ["average_state_dicts", "average_models", "check_weights"]


def check_weights(weights: Sequence[float] | None, count: int | None) -> list[float] | None:
    """The weights as a list (None stays None), refused unless each is a finite number >= 0, they sum above 0
    and, when ``count`` is known, there is one per model. Why public: the command line checks them with this
    before it loads any model.

    Raises:
        OptionError: naming the first bad weight, or the counts.
    """
    if weights is None:
        return None
    values = list(weights)
    bad = [w for w in values if not isinstance(w, (int, float)) or isinstance(w, bool) or not math.isfinite(w) or w < 0]
    if bad:
        raise OptionError(f"average: weights must be finite numbers >= 0, got {bad[0]!r}")
    if sum(values) <= 0:
        raise OptionError("average: the weights sum to 0; give at least one positive weight")
    if count is not None and len(values) != count:
        raise OptionError(f"average: {len(values)} weights for {count} models; give one weight per model")
    return values


def average_state_dicts(states: Iterable[Mapping[str, torch.Tensor]], weights: Sequence[float] | None = None,
                        *, names: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """The weighted mean of state dicts of one architecture, read one at a time.

    Why an iterable: the models can be loaded one after the other (a generator), so
    averaging N models holds one of them and the running sum, not all N.

    Args:
        states: two or more state dicts with the same keys, shapes and dtypes.
        weights: one weight >= 0 per state dict (normalised to sum 1); None: equal weights.
        names: what to call each state dict in an error (default: "model 1", "model 2", ...).

    Returns:
        A new state dict on the CPU: floating-point tensors averaged (in float32, or float64
        for float64 tensors) and cast back to their dtype; other tensors from the first.

    Raises:
        OptionError: a weight is negative or not finite, they sum to 0, or their count is not
            the number of state dicts.
        RecoveryError: fewer than two state dicts, or one differs from the first in its keys, a
            tensor's shape or a tensor's dtype (named in the message).
    """
    count = len(states) if isinstance(states, Sequence) else None
    values = check_weights(weights, count)

    def name(i: int) -> str:
        return names[i] if names is not None and i < len(names) else f"model {i + 1}"

    total: dict[str, torch.Tensor] = {}
    first: dict[str, torch.Tensor] = {}
    weight_sum = 0.0
    n = 0
    for i, state in enumerate(states):
        if values is not None and i >= len(values):
            raise OptionError(f"average: {len(values)} weights for {i + 1} or more models; give one weight per model")
        w = 1.0 if values is None else float(values[i])
        if i == 0:
            first = {k: v.detach() for k, v in state.items()}
            for k, v in first.items():
                total[k] = v.to("cpu", _sum_dtype(v), copy=True).mul_(w) if v.is_floating_point() else v.to("cpu", copy=True)
        else:
            _check_same(first, state, name(0), name(i))
            for k, v in state.items():
                if v.is_floating_point():
                    total[k].add_(v.detach().to("cpu", total[k].dtype), alpha=w)
        weight_sum += w
        n = i + 1
    if n < 2:
        raise RecoveryError(f"average: needs two or more models, got {n}")
    check_weights(values, n)  # a generator ends only here: fewer models than weights
    return {k: (v.div_(weight_sum).to(first[k].dtype) if first[k].is_floating_point() else v) for k, v in total.items()}


def _sum_dtype(tensor: torch.Tensor) -> torch.dtype:
    return torch.float64 if tensor.dtype == torch.float64 else torch.float32


def _check_same(first: Mapping[str, torch.Tensor], other: Mapping[str, torch.Tensor], a: str, b: str) -> None:
    """Refuse ``other`` unless it has ``first``'s keys, shapes and dtypes: a different architecture or prune."""
    missing, extra = sorted(set(first) - set(other)), sorted(set(other) - set(first))
    if missing or extra:
        what = (f"lacks {missing[:3]}" if missing else "") + (" and " if missing and extra else "") + \
               (f"has {extra[:3]} that {a} does not" if extra else "")
        raise RecoveryError(f"average: {b} is not the same architecture as {a}: it {what}")
    for k, v in first.items():
        o = other[k]
        if tuple(o.shape) != tuple(v.shape):
            raise RecoveryError(f"average: {k!r} is {tuple(v.shape)} in {a} but {tuple(o.shape)} in {b}; only "
                                "recoveries of the same pruned model can be averaged")
        if o.dtype != v.dtype:
            raise RecoveryError(f"average: {k!r} is {v.dtype} in {a} but {o.dtype} in {b}; load them in one dtype")


def average_models(models: Sequence[nn.Module], weights: Sequence[float] | None = None) -> nn.Module:
    """A copy of ``models[0]`` holding the weighted mean of the models' weights (a model soup).

    Why: recoveries of one pruned model (different recipes, seeds or learning-rate cycles)
    often do better averaged than alone; see the module docstring for when it applies.
    The models are not changed.

    Args:
        models: two or more models of the same architecture and widths, trained from one start.
        weights: one weight >= 0 per model (normalised to sum 1); None: equal weights.

    Raises:
        OptionError: bad weights (see :func:`average_state_dicts`).
        RecoveryError: fewer than two models, or they differ in architecture or widths.

    Example:
        >>> soup = depgraph.average_models([recovered_a, recovered_b])
    """
    models = list(models)
    averaged = average_state_dicts([m.state_dict() for m in models], weights)
    soup = copy.deepcopy(models[0])
    with torch.no_grad():
        soup.load_state_dict(averaged)
    return soup
