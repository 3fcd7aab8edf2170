"""Whole-head pruning: which heads of which attention block go this step.

A *unit* is a key/value head together with exactly the query heads that read
it (for multi-head attention: one query head with its key and value head);
see :mod:`depgraph.dependency.heads`. Per block:

    score(unit)   mean of the importance scores of the unit's channels, taken
                  from one importance call over every unit of the block (so
                  the criterion's normaliser sees the whole block) and summed
                  over the q/k/v/o members through the group's root indices
    count         remove floor(initial_units * head_ratio) units in all (never
                  more than asked: 3 heads at 0.5 lose one), keep at least one
                  and respect max_pruning_ratio; with round_to,
                  the kept root width (units * channels per unit) stays a
                  multiple of it where possible

Ratios come from ``head_pruning_ratio`` / ``head_pruning_ratio_dict`` on the
same schedule as channels. Blocks of a pooled scope (``global_pruning`` or a
tuple key) are ranked together. Decisions are made on the model as it is and
hold *original* positions, so they stay valid when other groups of the same
step (head dims) are pruned first.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from collections.abc import Hashable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from .._caller import user_stacklevel
from ..dependency.heads import AttentionHeads, ModuleHeads, find_attention_heads, find_module_heads
from ..errors import DepgraphError
from .options import floor_fraction
from .scope import Scope, ScopeTable

if TYPE_CHECKING:
    from .base import BasePruner

__all__ = ["HeadPlanner", "HeadDecision"]


@dataclass
class HeadDecision:
    """Units of one block to remove: their original root positions."""

    block: AttentionHeads | ModuleHeads
    orig: list[torch.Tensor]


class HeadPlanner:
    """Owns the head schedule of one pruner: scopes, initial counts, decisions."""

    def __init__(self, pruner: BasePruner) -> None:
        opts = pruner.options
        self.pruner = pruner
        self.scopes = ScopeTable(opts.replace(
            pruning_ratio=opts.head_pruning_ratio, pruning_ratio_dict=opts.head_pruning_ratio_dict), pool_tuples=True)
        self.initial: dict[Hashable, int] = {}
        # (slot graph, version) -> blocks found on it: a step reads them again on the unchanged graph
        self._blocks: tuple[Any, int, list[AttentionHeads | ModuleHeads]] | None = None
        rejected: list[str] = []
        blocks = self.blocks(rejected)
        for b in blocks:
            self.initial[b.key] = len(b.units)
        # The blocks as found on the unpruned graph: a block down to one key/value head is no longer
        # found (its last head cannot go), but its counts are still read from it (current_counts).
        self._first: tuple[Any, dict[Hashable, AttentionHeads | ModuleHeads]] = (
            pruner.DG.slot_graph, {b.key: b for b in blocks})
        check_num_heads(pruner, blocks)
        self._roles = _head_roles(opts.num_heads, blocks)
        self._counts: tuple[int, dict[nn.Module, int]] | None = None
        if opts.prune_num_heads and (rejected or not blocks):
            why = "".join(f"\n  - {r}" for r in list(dict.fromkeys(rejected))[:5])
            warnings.warn(
                (f"prune_num_heads=True: the heads of {len(set(rejected))} attention op(s) cannot be removed"
                 if rejected else "prune_num_heads=True, but no attention block with removable heads was "
                 "found in the trace (heads are read from scaled_dot_product_attention or q @ k^T on "
                 "(B, H, L, D) tensors)") + why,
                stacklevel=user_stacklevel(),
            )

    def blocks(self, rejected: list[str] | None = None) -> list[AttentionHeads | ModuleHeads]:
        """Every attention block whose heads may go, found on the graph as it is now.

        Read afresh once a prune changed the graph (earlier steps change head counts), else
        reused: finding them costs one propagation per key/value head. ``rejected`` collects
        why candidate blocks were not taken, for the warning naming them (always a fresh search).
        """
        p = self.pruner
        graph, version = p.DG.slot_graph, p.DG.version
        cached = self._blocks
        if rejected is None and cached is not None and cached[0] is graph and cached[1] == version:
            return list(cached[2])
        found = (find_attention_heads(p.DG, p.ignored_layers, p.options.root_module_types, rejected)
                 + find_module_heads(p.DG, p.ignored_layers))
        self._blocks = (graph, version, found)
        return list(found)

    def current_counts(self) -> dict[nn.Module, int]:
        """``{module: heads now}`` for each ``num_heads`` key (query or key/value count, as given)."""
        graph = self.pruner.DG
        done = len(graph.pruning_history())
        if self._counts is not None and self._counts[0] == done:
            return dict(self._counts[1])
        # Counted on the blocks found at construction, whose slots and original unit positions stay
        # valid after any prune; a rebuilt graph has other slots, so its blocks are found afresh.
        first_graph, blocks = self._first
        if first_graph is not graph.slot_graph:
            blocks = {b.key: b for b in self.blocks()}
        counts = {}
        for module, n in self.pruner.options.num_heads:
            if isinstance(module, nn.MultiheadAttention):
                counts[module] = int(module.num_heads)
                continue
            key, role = self._roles.get(module, (None, "q"))
            b = blocks.get(key)
            counts[module] = n if not isinstance(b, AttentionHeads) else _heads_now(graph, b, role)
        self._counts = (done, counts)
        return dict(counts)

    def attention_slots(self, blocks: list[AttentionHeads | ModuleHeads] | None = None) -> set[int]:
        """Endpoint slots of every head-prunable block (their groups hold head dims).

        ``blocks``: this step's ``blocks()`` when the caller has them (finding them walks the graph).
        """
        return {s for b in (self.blocks() if blocks is None else blocks) for s in b.slots}

    # -- deciding ---------------------------------------------------------------------------
    def plan(self, blocks: list[AttentionHeads | ModuleHeads] | None = None) -> list[HeadDecision]:
        """This step's decisions (empty when no block loses a head); ``blocks`` as in ``attention_slots``."""
        p = self.pruner
        step = p.current_step
        pools: dict[Hashable, list[tuple[AttentionHeads | ModuleHeads, Scope]]] = defaultdict(list)
        local: list[tuple[AttentionHeads | ModuleHeads, Scope]] = []
        for b in self.blocks() if blocks is None else blocks:
            scope = self.scopes.scope_of_any(b.modules)
            if _ratio(scope, step) <= 0 and b.key in self.initial:
                continue
            (pools[scope.key] if scope.pooled else local).append((b, scope))
        out = []
        for b, scope in local:
            soft = self._soft_units(b)
            n = self._count(b, _ratio(scope, step), len(soft))
            scores = self._scores(b) if n else None
            if scores is not None:
                scores[soft] = float("inf")  # already zeroed: counted as gone, never chosen again
                chosen = torch.argsort(scores, stable=True)[:n].tolist()
                out.append(HeadDecision(b, [b.units[u] for u in sorted(set(chosen) | set(soft))]))
        for pool in pools.values():
            out += self._plan_pool([b for b, _ in pool], _ratio(pool[0][1], step))
        return out

    def _soft_units(self, b: AttentionHeads | ModuleHeads) -> list[int]:
        """Units ``soft_pruning`` already zeroed (their root positions all recorded as soft-pruned)."""
        soft = self.pruner.soft_pruned_positions(b.root)
        if not soft:
            return []
        return [u for u in range(len(b.units)) if set(b.root_idxs([u])) <= soft]

    def _count(self, b: AttentionHeads | ModuleHeads, ratio: float, n_soft: int = 0) -> int:
        """Units to remove now; ``n_soft`` units are already zeroed and count as removed."""
        current = len(b.units) - n_soft
        initial = self.initial.setdefault(b.key, len(b.units))
        keep = max(initial - floor_fraction(initial, ratio), self._floor_keep(initial), 1)
        return self._fit(b, max(current - keep, 0), current)

    def _floor_keep(self, initial: int) -> int:
        return math.ceil(initial * (1.0 - self.pruner.options.max_pruning_ratio) - 1e-9)

    def _fit(self, b: AttentionHeads | ModuleHeads, n: int, current: int) -> int:
        """Trim ``n`` so one unit stays and, with round_to, the kept root width is a multiple of it."""
        n = min(n, current - 1)
        round_to = self.pruner.options.round_to
        width = b.unit_width
        while n > 0 and round_to and ((current - n) * width) % round_to:
            n -= 1
        return max(n, 0)

    def _scores(self, b: AttentionHeads | ModuleHeads) -> torch.Tensor | None:
        """One score per unit: the mean importance of its root channels (over all q/k/v/o members).

        Heads inside an ``nn.MultiheadAttention`` are not graph channels: their weights' L2 norm.
        """
        if isinstance(b, ModuleHeads):
            return torch.stack([
                torch.stack([w.detach().float().pow(2).sum() for w in b.unit_weights(u)]).sum().sqrt().cpu()
                for u in range(len(b.units))])
        group = b.scoring_group()
        s = self.pruner.estimate_importance(group)
        if s is None:
            return None
        s = s.detach().float().cpu().flatten()
        root = group[0].idxs
        if s.numel() != len(root):
            raise DepgraphError(
                f"the importance returned {s.numel()} scores for the heads of {b.name}, whose group has "
                f"{len(root)} root channels; pruners need one score per root channel"
            )
        # root position -> its score's index (the last one, as a dict would keep), one scatter over the width
        root_t = torch.as_tensor(root, dtype=torch.long)
        where = torch.full((int(root_t.max()) + 1 if root_t.numel() else 0,), -1, dtype=torch.long)
        where.scatter_reduce_(0, root_t, torch.arange(root_t.numel()), "amax")
        return torch.stack([s[where[torch.as_tensor(b.root_idxs([u]), dtype=torch.long)]].mean()
                            for u in range(len(b.units))])

    def _plan_pool(self, blocks: list[AttentionHeads | ModuleHeads], ratio: float) -> list[HeadDecision]:
        """Rank the units of several blocks together; each block keeps at least one unit."""
        soft = [self._soft_units(b) for b in blocks]
        now = [len(b.units) - len(sf) for b, sf in zip(blocks, soft, strict=True)]
        total_initial = sum(self.initial.setdefault(b.key, len(b.units)) for b in blocks)
        n_total = sum(now) - max(total_initial - floor_fraction(total_initial, ratio), 1)
        if n_total <= 0:
            return []
        ranked: list[tuple[float, int, int]] = []
        for i, b in enumerate(blocks):
            scores = self._scores(b)
            if scores is not None:
                ranked += [(float(v), i, u) for u, v in enumerate(scores.tolist()) if u not in soft[i]]
        ranked.sort()
        caps = [n - max(self._floor_keep(self.initial[b.key]), 1) for b, n in zip(blocks, now, strict=True)]
        chosen: dict[int, list[int]] = defaultdict(list)
        for _, i, u in ranked:
            if len(chosen[i]) < caps[i]:
                chosen[i].append(u)
                n_total -= 1
                if n_total == 0:
                    break
        out = []
        for i, b in enumerate(blocks):
            units = chosen.get(i, [])
            picked = set(units[: self._fit(b, len(units), now[i])]) | set(soft[i])
            if picked:
                out.append(HeadDecision(b, [b.units[u] for u in sorted(picked)]))
        return out

    # -- applying -----------------------------------------------------------------------------
    def groups(self, decisions: list[HeadDecision]) -> Iterator[Any]:
        """The group of each decision, read from the graph when it is its turn."""
        for d in decisions:
            group = d.block.group_of(d.orig)
            if group is not None and self.pruner.DG.check_pruning_group(group):
                if not self.pruner.options.soft_pruning:
                    self._rescale_initial_widths(d.block, len(d.orig))
                yield group

    def _rescale_initial_widths(self, b: AttentionHeads, n_removed: int) -> None:
        """Head-dim groups count channels: removing heads must not count as pruning their dims."""
        before = len(b.units)
        if not before:
            return
        widths = self.pruner.initial_widths()
        # the roots among the block's own layers (not every root of the model: that is per block)
        endpoints = self.pruner.DG.slot_graph.endpoints
        for module in dict.fromkeys(endpoints[s].node.module for s in b.slots if s in endpoints):
            node = self.pruner.DG.module2node.get(module)
            if module in widths and node is not None and node.out_slot in b.slots:
                self.pruner.set_initial_width(module, round(widths[module] * (before - n_removed) / before))


