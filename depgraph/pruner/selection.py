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
    """A partition of ``range(n)`` root channels into classes removed together.

    Stored as one label tensor (``label[c]`` = the smallest member of ``c``'s
    class), so every query is a sort or a scatter over the width: no Python
    object per channel and no scan per class (an MLP of 28672 channels in
    28672 classes costs one sort, not 28672 ``nonzero`` calls).
    """

    def __init__(self, n: int, classes: Sequence[Sequence[int]] | None = None) -> None:
        self.n = n
        self.label = torch.arange(n)
        self._groups: list[torch.Tensor] | None = None
        if classes:
            for cls in classes:
                self.merge(cls)

    @classmethod
    def from_labels(cls, labels: torch.Tensor) -> ChannelClasses:
        """Classes from a label per channel (any labels; equal labels share a class)."""
        out = cls(int(labels.numel()))
        if out.n:
            # canonical label: the smallest member of each class
            _, inverse = torch.unique(labels, return_inverse=True)
            first = torch.full((out.n,), out.n, dtype=torch.long).scatter_reduce(
                0, inverse, torch.arange(out.n), "amin"
            )
            out.label = first[inverse]
        return out

    def merge(self, members: Sequence[int]) -> None:
        """Put ``members`` in one class (joining the classes they already belong to)."""
        members = [int(m) for m in members if 0 <= int(m) < self.n]
        if len(members) < 2:
            return
        self.link(torch.tensor(members[:-1]), torch.tensor(members[1:]))

    def link(self, a: torch.Tensor, b: torch.Tensor) -> None:
        """Join the classes of ``a[i]`` and ``b[i]`` for every ``i``, in one pass of tensor ops.

        Min-label propagation along the pairs, then pointer jumping: the number of
        rounds grows with the longest chain of pairs, not with the number of pairs.
        """
        a, b = torch.as_tensor(a, dtype=torch.long).flatten(), torch.as_tensor(b, dtype=torch.long).flatten()
        keep = (a >= 0) & (a < self.n) & (b >= 0) & (b < self.n)
        a, b = a[keep], b[keep]
        if a.numel() == 0:
            return
        label = self.label.clone()
        while True:
            lo = torch.minimum(label[label[a]], label[label[b]])
            new = label.scatter_reduce(0, label[a], lo, "amin").scatter_reduce(0, label[b], lo, "amin")
            new = new[new]  # pointer jumping: every label points at its class's current minimum
            if torch.equal(new, label):
                break
            label = new
        self.label = label
        self._groups = None

    @property
    def trivial(self) -> bool:
        """Whether every channel is its own class, so selection can skip the class bookkeeping."""
        return bool((self.label == torch.arange(self.n)).all())

    def _sorted(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Channels ordered by class (classes by smallest member, members ascending), and class sizes."""
        order = torch.argsort(self.label, stable=True)
        _, counts = torch.unique_consecutive(self.label[order], return_counts=True)
        return order, counts

    def groups(self) -> list[torch.Tensor]:
        """Each class as a sorted index tensor, ordered by smallest member."""
        if self._groups is None:
            order, counts = self._sorted()
            self._groups = list(torch.split(order, counts.tolist()))
        return self._groups

    @property
    def unit(self) -> int:
        """The size all classes share (removal counts are multiples of it), else 1."""
        if self.n == 0:
            return 1
        counts = torch.bincount(self.label, minlength=self.n)
        sizes = counts[counts > 0]
        return int(sizes[0]) if bool((sizes == sizes[0]).all()) else 1

    def class_mean(self, scores: torch.Tensor) -> torch.Tensor:
        """Replace every channel's score by the mean score of its class."""
        if self.trivial:
            return scores
        sums = torch.zeros(self.n, dtype=scores.dtype).index_add_(0, self.label, scores)
        counts = torch.bincount(self.label, minlength=self.n).to(scores.dtype)
        return (sums / counts.clamp(min=1))[self.label]

    def lowest(self, scores: torch.Tensor, n: int) -> list[int]:
        """Whole classes, lowest mean first, skipping a class that would overshoot ``n``."""
        order, counts = self._sorted()
        starts = torch.cumsum(counts, 0) - counts
        means = torch.zeros(len(counts), dtype=torch.float64).index_add_(
            0, torch.repeat_interleave(torch.arange(len(counts)), counts), scores[order].double()
        ) / counts.double()
        ranked = torch.argsort(means, stable=True)
        sizes = counts[ranked]
        if bool((sizes == sizes[0]).all()):  # equal classes: the first n // size of them
            take = ranked[: n // int(sizes[0])]
        else:
            picked, total = [], 0
            for k, size in zip(ranked.tolist(), sizes.tolist(), strict=True):
                if total + size > n:
                    continue
                picked.append(k)
                total += size
                if total == n:
                    break
            take = torch.tensor(picked, dtype=torch.long)
        if take.numel() == 0:
            return []
        if bool((counts == counts[0]).all()):
            members = order.view(-1, int(counts[0]))[take].flatten()
        else:
            members = torch.cat([order[starts[k] : starts[k] + counts[k]] for k in take.tolist()])
        return sorted(members.tolist())


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
    return classes.lowest(scores.cpu(), n)
