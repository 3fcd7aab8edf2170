"""How many channels a group loses, and which: pure functions on scores.

Two constraints shape every choice:

* **Channel classes.** Some root channels can only go together: a grouped
  convolution must lose the same local position in every channel group, so
  the graph closes ``{c}`` to ``{c, c + C/g, c + 2C/g, ...}``; user-declared
  ``in/out_channel_groups`` do the same for layers the graph cannot see
  through. A class is scored by the mean of its channels and removed whole.
* **Counts.** The number kept is ``floor(initial * (1 - ratio))``, never below
  ``initial * (1 - max_pruning_ratio)`` or 1, rounded *down* to a multiple of
  ``round_to`` as Torch-Pruning rounds it (widths 8 and 16 at ratio 0.3 with
  ``round_to=4`` keep 4 and 8) - *up* instead where rounding down would keep
  nothing or cross ``max_pruning_ratio`` - and the number removed is a whole
  number of classes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .options import floor_fraction

__all__ = ["ChannelClasses", "count_to_prune", "fit_count", "pick_lowest"]


class ChannelClasses:
    """A partition of ``range(n)`` root channels into classes removed together."""

    def __init__(self, n: int, classes: Sequence[Sequence[int]] | None = None) -> None:
        self.n = n
        self.label = torch.arange(n)
        if classes:
            for cls in classes:
                self.merge(cls)

    def merge(self, members: Sequence[int]) -> None:
        """Put ``members`` in one class (joining the classes they already belong to)."""
        members = [int(m) for m in members if 0 <= int(m) < self.n]
        if len(members) < 2:
            return
        labels = self.label[members].unique()
        target = labels.min()
        self.label[torch.isin(self.label, labels)] = target

    @property
    def trivial(self) -> bool:
        return bool((self.label == torch.arange(self.n)).all())

    def groups(self) -> list[torch.Tensor]:
        """Each class as a sorted index tensor, ordered by smallest member."""
        order = torch.unique(self.label)
        return [(self.label == lab).nonzero().flatten() for lab in order]

    @property
    def unit(self) -> int:
        """The size all classes share (removal counts are multiples of it), else 1."""
        sizes = {len(g) for g in self.groups()}
        return sizes.pop() if len(sizes) == 1 else 1

    def class_mean(self, scores: torch.Tensor) -> torch.Tensor:
        """Replace every channel's score by the mean score of its class."""
        if self.trivial:
            return scores
        out = torch.empty_like(scores)
        for g in self.groups():
            out[g] = scores[g].mean()
        return out


def count_to_prune(
    current: int,
    initial: int,
    ratio: float,
    max_ratio: float = 1.0,
    round_to: int | None = None,
    unit: int = 1,
) -> int:
    """Channels to remove now so that ``initial * (1 - ratio)`` remain (see module docstring).

    Example:
        >>> count_to_prune(current=64, initial=64, ratio=0.5, round_to=8)
        32
    """
    keep = floor_fraction(initial, 1.0 - ratio)
    floor_keep = max(math.ceil(initial * (1.0 - max_ratio) - 1e-9), 1)
    keep = max(keep, floor_keep)
    if round_to:
        keep = _round_keep(keep, current, round_to, floor_keep)
    n = max(current - keep, 0)
    # whole classes only, and the result must still respect round_to
    n -= n % unit
    while n > 0 and round_to and (current - n) % round_to:
        n -= unit
    return max(n, 0)


def _round_keep(keep: int, current: int, round_to: int, floor_keep: int) -> int:
    """``keep`` rounded down to a multiple of ``round_to``; up where down would go below ``floor_keep``."""
    down = keep - keep % round_to
    if down >= floor_keep:
        return down
    return min(current, math.ceil(keep / round_to) * round_to)


def fit_count(n: int, current: int, cap: int, round_to: int | None = None, unit: int = 1) -> int:
    """Trim a requested removal count ``n`` to ``cap``, whole classes and ``round_to``."""
    n = max(min(n, cap), 0)
    if round_to and n:
        n = current - _round_keep(current - n, current, round_to, max(current - cap, 1))
    n -= n % unit
    while n > 0 and round_to and (current - n) % round_to:
        n -= unit
    return max(n, 0)


def pick_lowest(scores: torch.Tensor, n: int, classes: ChannelClasses | None = None) -> list[int]:
    """The ``n`` lowest-scoring root channels, taking whole classes (ties: lower index first)."""
    if n <= 0:
        return []
    if classes is None or classes.trivial:
        order = torch.argsort(scores.cpu(), stable=True)
        return sorted(order[:n].tolist())
    groups = classes.groups()
    means = torch.stack([scores[g].mean() for g in groups]).cpu()
    chosen: list[int] = []
    for k in torch.argsort(means, stable=True).tolist():
        if len(chosen) + len(groups[k]) > n:
            continue
        chosen.extend(groups[k].tolist())
        if len(chosen) == n:
            break
    return sorted(chosen)