def _head_roles(num_heads: tuple, blocks: list) -> dict[nn.Module, tuple[Hashable, str]]:
    """``module -> (block key, "q" | "kv")``: which count of its block a ``num_heads`` entry gave."""
    roles = {}
    for module, n in num_heads:
        for b in blocks:
            if module in b.modules:
                roles[module] = (b.key, "kv" if n == b.kv_heads != b.query_heads else "q")
                break
    return roles


def _heads_now(graph: Any, b: AttentionHeads, role: str) -> int:
    """The query (``role="q"``) or key/value head count of block ``b`` on the graph as it is now.

    Query heads are the alive positions of the query head axis; a key/value head is there while
    any root position of its unit is (head-dim prunes shrink a unit, only head prunes empty it).
    """
    if role != "kv":
        return graph.current_width(b.axis.q)
    return sum(1 for u in b.units if bool(graph.is_alive(b.root_slot, u).any()))


def _ratio(scope: Scope, step: int) -> float:
    return scope.schedule[min(step, len(scope.schedule) - 1)]


def check_num_heads(pruner: BasePruner, blocks: list[AttentionHeads]) -> None:
    """``num_heads={module: n}`` must match the heads the trace found in ``module``.

    Raises:
        DepgraphError: listing every module whose ``n`` differs from the query or
            key/value head count of its attention block.
    """
    problems = []
    for module, n in pruner.options.num_heads:
        name = getattr(pruner.DG.module2node.get(module), "name", type(module).__name__)
        if isinstance(module, nn.MultiheadAttention):
            if n != module.num_heads:
                problems.append(f"num_heads[{name}] = {n}, but this nn.MultiheadAttention has {module.num_heads} heads")
            continue
        for b in blocks:
            if module in b.modules and n not in (b.query_heads, b.kv_heads):
                counts = f"{b.query_heads} query heads" + (
                    f" and {b.kv_heads} key/value heads" if b.kv_heads != b.query_heads else "")
                problems.append(f"num_heads[{name}] = {n}, but the traced attention of {name} has {counts}")
    if problems:
        raise DepgraphError(
            "num_heads does not match the attention structure found in the trace:\n  - " + "\n  - ".join(problems)
            + "\nnum_heads is optional: heads are discovered from the trace; drop the entry or correct it")
