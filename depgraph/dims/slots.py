"""The channel-slot graph: every prunable axis is a *slot*, rules couple slots.

A slot is one axis of some size: a dimension of a traced value, a module's
input or output channels, a parameter's dimension, or an internal axis (the
group axis of a grouped conv, the head axis of a reshape). Rules say which
positions of one slot go together with which positions of another:

* :class:`PairRule` - an :class:`~depgraph.dims.indexmap.IndexMap` between two slots;
* :class:`FactorRule` - a merged axis that is the product of several axes
  (``reshape(B, T, H*D) -> (B, T, H, D)``, flatten of ``C*H*W``, the groups of
  a grouped conv). Removing a set from the merged axis is only expressible as
  whole slabs along the factor axes; other sets are *closed* by widening them
  along the innermost factor, which is how a grouped conv or a channel shuffle
  forces the same position in every group.

Frozen slots are those no prune may touch (model inputs/outputs, dimensions of
ops without a rule). Slots marked inexact may be pruned, but the result is not
exactly the original with those channels zeroed (a norm over that axis).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from ..errors import DepgraphError
from .indexmap import Gather, Identity, IndexMap, Offset

__all__ = ["SlotGraph", "PairRule", "FactorRule", "Endpoint", "HeadAxis"]


@dataclass
class Endpoint:
    """A slot whose removals are applied by a pruning handler."""

    node: object  # depgraph.dependency.node.Node
    handler: object  # the bound prune_out_channels / prune_in_channels
    is_out: bool
    dim: int | None = None  # for bare parameters: the tensor dim


@dataclass(frozen=True)
class HeadAxis:
    """The head axes of the query and key operands of one attention op.

    Removing position ``h`` of ``k`` removes key/value head ``h`` and, through
    the graph (GQA repeat), exactly the query heads that read it.
    """

    q: int  # slot: query heads (dim -3 of sdpa's q, the batch dim of ``q @ k^T``)
    k: int  # slot: key heads
    where: str


class PairRule:
    """Slots ``a`` and ``b`` coupled position by position through ``fwd`` (and its inverse back)."""

    def __init__(self, a: int, b: int, fwd: IndexMap):
        self.a, self.b, self.fwd, self.bwd = a, b, fwd, fwd.inverse()
        self.identity = isinstance(fwd, Identity)
        # Source positions an Offset keeps, per direction ([lo, hi)): a push whose positions all
        # fall outside (one input of a cat, read back from the output) is answered without a
        # tensor op, which keeps a DenseNet concat of k inputs from costing k index ops per push.
        self._window = {a: _window(fwd), b: _window(self.bwd)}
        #: slots whose pushes give each reached position exactly one source and come out ascending
        #: for ascending input: the propagation skips its sort check, and the echo (those positions
        #: pushed straight back through this rule) which could only reach positions already removed
        self.simple_from = frozenset(s for s, m in ((a, fwd), (b, self.bwd)) if isinstance(m, _SIMPLE))

    def push(self, slot: int, idx: torch.Tensor, state: dict, dead: dict, grouping: bool = False,
             roots: torch.Tensor | None = None, span: tuple[int, int] | None = None):
        """Positions ``idx`` removed from ``slot``: the ``(slot, positions, root positions)`` they remove across.

        ``roots`` (``state[slot][idx]``) and ``span`` (``idx``'s smallest and largest position, for
        ascending ``idx``) are optional shortcuts the propagation already knows.
        """
        src_root = state[slot][idx] if roots is None else roots
        if self.identity:  # the common case (elementwise ops, a module's channels): no index work
            return [(self.b if slot == self.a else self.a, idx, src_root)]
        fwd, dst_slot = (self.fwd, self.b) if slot == self.a else (self.bwd, self.a)
        win = self._window[slot]
        if win is not None and span is not None:
            if span[1] < win[0] or span[0] >= win[1]:
                return []  # none of them reaches the other side
            if span[0] >= win[0] and span[1] < win[1]:
                return [(dst_slot, idx + fwd.shift, src_root)]  # all of them, shifted
        dst, pos = fwd.apply(idx)
        return [(dst_slot, dst, src_root[pos])]


_SIMPLE = (Identity, Offset, Gather)  # one source per destination; ascending unique in -> out


def _window(m: IndexMap) -> tuple[int, int] | None:
    """``[lo, hi)``: the source positions an :class:`Offset` maps inside its destination (None: not an Offset)."""
    if not isinstance(m, Offset):
        return None
    return max(0, -m.shift), min(m.n_src, m.n_dst - m.shift)


class FactorRule:
    """``merged`` (size prod(sizes)) is laid out row-major over ``parts`` (outer -> inner)."""

    def __init__(self, merged: int, parts: list[int], sizes: list[int], frozen: dict[int, str]):
        self.merged, self.parts, self.sizes = merged, parts, [int(s) for s in sizes]
        self.n = math.prod(self.sizes)
        self.frozen = frozen  # the graph's frozen slots: never widen along those

    def push(self, slot: int, idx: torch.Tensor, state: dict, dead: dict, grouping: bool = False):
        """Positions ``idx`` removed from ``slot`` (the merged dim or a part): what they remove in the others."""
        if slot == self.merged:
            return self._from_merged(state, dead, grouping)
        return self._from_part(self.parts.index(slot), idx, state)

    def _from_part(self, axis: int, idx: torch.Tensor, state: dict):
        grid = torch.arange(self.n).view(self.sizes)
        sel = grid.index_select(axis, idx)  # slabs of the merged axis, one per part coordinate
        root = state[self.parts[axis]][idx]
        shape = [1] * len(self.sizes)
        shape[axis] = idx.numel()
        roots = root.view(shape).expand(sel.shape)
        return [(self.merged, sel.flatten(), roots.flatten())]

    def _from_merged(self, state: dict, dead: dict, grouping: bool = False):
        """Slabs for the removed set of the merged axis, closed if needed.

        With ``grouping`` every position is closed on its own (no full slab along
        a smaller axis is taken as such): the result is the union of what each
        single channel couples to, which is what ``get_all_groups`` reports.
        """
        k = len(self.sizes)
        root = state[self.merged].view(self.sizes)
        gone = root >= 0
        if self.merged in dead and not grouping:
            gone = gone | dead[self.merged].view(self.sizes)
        others = [tuple(j for j in range(k) if j != a) for a in range(k)]
        if grouping:
            full = [torch.zeros(s, dtype=torch.bool) for s in self.sizes]
        else:
            full = [gone.all(dim=o) if o else gone.clone() for o in others]

        def cover(flags):
            c = torch.zeros(self.sizes, dtype=torch.bool)
            for a, f in enumerate(flags):
                shape = [1] * k
                shape[a] = self.sizes[a]
                c |= f.view(shape)
            return c

        leftover = gone & ~cover(full)
        if leftover.any():
            # Close the set with the smallest slabs: add each stray position's
            # coordinate on the largest axis that may be pruned (ties: innermost).
            # Head dims (64) win over heads (12); a channel-shuffle position takes
            # its partner in the other group rather than a whole group. Frozen axes
            # (GQA's repeat axis) are skipped, so a query head widens to its KV group.
            cands = [i for i, s in enumerate(self.sizes) if s > 1]
            free = [i for i in cands if self.parts[i] not in self.frozen] or cands
            a = max(free, key=lambda i: (self.sizes[i], i))
            full[a] = full[a] | (leftover.any(dim=others[a]) if others[a] else leftover)
        out = []
        part_roots = []
        for a in range(k):
            r = root.amax(dim=others[a]) if others[a] else root
            coords = full[a].nonzero().flatten()
            part_roots.append((coords, r))
            out.append((self.parts[a], coords, r[coords]))
        # Positions of the merged axis newly covered by the (closed) slabs.
        grow = cover(full) & ~gone
        if self.merged in dead:
            grow &= ~dead[self.merged].view(self.sizes)
        if grow.any():
            best = torch.full(self.sizes, -1, dtype=torch.long)
            for a, (_coords, r) in enumerate(part_roots):
                shape = [1] * k
                shape[a] = self.sizes[a]
                ra = torch.where(full[a], r, torch.full_like(r, -1)).view(shape)
                best = torch.maximum(best, ra.expand(self.sizes))
            pos = grow.flatten().nonzero().flatten()
            out.append((self.merged, pos, best.flatten()[pos]))
        return out


class SlotGraph:
    """Slots, the rules between them, and which slots are frozen or inexact."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.labels: list[str] = []
        self.rules: list[list] = []
        self.frozen: dict[int, str] = {}
        self.inexact: dict[int, str] = {}
        self.endpoints: dict[int, Endpoint] = {}
        # slot -> [(module, attribute)]: attributes that hold the slot's size and must
        # follow it (``self.head_dim`` given to a reshape).
        self.bindings: dict[int, list[tuple[object, str]]] = {}
        self._holders: dict[tuple[int, str], list[int]] = {}  # (id(owner), attr) -> slots bound to it
        self._bind_order: dict[int, int] = {}  # slot -> its position in ``bindings``
        # Slots whose pruning depends on sizes computed at run time (reshape factors,
        # bound attributes, custom layers): after pruning them the graph runs the model once.
        self.shape_sensitive: set[int] = set()
        # (slot, {(value id, dim)}, where): a size argument computed from those dims;
        # valid only if pruning the slot also prunes one of them (see GraphBuilder).
        self.derived: list[tuple[int, frozenset, str]] = []
        # Ids of parameter values a rule tied to their own layer's endpoints (see
        # ``RuleContext.own_param``): the layer's handler prunes them.
        self.layer_params: set[int] = set()
        # Head axes of attention ops, in trace order: where whole heads can be removed.
        self.head_axes: list[HeadAxis] = []
        # (id(owner), attr) of every bind, in order: tells the builder which attributes an op's
        # rule made follow a prune (see GraphBuilder._pin_unfollowed).
        self.bind_log: list[tuple[int, str]] = []

    def bind(self, slot: int, owner: object, attr: str) -> None:
        """``owner.attr`` holds the size of ``slot``; every slot bound to it loses the same positions."""
        # By identity: two configs with equal contents are still two configs. The slot coupled to
        # is the earliest in ``bindings`` holding the attribute, found through an index rather
        # than a scan of every binding (a config attribute is bound once per layer).
        key = (id(owner), attr)
        holders = [s for s in self._holders.get(key, ()) if s != slot]
        if holders:
            other = min(holders, key=self._bind_order.__getitem__)
            if self.sizes[other] == self.sizes[slot]:
                self.pair(other, slot)
            else:  # one attribute cannot hold two sizes
                reason = f"{type(owner).__name__}.{attr} sizes dims of {self.sizes[other]} and {self.sizes[slot]}"
                self.freeze(other, reason)
                self.freeze(slot, reason)
        if slot not in self.bindings:
            self._bind_order[slot] = len(self._bind_order)
        self.bindings.setdefault(slot, []).append((owner, attr))
        self._holders.setdefault(key, []).append(slot)
        self.shape_sensitive.add(slot)
        self.bind_log.append((id(owner), attr))

    def bindings_of(self, slots: Iterable[int]) -> list[tuple[int, list[tuple[object, str]]]]:
        """``(slot, [(owner, attr)])`` for those of ``slots`` that hold a bound attribute, in bind order.

        ``O(len(slots))`` dict lookups: a prune asks for the slots it reaches, never walks every
        binding of the model (that made each prune ``O(L)``, a step ``O(L²)`` in layers).
        """
        hits = [s for s in slots if s in self.bindings]
        hits.sort(key=self._bind_order.__getitem__)
        return [(s, self.bindings[s]) for s in hits]

    def new_slot(self, size: int, label: str) -> int:
        """A new slot of ``size`` positions; ``label`` names it in messages."""
        self.sizes.append(int(size))
        self.labels.append(label)
        self.rules.append([])
        return len(self.sizes) - 1

    def pair(self, a: int, b: int, fwd: IndexMap | None = None) -> None:
        """Couple slots ``a`` and ``b`` (``fwd`` maps positions of a to b; identity when None)."""
        if a == b:
            return
        fwd = fwd or Identity(self.sizes[a])
        if fwd.n_src != self.sizes[a] or fwd.n_dst != self.sizes[b]:
            raise DepgraphError(f"map {fwd} does not fit slots {self.labels[a]} -> {self.labels[b]}")
        rule = PairRule(a, b, fwd)
        self.rules[a].append(rule)
        self.rules[b].append(rule)

    def factor(self, merged: int, parts: list[int]) -> None:
        """``merged`` is the row-major product of ``parts`` (a reshape of H*D into H and D)."""
        sizes = [self.sizes[p] for p in parts]
        if math.prod(sizes) != self.sizes[merged]:
            raise DepgraphError(f"factor sizes {sizes} do not multiply to {self.sizes[merged]}")
        rule = FactorRule(merged, parts, sizes, self.frozen)
        self.shape_sensitive.update([merged, *parts])
        self.rules[merged].append(rule)
        for p in parts:
            self.rules[p].append(rule)

    def mark_heads(self, q: int, k: int, where: str) -> None:
        """``q`` and ``k`` are the query-head and key-head axes of an attention op."""
        if self.sizes[q] > 1 and self.sizes[k] > 1:
            self.head_axes.append(HeadAxis(q, k, where))

    def freeze(self, slot: int, reason: str) -> None:
        """Forbid pruning ``slot``; the first reason is kept for messages."""
        self.frozen.setdefault(slot, reason)

    def mark_inexact(self, slot: int, reason: str) -> None:
        """Pruning ``slot`` is valid but not equal to zeroing it (for ``verify``)."""
        self.inexact.setdefault(slot, reason)
