"""Group reductions and normalisers: pure functions on score tensors.

A group's scores arrive as a *stack*: one row per member that contributed,
one column per root channel, and a mask saying which (member, channel) cells
were actually scored. A member may touch only some root channels (a layer
fed by a slice of a concatenation), so reductions look at the covered cells
only: ``mean`` divides by the number of members that scored the channel, not
by the number of members.

Names follow the API: ``"standarization"`` (sic) is the original spelling of
min-max scaling and is kept; ``"standardization"`` is accepted as well.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..errors import OptionError

__all__ = [
    "REDUCTIONS",
    "NORMALIZERS",
    "Reduction",
    "Normalizer",
    "check_reduction",
    "check_normalizer",
    "reduce_stack",
    "normalize",
]

_EPS = 1e-8

#: Valid ``group_reduction`` values (``None`` returns the stack itself).
REDUCTIONS: tuple[str | None, ...] = ("mean", "sum", "max", "prod", "first", "gate", None)
#: Valid ``normalizer`` values (``None`` leaves scores as they are).
NORMALIZERS: tuple[str | None, ...] = ("mean", "max", "sum", "standarization", "gaussian", "lamp", None)
_NORMALIZER_ALIASES = {"standardization": "standarization"}

Reduction = str | None | Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Normalizer = str | None | Callable[[torch.Tensor], torch.Tensor]


def _choices(values: tuple) -> str:
    return ", ".join(repr(v) for v in values)


def check_reduction(value: Reduction) -> Reduction:
    """Return ``value`` if it is a known reduction or a callable; raise ValueError listing the valid ones."""
    if callable(value) or value in REDUCTIONS:
        return value
    raise OptionError(
        f"unknown group_reduction {value!r}; choose one of {_choices(REDUCTIONS)} "
        "or pass a callable (stack, mask) -> scores"
    )


def check_normalizer(value: Normalizer) -> Normalizer:
    """Return the canonical normaliser name (or the callable); raise ValueError listing the valid ones."""
    if callable(value):
        return value
    value = _NORMALIZER_ALIASES.get(value, value) if isinstance(value, str) else value
    if value in NORMALIZERS:
        return value
    raise OptionError(
        f"unknown normalizer {value!r}; choose one of {_choices(NORMALIZERS)} "
        "or pass a callable scores -> scores"
    )


def _first_covering(mask: torch.Tensor, last: bool) -> torch.Tensor:
    """Row index of the first (or last) member that scored each column."""
    m = mask.flip(0) if last else mask
    idx = m.to(torch.int8).argmax(0)  # argmax returns the first maximum
    return mask.shape[0] - 1 - idx if last else idx


def reduce_stack(stack: torch.Tensor, mask: torch.Tensor, how: Reduction) -> torch.Tensor:
    """Reduce ``(members, channels)`` scores over members, ignoring uncovered cells.

    Returns a ``(channels,)`` tensor, or for ``how=None`` the stack with
    uncovered cells zeroed. Channels no member scored get 0.
    """
    covered = mask.any(0)
    if callable(how):
        return how(stack, mask)
    if how is None:
        return torch.where(mask, stack, torch.zeros_like(stack))
    if how in ("sum", "mean"):
        total = torch.where(mask, stack, torch.zeros_like(stack)).sum(0)
        return total / mask.sum(0).clamp(min=1) if how == "mean" else total
    if how == "max":
        out = stack.masked_fill(~mask, float("-inf")).amax(0)
    elif how == "prod":
        out = stack.masked_fill(~mask, 1.0).prod(0)
    else:  # "first" (the root side of the group) or "gate" (its last member)
        rows = _first_covering(mask, last=(how == "gate"))
        out = stack.gather(0, rows[None]).squeeze(0)
    return torch.where(covered, out, torch.zeros_like(out))


def _lamp(scores: torch.Tensor) -> torch.Tensor:
    # LAMP: a score divided by the sum of every score not smaller than it.
    order = scores.argsort(descending=True)  # largest first
    tail_sums = scores[order].cumsum(0)  # sum of scores >= each one
    out = torch.empty_like(scores)
    out[order] = scores[order] / (tail_sums + _EPS)
    return out


def normalize(scores: torch.Tensor, how: Normalizer) -> torch.Tensor:
    """Normalise 1-D scores (a 2-D stack row by row) so that groups compare."""
    if how is None:
        return scores
    if scores.dim() == 2:
        return torch.stack([normalize(row, how) for row in scores]) if len(scores) else scores
    if callable(how):
        return how(scores)
    if how == "mean":
        return scores / (scores.mean() + _EPS)
    if how == "max":
        return scores / (scores.max() + _EPS)
    if how == "sum":
        return scores / (scores.sum() + _EPS)
    if how == "standarization":  # min-max scaling to [0, 1]
        lo, hi = scores.min(), scores.max()
        return (scores - lo) / (hi - lo + _EPS)
    if how == "gaussian":  # zero mean, unit variance
        std = scores.std() if scores.numel() > 1 else scores.new_tensor(0.0)
        return (scores - scores.mean()) / (std + _EPS)
    return _lamp(scores)
