"""Whole attention heads as removable units, found from the traced attention ops.

The dimension rules mark the head axes of every attention op (sdpa's dim -3,
the shared batch dim of ``q @ k^T``; see ``HeadAxis``). Removing one position
of a key-head axis and propagating it through the slot graph gives one *head
unit*: the rows of the k/v projections of that key/value head, the rows of q
of exactly the query heads that read it (GQA's repeat or ``enable_gqa``
closes a query head to its whole group), and the matching columns of the
output projection. A unit is expressed as positions of one root layer, so a
pruner removes it with an ordinary group.

Nothing here mutates the model; everything is recomputed from the graph's
current state, so it stays valid after any prune::

    find_attention_heads(DG)            one AttentionHeads per attention block
        AttentionHeads.units            current units, each a set of root positions
        AttentionHeads.group(units)     the Group removing those units (a plan)
        AttentionHeads.scoring_group()  every unit in one Group, for importance criteria
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from ..defaults import DEFAULT_ROOT_TYPES
from ..dims.indexmap import Identity
from ..dims.propagate import Propagation, propagate
from ..dims.slots import FactorRule, HeadAxis, PairRule
from ..errors import StaleGroupError
from ..functional.base import matches_layer_types
from ..functional.pruned_mha import kept_heads
from .group import Group
from .node import Dependency, GroupItem, Node

if TYPE_CHECKING:
    from .graph import DependencyGraph

__all__ = ["AttentionHeads", "ModuleHeads", "ModuleHeadsGroup", "find_attention_heads", "find_module_heads"]


@dataclass
class AttentionHeads:
    """The removable heads of one attention block.

    Attributes:
        axis: the head axes of the attention op the block was found at.
        root: the layer whose output positions express a unit (q or the fused qkv).
        fn: its ``prune_out_channels``.
        units: per unit (a key/value head with its query heads), its *original*
            root positions still alive, in root order.
        query_heads, kv_heads: head counts now.
        modules: every layer the block's heads live in (q/k/v/o projections).
        slots: their endpoint slots (the groups of these slots carry head dims).
    """

    graph: DependencyGraph
    axis: HeadAxis
    root_slot: int
    root: Any
    fn: Callable
    units: list[torch.Tensor]
    query_heads: int
    kv_heads: int
    modules: list[nn.Module] = field(default_factory=list)
    slots: frozenset[int] = frozenset()  # endpoint slots the heads live in

    @property
    def key(self) -> int:
        """Stable across prunes: the key-head axis slot."""
        return self.axis.k

    @property
    def unit_width(self) -> int:
        """Root positions per unit (``round_to`` keeps ``units * unit_width`` a multiple of it)."""
        return int(self.units[0].numel()) if self.units else 1

    @property
    def name(self) -> str:
        """The qualified name of the root layer, used in plans, warnings and errors."""
        return self.graph.module2node[self.root].name

    def root_idxs(self, units: Iterable[int]) -> list[int]:
        """Current root positions of ``units`` (indices into :attr:`units`)."""
        return self._current([self.units[u] for u in units])

    def group(self, units: Sequence[int]) -> Group:
        """The group that removes ``units``; a plan, nothing changes until ``group.prune()``."""
        return self.graph.plan_group(self.root_slot, self._alive([self.units[u] for u in units]))

    def group_of(self, orig: Sequence[torch.Tensor]) -> Group | None:
        """The group removing the units with these original root positions, as the graph is now.

        Positions removed since (head dims pruned in between) are skipped; None if nothing is left.
        Planned from the root slot itself: a bare weight has one slot per dim.
        """
        pos = self._alive(orig)
        return self.graph.plan_group(self.root_slot, pos) if pos.numel() else None

    def _alive(self, orig: Sequence[torch.Tensor]) -> torch.Tensor:
        if not orig:
            return torch.zeros(0, dtype=torch.long)
        pos = torch.cat(list(orig)).unique()
        return pos[self.graph.is_alive(self.root_slot, pos)]

    def _current(self, orig: Sequence[torch.Tensor]) -> list[int]:
        return sorted(self.graph.to_current(self.root_slot, self._alive(orig)).tolist())

    def scoring_group(self) -> Group:
        """All units in one group (root = :attr:`root`), to score with an importance criterion.

        Built unit by unit and merged: one group over every head at once would
        also reach the head-dim axis (all of it is gone), which RoPE couples across layers.
        Never prune it: it removes every head.
        """
        merged: dict[tuple[int, str], GroupItem] = {}
        for u in range(len(self.units)):
            for it in self.group([u]).items:
                key = (id(it.dep.target), it.dep.side)
                have = merged.get(key)
                if have is None:
                    merged[key] = GroupItem(it.dep, list(it.idxs), list(it.root_idxs))
                else:
                    have.idxs.extend(it.idxs)
                    have.root_idxs.extend(it.root_idxs)
        return Group(graph=self.graph, items=list(merged.values()))


def find_attention_heads(
    graph: DependencyGraph,
    ignored_layers: Iterable[nn.Module] = (),
    root_module_types: tuple = DEFAULT_ROOT_TYPES,
    rejected: list[str] | None = None,
) -> list[AttentionHeads]:
    """Every attention block whose whole heads can be removed, in trace order.

    A head axis is kept when removing any one of its heads reaches no frozen
    dimension and expresses itself on an output layer of ``root_module_types``.
    Axes of the same block (``q @ k^T`` and ``probs @ v``) give the same units and
    are reported once. ``rejected`` collects why head axes were not kept.

    Args:
        graph: a built ``DependencyGraph``.
        ignored_layers: layers whose output width must stay (their heads are not offered).
        root_module_types: layer types a unit may be expressed on (q, or the fused qkv).
        rejected: if given, one line per attention op whose heads cannot be removed, with the reason.

    Returns:
        One :class:`AttentionHeads` per block, as the graph is now (after earlier prunes).

    Example:
        >>> DG = tp.DependencyGraph().build_dependency(vit, torch.randn(1, 3, 224, 224))
        >>> block = find_attention_heads(DG)[0]        # blocks.0.attn.qkv, 3 heads
        >>> block.group([1]).prune()                   # head 1 of q, k and v, and its proj columns
    """
    g = graph.slot_graph
    blocked: dict[int, str] = {}
    for m in ignored_layers:
        for sub in m.modules() if isinstance(m, nn.Module) else (m,):
            node = graph.module2node.get(sub)
            if node is not None and node.out_slot is not None:
                blocked[node.out_slot] = f"{node.name} is ignored"
    out: list[AttentionHeads] = []
    seen: set[tuple] = set()
    why: list[str] = []
    accepted: set[str] = set()
    for axis in g.head_axes:
        found = _block(graph, axis, blocked, tuple(root_module_types), why)
        if found is None:
            continue
        accepted.add(axis.where)
        sig = tuple(tuple(u.tolist()) for u in found.units) + (found.root_slot,)
        if sig not in seen:
            seen.add(sig)
            out.append(found)
    if rejected is not None:
        # An op whose heads were found has other batch dims too (TNT's inner attention runs on
        # (B * patches, heads, pixels, D)): those are batches, not heads that failed.
        rejected.extend(line for line in why if line.split(": ", 1)[0] not in accepted)
    return out


def _block(graph: DependencyGraph, axis: HeadAxis, blocked: dict[int, str],
           root_types: tuple, rejected: list[str] | None = None) -> AttentionHeads | None:
    g = graph.slot_graph

    def reject(reasons: Iterable[str]) -> None:
        reasons = set(reasons)
        if "model input" in reasons or all(r.endswith((" is ignored", " is in ignored_layers")) for r in reasons):
            return  # the batch dim of a matmul, or heads the user keeps on purpose
        if rejected is not None:
            rejected.append(f"{axis.where}: {'; '.join(sorted(reasons))}")

    frozen = [g.frozen[s] for s in (axis.k, axis.q) if s in g.frozen] + ([blocked[axis.k]] if axis.k in blocked else [])
    if frozen:
        reject(frozen)
        return None
    first_plans: dict[int, Propagation] = {}

    def is_batch(slot: int) -> bool:
        # The propagation of the axis' first head answers it, and is the first unit's plan when
        # the axis holds the heads: one propagation per KV head in all, not one more per block.
        alive = graph.alive_positions(slot)
        if slot in g.frozen or not alive.numel():
            return _is_batch(g, slot)
        plan = first_plans[slot] = graph.propagate(slot, alive[:1], blocked)
        return any(r == "model input" for r in plan.violations.values())

    start = _kv_axis(g, axis.k, is_batch)
    plans: list[Propagation] = []
    claimed: set[int] = set()
    for k, h in enumerate(graph.alive_positions(start).tolist()):
        if h in claimed:  # a repeated key head: already in a unit
            continue
        plan = first_plans[start] if k == 0 and start in first_plans else graph.propagate(
            start, torch.tensor([h]), blocked)
        if plan.violations:
            reject(plan.violations.values())
            return None
        if start in plan.state:
            claimed.update((plan.state[start] >= 0).nonzero().flatten().tolist())
        plans.append(plan)
    if not plans:
        return None
    root_slot = _root_slot(graph, plans[0], root_types)
    if root_slot is None:
        return None
    units = []
    for plan in plans:
        if root_slot not in plan.state:
            return None
        units.append((plan.state[root_slot] >= 0).nonzero().flatten())
    flat = torch.cat(units)
    if flat.unique().numel() != flat.numel() or any(u.numel() < 2 for u in units):
        return None  # units overlap, or one channel each (a batched matmul over channels, not heads)
    ep = g.endpoints[root_slot]
    modules, slots = [], set()
    for s in plans[0].state:
        e = g.endpoints.get(s)
        if e is None:
            continue
        slots.add(s)
        if isinstance(e.node.module, nn.Module) and e.node.module not in modules:
            modules.append(e.node.module)
    return AttentionHeads(graph, axis, root_slot, ep.node.module, ep.handler, units,
                          graph.current_width(axis.q), len(units), modules, frozenset(slots))


def _kv_axis(g: Any, slot: int, is_batch: Callable[[int], bool] | None = None) -> int:
    """The key/value head axis behind a repeated one.

    Eager GQA attention multiplies by ``repeat_kv(k)``: ``(B, Hk, R, S, D) -> (B, Hk*R, S, D)``.
    Its head axis is the product of the KV heads and the repeat; a unit starts from the
    outer factor, the KV head (one position of ``Hk*R`` alone would close along ``R``).
    """
    seen, frontier = {slot}, [slot]
    while frontier:
        s = frontier.pop()
        for rule in g.rules[s]:
            if isinstance(rule, FactorRule) and rule.merged == s and len(rule.parts) == 2:
                # (KV heads, repeat) under GQA; (windows, heads) when heads share the batch dim
                # (SAM's ``B * num_heads``): the frozen outer factor is a batch, not the heads.
                outer, inner = rule.parts
                batch = is_batch or (lambda s: _is_batch(g, s))
                return inner if batch(outer) and not batch(inner) else outer
            if isinstance(rule, PairRule) and isinstance(rule.fwd, Identity):
                other = rule.b if rule.a == s else rule.a
                if other not in seen:
                    seen.add(other)
                    frontier.append(other)
    return slot


def _is_batch(g: Any, slot: int) -> bool:
    """Frozen, or removing one of its positions reaches a model input: a batch axis, not heads."""
    if slot in g.frozen:
        return True
    plan = propagate(g, slot, torch.zeros(1, dtype=torch.long), {})
    return any(r == "model input" for r in plan.violations.values())


def _root_slot(graph: DependencyGraph, plan: Propagation, root_types: tuple) -> int | None:
    """The earliest-created output endpoint of a root-type layer the unit reaches (q_proj, qkv);
    else of a bare weight (one used by ``F.linear``/``addmm`` outside any layer with a handler)."""
    g = graph.slot_graph
    layers, params = [], []
    for s in plan.state:
        ep = g.endpoints.get(s)
        if ep is None or not ep.is_out:
            continue
        if matches_layer_types(ep.node.module, root_types):  # GPT-2's Conv1D acts as nn.Linear
            layers.append(s)
        elif ep.node.is_parameter:
            params.append(s)
    return min(layers or params, default=None)


# -- heads inside one layer (nn.MultiheadAttention) ----------------------------------------------


@dataclass
class ModuleHeads:
    """The heads of a layer that computes attention inside itself (``nn.MultiheadAttention``).

    Its inner dims are not graph channels: removing a head changes nothing outside
    the layer (``embed_dim`` stays), so the group has one member. ``units[u]`` holds
    the original index of head ``u``.
    """

    graph: DependencyGraph
    node: Node
    units: list[torch.Tensor]

    @property
    def key(self) -> object:
        """What ``num_heads=`` and head ratios are keyed by: the attention module itself."""
        return self.node.module

    @property
    def name(self) -> str:
        """The layer's qualified name, used in plans, warnings and errors."""
        return self.node.name

    @property
    def root(self) -> nn.Module:
        """The module whose heads are pruned; scores and soft-pruned records are keyed by it."""
        return self.node.module

    @property
    def modules(self) -> list[nn.Module]:
        """The layers whose head counts change together: only this one, since its heads are internal."""
        return [self.node.module]

    def root_idxs(self, units: Iterable[int]) -> list[int]:
        """For this layer the group's indices are the heads themselves."""
        return sorted(int(u) for u in units)

    @property
    def slots(self) -> frozenset[int]:
        """No graph slots: the heads are inside the layer, so no channel group overlaps them."""
        return frozenset()

    @property
    def query_heads(self) -> int:
        """Heads left now. ``nn.MultiheadAttention`` has no grouped key/value heads, so this is
        also ``kv_heads``.
        """
        return len(self.units)

    kv_heads = query_heads

    @property
    def unit_width(self) -> int:
        """Channels per head (``head_dim``), the unit head-level ratios are counted in."""
        return int(self.node.module.head_dim)

    def group_of(self, orig: Sequence[torch.Tensor]) -> Group | None:
        """The group removing the heads whose original indices are in ``orig``, in current positions.

        None when all of them are gone already: a plan made before an earlier step stays valid.
        """
        kept = kept_heads(self.node.module).tolist()
        now = sorted(kept.index(int(h)) for t in orig for h in t.tolist() if int(h) in kept)
        return ModuleHeadsGroup(self.graph, self.node, now) if now else None

    def group(self, units: Sequence[int]) -> Group:
        """The group that removes heads ``units`` (current positions) of this layer."""
        return ModuleHeadsGroup(self.graph, self.node, sorted(int(u) for u in units))

    def unit_weights(self, u: int) -> list[torch.Tensor]:
        """The q/k/v rows and output columns of unit ``u`` (for magnitude scores)."""
        m = self.node.module
        d, inner = m.head_dim, m.out_proj.in_features
        rows = torch.arange(u * d, (u + 1) * d)
        if m.in_proj_weight is not None:
            qkv = [m.in_proj_weight[rows + j * inner] for j in range(3)]
        else:
            qkv = [w[rows] for w in (m.q_proj_weight, m.k_proj_weight, m.v_proj_weight)]
        return [*qkv, m.out_proj.weight[:, rows].T]


