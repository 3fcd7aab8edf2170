"""Turn groups, scores and ratios into decisions ``(root, pruning_fn, root idxs)``.

Pure with respect to the model: nothing here prunes. ``BasePruner.step``
builds the final groups from the decisions and prunes them (or hands them
to the caller with ``interactive=True``).

Flow for one step::

    candidates             every prunable group: root, width now and at start, scope
    plan_local(cand)       per group: count_to_prune -> scores -> pick_lowest
    plan_pooled(cands)     per pool (a global_pruning scope / isomorphic class):
                           one ranking over all channels, then per-group counts;
                           returns counts so a group changed meanwhile is re-picked
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from ..errors import DepgraphError
from .options import floor_fraction
from .scope import Scope
from .selection import ChannelClasses, count_to_prune, fit_count, pick_lowest

if TYPE_CHECKING:  # the graph imports criteria and pruners; only the types are needed here
    from ..dependency.group import Group


if TYPE_CHECKING:
    from .base import BasePruner

__all__ = ["Candidate", "candidates", "refresh", "plan_local", "plan_pooled"]


@dataclass
class Candidate:
    """A prunable group and what the pruner knows about its root."""

    group: Group
    root: Any
    fn: Callable
    alive: int  # root channels present now
    initial: int  # root channels at construction
    scope: Scope
    soft: list[int] = field(default_factory=list)  # channels already zeroed by soft pruning
    scores: torch.Tensor | None = None
    classes: ChannelClasses | None = None

    @property
    def current(self) -> int:
        """Root channels still counted as present: alive ones minus those soft pruning zeroed."""
        return self.alive - len(self.soft)


def candidates(pruner: BasePruner, pooled: bool | None, skip: set[int] | None = None) -> Iterator[Candidate]:
    """The groups of the local (``pooled=False``) or pooled scopes (``None``: both), as the model is now.

    ``skip``: root slots whose groups are left alone (attention head dims when only heads go).
    """
    for group in pruner.prunable_groups():
        root_item = group[0]
        root = root_item.dep.target.module
        if skip and getattr(pruner.DG.module2node.get(root), "out_slot", None) in skip:
            continue
        scope = pruner.scopes.scope_of(root)
        if pooled is not None and scope.pooled != pooled:
            continue
        alive = len(root_item.idxs)
        soft = sorted(pruner.soft_pruned_positions(root))
        yield Candidate(
            group, root, root_item.dep.handler, alive, pruner.initial_width(root, alive), scope, soft
        )


def refresh(pruner: BasePruner, cand: Candidate) -> Candidate:
    """The same root's group re-read from the graph (its width changed since it was scored)."""
    out = pruner.DG.is_out_channel_pruning_fn(cand.fn)
    width = pruner.DG.get_out_channels(cand.root) if out else pruner.DG.get_in_channels(cand.root)
    group = pruner.DG.get_pruning_group(cand.root, cand.fn, list(range(width)))
    soft = [i for i in cand.soft if i < width]
    return Candidate(group, cand.root, cand.fn, width, cand.initial, cand.scope, soft)


def _scores(pruner: BasePruner, cand: Candidate) -> torch.Tensor | None:
    if cand.scores is None:
        s = pruner.estimate_importance(cand.group)
        if s is None:
            return None
        s = s.detach().float().cpu().clone()
        if cand.soft:
            s[cand.soft] = float("inf")  # already zeroed: never "newly" chosen
        cand.classes = channel_classes(pruner, cand)
        cand.scores = cand.classes.class_mean(s)
    return cand.scores


def channel_classes(pruner: BasePruner, cand: Candidate) -> ChannelClasses:
    """Root channels that must go together: graph closures plus user-declared channel groups."""
    classes = ChannelClasses.from_labels(_closure_labels(pruner, cand))
    declared = pruner.declared_channel_groups()
    if not declared:
        return classes
    for item in cand.group.items:
        module = item.dep.target.module
        n_groups = declared.get((module, item.dep.side))
        if not n_groups or n_groups < 2 or not isinstance(module, nn.Module):
            continue
        side = item.dep.side
        width = pruner.DG.get_out_channels(module) if side == "out" else pruner.DG.get_in_channels(module)
        block = width // n_groups if width and width % n_groups == 0 else 0
        if not block or not item.idxs:
            continue
        # roots at the same position within a channel group go together: link each to the
        # smallest root sharing its local position
        local = torch.as_tensor(item.idxs, dtype=torch.long) % block
        roots = torch.as_tensor(item.root_idxs, dtype=torch.long)
        first = torch.full((block,), cand.alive, dtype=torch.long).scatter_reduce(0, local, roots, "amin")
        classes.link(roots, first[local])
    return classes


def _closure_labels(pruner: BasePruner, cand: Candidate) -> torch.Tensor:
    """A class label per root channel now: the graph's closed couplings (grouped conv, shuffle, MHA head dims).

    Each class costs one propagation over the whole group (a ViT's residual stream: 64
    of them), so the partition is cached per root slot in original positions. Removing
    positions only shrinks a closure (removed positions already count as gone), so a
    cached class minus the removed positions is still closed: reused on later steps.
    """
    DG = pruner.DG
    slot = DG.slot_of(cand.root, cand.fn)
    alive = DG.alive_positions(slot)
    labels = pruner.closure_cache.get(slot)
    if labels is None or bool((labels[alive] < 0).any()):
        labels = torch.full((DG.original_width(slot),), -1, dtype=torch.long)
        first = _closure(DG, slot, alive, 0)
        step = _stride(DG, slot, alive, first.tolist())
        if step is not None:  # class of channel c: {c % step, c % step + step, ...}
            labels[alive] = alive[torch.arange(cand.alive) % step]
        elif first.numel() > 1:  # closed coupling: probe each class once
            for c in range(cand.alive):
                if labels[alive[c]] >= 0:
                    continue
                members = first if c == 0 else _closure(DG, slot, alive, c)
                labels[alive[members]] = int(alive[c])
        else:
            labels[alive] = alive
        pruner.closure_cache[slot] = labels
    return labels[alive]


