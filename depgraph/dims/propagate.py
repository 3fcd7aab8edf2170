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

from .slots import PairRule, SlotGraph

__all__ = ["Propagation", "propagate"]


@dataclass
class Propagation:
    state: dict[int, torch.Tensor] = field(default_factory=dict)
    order: list[int] = field(default_factory=list)  # slots in the order first reached
    source: dict[int, int] = field(default_factory=dict)  # endpoint slot -> endpoint that triggered it
    violations: dict[int, str] = field(default_factory=dict)  # frozen slots reached
    inexact: dict[int, str] = field(default_factory=dict)
    counts: dict[int, int] = field(default_factory=dict)  # slot -> how many positions it loses

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
    frozen_slots, blocked = graph.frozen, blocked or {}

    def frozen_reason(slot: int) -> str | None:
        # What {**blocked, **graph.frozen} minus ``unfrozen`` (never a blocked slot) would hold:
        # looked up per reached slot, since building it would walk every frozen slot per query.
        reason = frozen_slots.get(slot)
        if reason is not None and unfrozen and slot in unfrozen and slot not in blocked:
            reason = None
        return reason if reason is not None else blocked.get(slot)

    # (slot, new positions ascending, their roots, endpoint origin, the rule to skip: the one they
    # came by, when pushing them back through it could only reach positions already removed)
    queue: deque = deque()
    hit = False  # a slot of ``until`` was reached

    def merge(slot: int, pos: torch.Tensor, roots: torch.Tensor, origin: int, via: object | None) -> None:
        # Runs once per (rule, reached slot): kept to a handful of tensor ops, since on a
        # deep model the per-call overhead, not the index count, is what adds up.
        nonlocal hit
        if pos.numel() == 0:
            return
        st = p.state.get(slot)
        d = dead.get(slot)
        if st is None:  # first visit: every position is new unless already pruned
            st = p.state[slot] = torch.full((graph.sizes[slot],), -1, dtype=torch.long)
            if until and slot in until:
                hit = True
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
        if via is None and pos.numel() > 1 and not bool((pos.diff() > 0).all()):
            pos = torch.unique(pos)  # rules expect each position once; most arrive sorted already
            roots = st[pos]
        p.counts[slot] = p.counts.get(slot, 0) + pos.numel()
        if slot in graph.inexact:
            p.inexact[slot] = graph.inexact[slot]
        reason = frozen_reason(slot)
        if reason is not None:
            p.violations[slot] = reason
            if stop_at_frozen:
                return
        nxt = slot if slot in graph.endpoints else origin
        queue.append((slot, pos, roots, nxt, via))

    merge(root, idxs, idxs.clone(), root, None)
    while queue:
        if hit:
            break  # a reachability question answered: stop early
        slot, pos, roots, origin, came_by = queue.popleft()
        span = None  # (first, last) of pos, read once and only for a rule that can use it
        for rule in graph.rules[slot]:
            if rule is came_by:
                continue
            if isinstance(rule, PairRule):
                if span is None and not rule.identity:
                    span = (int(pos[0]), int(pos[-1]))
                pushed = rule.push(slot, pos, p.state, dead, grouping, roots, span)
                via = rule if slot in rule.simple_from else None
            else:
                pushed, via = rule.push(slot, pos, p.state, dead, grouping), None
            for tgt, tpos, troots in pushed:
                merge(tgt, tpos, troots, origin, via)
    return p