class ModuleHeadsGroup(Group):
    """Whole heads of one ``nn.MultiheadAttention``, pruned through the graph like any group.

    ``prune()`` runs :meth:`DependencyGraph.apply_group`: the same transaction, before/after
    hooks (bias compensation, config sync), history and forward check as a channel group. The
    heads it was planned on are remembered by their original index: once another prune removed
    heads of the layer, pruning this group raises :class:`~depgraph.errors.StaleGroupError`.
    """

    def __init__(self, graph: DependencyGraph, node: Node, heads: list[int]) -> None:
        fn = node.handler.prune_heads
        item = GroupItem(Dependency(fn, fn, node, node, side="heads"), list(heads), list(heads))
        super().__init__(graph=graph, items=[item], version=graph.version)
        self._node = node
        self._kept = kept_heads(node.module).tolist()  # original head ids present when planned

    def _check_fresh(self) -> None:
        if kept_heads(self._node.module).tolist() != self._kept:
            raise StaleGroupError(
                f"this head group of {self._node.name} was planned when it had heads {self._kept}, but "
                f"another prune removed heads since (now {kept_heads(self._node.module).tolist()}); plan "
                "it again on the model as it is now"
            )

    def prune(self, idxs=None, record_history: bool = True) -> None:
        if idxs is not None:
            ModuleHeadsGroup(self.graph, self._node, sorted(int(i) for i in idxs)).prune(record_history=record_history)
            return
        self._check_fresh()
        self.graph.apply_group(self, record_history=record_history)

    exec = prune

    def replan(self) -> ModuleHeadsGroup | None:
        kept_now = kept_heads(self._node.module).tolist()
        orig = [self._kept[h] for h in self.items[0].idxs]
        now = sorted(kept_now.index(h) for h in orig if h in kept_now)
        return ModuleHeadsGroup(self.graph, self._node, now) if now else None

    def zero(self) -> None:
        """Soft pruning: zero the heads' q/k/v rows and output columns, shapes unchanged."""
        item = self.items[0]
        module = item.dep.target.module
        d, inner = module.head_dim, module.out_proj.in_features
        gone = {h * d + j for h in item.idxs for j in range(d)}
        item.dep.target.handler.zero_removed(module, {"inner": [i for i in range(inner) if i not in gone]})


def find_module_heads(graph: DependencyGraph, ignored_layers: Iterable[nn.Module] = ()) -> list[ModuleHeads]:
    """Every traced ``nn.MultiheadAttention`` with at least two heads, outside ``ignored_layers``."""
    ignored = {id(m) for layer in ignored_layers if isinstance(layer, nn.Module) for m in layer.modules()}
    out = []
    for module, node in graph.module2node.items():
        if isinstance(module, nn.MultiheadAttention) and id(module) not in ignored and module.num_heads > 1:
            out.append(ModuleHeads(graph, node, [t.view(1) for t in kept_heads(module)]))
    return out
