"""Fixpoint propagation of removed positions through the slot graph.

State per reached slot: an int64 tensor ``root`` of the slot's size, ``-1``
where the position is kept, else the root channel the removal came from. A
queue carries only *newly* removed positions, so every position is pushed
through each rule once; the loop ends when no slot changes.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import torch

from .slots import SlotGraph

__all__ = ["Propagation", "propagate"]


@dataclass
class Propagation:
    state: dict[int, torch.Tensor] = field(default_factory=dict)
    order: list[int] = field(default_factory=list)  # slots in the order first reached
    source: dict[int, int] = field(default_factory=dict)  # endpoint slot -> endpoint that triggered it
    violations: dict[int, str] = field(default_factory=dict)  # frozen slots reached
    inexact: dict[int, str] = field(default_factory=dict)

    def removed(self, slot: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(positions, root of each position) removed from ``slot``."""
        r = self.state[slot]
        pos = (r >= 0).nonzero().flatten()
        return pos, r[pos]


def propagate(
    graph: SlotGraph,
    root: int,
    idxs: torch.Tensor,
    dead: dict[int, torch.Tensor],
    blocked: dict[int, str] | None = None,
    stop_at_frozen: bool = True,
    grouping: bool = False,
    until: set[int] | None = None,
    unfrozen: set[int] | None = None,
) -> Propagation:
    """Everything coupled to removing ``idxs`` (original positions) from slot ``root``.

    ``blocked`` adds frozen slots for this query only (``get_all_groups(ignored_layers=...)``).
    ``grouping`` closes every position on its own (see ``FactorRule``), for listing groups.
    ``unfrozen`` lifts the graph's freeze of these slots for this query only.
    """
    p = Propagation()
    frozen = graph.frozen if not blocked else {**blocked, **graph.frozen}
    if unfrozen:  # slots this query may change after all (model outputs, for an explicit request)
        frozen = {s: r for s, r in frozen.items() if s not in unfrozen or (blocked and s in blocked)}
    queue: deque = deque()

    def merge(slot: int, pos: torch.Tensor, roots: torch.Tensor, origin: int) -> None:
        # Runs once per (rule, reached slot): kept to a handful of tensor ops, since on a
        # deep model the per-call overhead, not the index count, is what adds up.
        if pos.numel() == 0:
            return
        st = p.state.get(slot)
        d = dead.get(slot)
        if st is None:  # first visit: every position is new unless already pruned
            st = p.state[slot] = torch.full((graph.sizes[slot],), -1, dtype=torch.long)
            fresh = ~d[pos] if d is not None else None
        else:
            fresh = st[pos] < 0
            if d is not None:
                fresh &= ~d[pos]
        if fresh is not None:
            pos, roots = pos[fresh], roots[fresh]
            if pos.numel() == 0:
                return
        if slot == root:  # a closure that widens the root itself: each root channel is its own root
            roots = pos
        if slot not in p.source:
            p.order.append(slot)
            p.source[slot] = origin
        st[pos] = roots
        if slot in graph.inexact:
            p.inexact[slot] = graph.inexact[slot]
        if slot in frozen:
            p.violations[slot] = frozen[slot]
            if stop_at_frozen:
                return
        nxt = slot if slot in graph.endpoints else origin
        if pos.numel() > 1 and not bool((pos.diff() > 0).all()):
            pos = torch.unique(pos)  # rules expect each position once; most arrive sorted already
        queue.append((slot, pos, nxt))

    merge(root, idxs, idxs.clone(), root)
    while queue:
        if until and not until.isdisjoint(p.state.keys()):
            break  # a reachability question answered: stop early
        slot, pos, origin = queue.popleft()
        for rule in graph.rules[slot]:
            for tgt, tpos, troots in rule.push(slot, pos, p.state, dead, grouping):
                merge(tgt, tpos, troots, origin)
    return p