def _closure(DG: Any, slot: int, alive: torch.Tensor, c: int) -> torch.Tensor:
    """Current indices of the root channels that go with current channel ``c``."""
    return DG.to_current(slot, DG.closed_positions(slot, int(alive[c])))


def _stride(DG: Any, slot: int, alive: torch.Tensor, first: list[int]) -> int | None:
    """``s`` when the classes are ``{j, j + s, j + 2s, ...}``: channel 0's closure is
    ``{0, s, 2s, ...}`` over the whole root (the same position in every head or conv
    group) and two more probes agree.

    Three propagations instead of one per class. A class guessed wrong would still be
    closed by the final group, so a wrong guess can only change how many channels go.
    """
    n, k = alive.numel(), len(first)
    if k < 2 or n % k or first != list(range(0, n, n // k)):
        return None
    step = n // k
    for c in sorted({step - 1, step // 2} - {0}):
        if _closure(DG, slot, alive, c).tolist() != [c + i * step for i in range(k)]:
            return None
    return step


def _check_scores(cand: Candidate, s: torch.Tensor) -> None:
    if s.dim() != 1 or s.numel() != cand.alive:
        raise DepgraphError(
            f"the importance returned scores of shape {tuple(s.shape)} for the group rooted at "
            f"{getattr(cand.group[0].dep.target, 'name', '?')}, which has {cand.alive} channels; "
            "pruners need one score per root channel (group_reduction=None returns a per-member stack)"
        )


def _decide(cand: Candidate, n: int) -> list[int]:
    return sorted(set(pick_lowest(cand.scores, n, cand.classes)) | set(cand.soft)) if n else []


def plan_local(pruner: BasePruner, cand: Candidate) -> list[int]:
    """Root channels ``cand`` loses this step on its own (empty: none)."""
    opts = pruner.options
    ratio = cand.scope.schedule[min(pruner.current_step, len(cand.scope.schedule) - 1)]
    if count_to_prune(cand.current, cand.initial, ratio, opts.max_pruning_ratio, opts.round_to) == 0:
        return []  # skip scoring groups that lose nothing this step
    s = _scores(pruner, cand)
    if s is None:
        return []
    _check_scores(cand, s)
    n = count_to_prune(
        cand.current, cand.initial, ratio, opts.max_pruning_ratio, opts.round_to, cand.classes.unit
    )
    return _decide(cand, n)


def _signature(cand: Candidate) -> Hashable:
    """Isomorphic classes: the members' layer types and sides in group order, not their widths
    (as Torch-Pruning classes them: the blocks of every ResNet stage rank together)."""
    return tuple((type(it.dep.target.module).__name__, it.dep.side) for it in cand.group.items)


def plan_pooled(pruner: BasePruner, cands: list[Candidate]) -> list[tuple[Candidate, int]]:
    """``(candidate, channels to remove)`` from one ranking per pool.

    A pool (a scope under ``global_pruning``, or with ``isomorphic=True`` the
    groups of one structure within it) must keep ``floor(initial * (1 - ratio))``
    channels in total; the lowest scores over the whole pool decide how many
    each group gives, then each count is capped by ``max_pruning_ratio`` and
    fitted to ``round_to`` and channel classes.
    """
    opts = pruner.options
    pools: dict[Hashable, list[Candidate]] = defaultdict(list)
    for cand in cands:
        s = _scores(pruner, cand)
        if s is None:
            continue
        _check_scores(cand, s)
        key = (cand.scope.key, _signature(cand)) if opts.isomorphic else cand.scope.key
        pools[key].append(cand)
    decisions = []
    for pool in pools.values():
        scope = pool[0].scope
        ratio = scope.schedule[min(pruner.current_step, len(scope.schedule) - 1)]
        total_now = sum(c.current for c in pool)
        n_total = total_now - floor_fraction(sum(c.initial for c in pool), 1.0 - ratio)
        if n_total <= 0:
            continue
        flat = torch.cat([c.scores for c in pool])
        owner = torch.cat([torch.full((c.alive,), i) for i, c in enumerate(pool)])
        chosen = owner[torch.argsort(flat, stable=True)[:n_total]]
        counts = torch.bincount(chosen, minlength=len(pool)).tolist()
        for cand, n in zip(pool, counts, strict=True):
            cap = count_to_prune(cand.current, cand.initial, opts.max_pruning_ratio, opts.max_pruning_ratio)
            n = fit_count(n, cand.current, cap, opts.round_to, cand.classes.unit)
            if n:
                decisions.append((cand, n))
    return decisions


def pick(pruner: BasePruner, cand: Candidate, n: int) -> list[int]:
    """``n`` lowest-scoring channels of ``cand`` plus its soft-pruned ones."""
    if n <= 0 or _scores(pruner, cand) is None:
        return []
    return _decide(cand, fit_count(n, cand.current, n, pruner.options.round_to, cand.classes.unit))
