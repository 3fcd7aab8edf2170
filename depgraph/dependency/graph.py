"""``DependencyGraph``: trace a model once, then answer "what else must go if these channels go?".

All coupling is computed in the *original* index space of the traced model.
Each prune marks positions dead instead of rebuilding the graph, so the graph
stays valid across any number of prunes and every member's indices are
translated to its current width on the way out. Each committed prune bumps
``version``; a group planned before a commit that changed one of its slots is
stale and refused (see :class:`~depgraph.errors.StaleGroupError`).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
import torch.nn as nn

from .._caller import user_stacklevel
from .._types import ExampleInputs, Indices
from ..defaults import DEFAULT_ROOT_TYPES
from ..dims.propagate import Propagation, propagate
from ..errors import (
    DepgraphError,
    HandlerMismatchError,
    InvalidIndicesError,
    OverPruningError,
    PruneFailedError,
    StaleGroupError,
    UnknownModuleError,
    UnsupportedOpError,
)
from ..functional.base import BasePruningFunc, find_handler, matches_layer_types, registered_handlers
from ..trace.gc_pause import gc_paused
from ..trace.kept import CacheDropper
from ..trace.recorder import call_model, record
from .build import GraphBuilder, handler_width
from .group import Group
from .heads import ModuleHeadsGroup
from .hooks import PruneHooks, RemovableHandle
from .node import Dependency, GroupItem, Node, fn_name, index_list, pruning_side
from .records import update_records
from .transaction import Transaction, add_note_once

__all__ = ["DependencyGraph"]


class DependencyGraph:
    """The pruning dependency graph of one model.

    Call tree::

        build_dependency(model, example_inputs)      trace + slot graph
        get_pruning_group(module, fn, idxs)          plan (pure), stamped with DG.version
            group.prune()  -> apply_group(group)     one Transaction: refuse stale plans, validate all,
                                                     snapshot, before-hooks, handlers, after-hooks,
                                                     forward check, commit; restore on any BaseException
        get_all_groups(ignored_layers, root_types)   every prunable group once
        prune_groups(groups)                         a pruner step: all commit or none, at most one
                                                     forward check, bisection drops the groups that break it
        load_pruning_history(history)                one transaction

    Public queries (slots and original positions): ``slot_of``, ``coupled``, ``alive_positions``,
    ``current_width``, ``original_width``, ``to_current``, ``to_original``, ``plan_group``,
    ``propagate``, ``is_stale``, ``param_nodes``; hooks: ``register_prune_hook``
    (see :mod:`depgraph.dependency.hooks`).

    Example:
        >>> DG = DependencyGraph().build_dependency(model, torch.randn(1, 3, 224, 224))
        >>> group = DG.get_pruning_group(model.conv1, tp.prune_conv_out_channels, idxs=[2, 6, 9])
        >>> if DG.check_pruning_group(group):
        ...     group.prune()
    """

    def __init__(self) -> None:
        self.model: nn.Module | None = None
        self.module2node: dict[Any, Node] = {}
        self._custom: dict[Any, BasePruningFunc] = {}
        #: modules (sub-modules included) whose output width never changes, on every path
        self.ignored_layers: list[Any] = []
        self._history: list[list] = []
        self._dead: dict[int, torch.Tensor] = {}
        self._graph = None
        self._trace = None
        self._names: dict[str, Any] = {}
        self._call: tuple | None = None
        self._hooks = PruneHooks()
        self._version = 0  # commits so far; a group remembers the version it was planned on
        self._changed_at: dict[int, int] = {}  # slot -> version of the last commit that removed positions of it
        self._atomic_depth = 0  # > 0 inside a step / replay: one forward check at its end, not per group
        # True inside prune_groups: its whole-model snapshot restores whatever a failing group touched
        # and nothing catches a failure before it does, so a group snapshots no modules of its own
        self._covered = False
        # one-channel closures (see closed_positions), valid for one dead map and frozen count
        self._closures: tuple[dict | None, int, dict[tuple[int, int], torch.Tensor]] = (None, 0, {})

    # -- building ------------------------------------------------------------------
    def register_customized_layer(
        self, layer_type_or_instance: type | nn.Module, layer_pruner: BasePruningFunc
    ) -> None:
        """Use ``layer_pruner`` for a layer class or one module instance; call before building.

        The layer becomes one node (a leaf): the ops inside its forward are not
        traced, so the handler alone decides how its channels are removed.

        Args:
            layer_type_or_instance: a module class (subclasses included) or one module.
            layer_pruner: a :class:`~depgraph.functional.BasePruningFunc` (instance).
        """
        self._custom[layer_type_or_instance] = layer_pruner

    def build_dependency(
        self,
        model: nn.Module,
        example_inputs: ExampleInputs,
        forward_fn: Callable | None = None,
        output_transform: Callable | None = None,
        unwrapped_parameters: Any = None,
        customized_pruners: dict | None = None,
        ignored_layers: Iterable[nn.Module] | None = None,
        ignored_params: Iterable[torch.Tensor] | None = None,
        verbose: bool = True,
        *,
        frozen_layers: Iterable[nn.Module] | None = None,
        check_forward: bool = True,
    ) -> DependencyGraph:
        """Trace ``model`` on ``example_inputs`` and build its dependency graph.

        Args:
            model: the model; it is run once and not modified.
            example_inputs: a tensor, a tuple/list of positional inputs, or a dict of keyword inputs.
            forward_fn: ``forward_fn(model, example_inputs)`` replaces the default call.
            output_transform: maps the model output to the tensors that count as outputs (their
                dims never change). Default: the whole output, except for transformers models,
                whose caches and per-layer ``hidden_states``/``attentions`` are left out
                (``logits`` first; see :mod:`depgraph.trace.outputs`).
            unwrapped_parameters: accepted for compatibility; bare parameters are found by the trace.
            customized_pruners: ``{layer type or module: handler}`` for custom layers.
            ignored_layers: layers (with all their sub-layers) whose *output* width never changes,
                on every path: ``get_all_groups`` never offers a group that changes it, and
                ``get_pruning_group`` plans reaching it are refused (``check_pruning_group`` is
                False, ``group.prune()`` raises). Their input width still follows the layer
                feeding them.
            ignored_params: parameters/buffers that must keep their shape.
            verbose: warn about ops without a dimension rule.
            frozen_layers: **(new)** layers whose input *and* output widths never change.
            check_forward: **(new)** after each prune, run the model once on ``example_inputs``
                (eval mode, no grad); if it fails - typically a size written into the code, like
                ``x.view(-1, 400)`` - restore the model, refuse the group and never offer it again.

        Raises:
            TraceError: the model failed on the example inputs.
        """
        del unwrapped_parameters  # found automatically
        self.model = model
        if customized_pruners:
            self._custom.update(customized_pruners)
        custom_types = tuple(k for k in self._custom if isinstance(k, type))
        with gc_paused():  # the trace and the slot graph: many small objects, none of them cyclic garbage
            trace = record(model, example_inputs, self._is_leaf, forward_fn, output_transform)
            self._call = (example_inputs, forward_fn) if check_forward else None
            builder = GraphBuilder(trace, self._handler_of, custom_types, verbose)
            self._graph = builder.build()
            self._trace = trace
            # Output dims frozen only for being outputs: an explicit get_pruning_group may prune them.
            self._outputs = {slot: (i, d) for i, v in enumerate(trace.outputs) for d in range(v.ndim)
                             if (slot := builder.value_slots.get((v.id, d))) is not None
                             and self._graph.frozen.get(slot) == "model output"}
            if any(k.is_cache for k in trace.kept):
                self.register_prune_hook(CacheDropper(trace.kept), when="after")
            self.module2node = {}
            for m in model.modules():  # model order, for deterministic get_all_groups
                if m in builder.module2node:
                    self.module2node[m] = builder.module2node[m]
            self.module2node.update({k: v for k, v in builder.module2node.items() if k not in self.module2node})
            self._param_nodes = builder.param_nodes
            self._dead = {}
            self._version, self._changed_at = 0, {}
            self._names = {n: m for n, m in model.named_modules()}
            self._names.update({n: p for n, p in model.named_parameters()})
            self._names.update({n: b for n, b in model.named_buffers()})
            self.ignored_layers = _expand(ignored_layers)
            for m in self.ignored_layers:
                node = self.module2node.get(m)
                if node is not None and node.out_slot is not None:
                    self._graph.freeze(node.out_slot, f"{node.name} is in ignored_layers")
            for m in _expand(frozen_layers):
                node = self.module2node.get(m)
                if node is not None:
                    for s in (node.out_slot, node.in_slot):
                        if s is not None:
                            self._graph.freeze(s, f"{node.name} is in frozen_layers")
            for p in ignored_params or ():
                for node in self._param_nodes.get(p, []):
                    self._graph.freeze(node.out_slot, f"{node.name} is in ignored_params")
            if type(model).__module__.startswith("transformers"):  # also trust_remote_code models
                from ..integrations.transformers import attach  # lazy: keeps transformers optional
                attach(self)
            # imports no timm; a no-op without timm modules
            from ..integrations.timm import attach as attach_timm

            attach_timm(self)
        return self

    def _handler_of(self, module: nn.Module) -> BasePruningFunc | None:
        return find_handler(module, self._custom)

    def _is_leaf(self, module: nn.Module) -> bool:
        """A module is one node when it has a handler and its forward is the handled class's own."""
        if module in self._custom or isinstance(module, tuple(k for k in self._custom if isinstance(k, type))):
            return True
        registry = registered_handlers()
        for cls in type(module).__mro__:
            if cls in registry:
                return type(module).forward is cls.forward
        return False

    @property
    def trace(self):
        """The recorded forward pass (:class:`depgraph.trace.Trace`): ops, values, module calls."""
        return self._trace

    # -- queries ---------------------------------------------------------------------
    def _node(self, module: Any) -> Node:
        if self._graph is None:
            raise DepgraphError("call build_dependency(model, example_inputs) first")
        node = self.module2node.get(module)
        if node is None:
            what = type(module).__name__
            raise UnknownModuleError(
                f"{what} is not in the dependency graph: it has no pruning handler or was not "
                "called during the traced forward pass (register a handler with "
                "customized_pruners= or check example_inputs)"
            )
        return node

    def get_pruner_of_module(self, module: nn.Module) -> BasePruningFunc | None:
        """The handler that prunes ``module`` (its node's, else the registry's for its type), or None.

        Use its bound ``prune_out_channels`` / ``prune_in_channels`` as the pruning function
        of :meth:`get_pruning_group` for layers with a custom handler.
        """
        node = self.module2node.get(module)
        return node.handler if node is not None else self._handler_of(module)

    def get_out_channels(self, module_or_node: Any) -> int | None:
        """Output channels of a module (or node) as its handler counts them, None if no handler does.

        The original's name; a bare parameter node reports the size of its pruned dim.
        """
        node = module_or_node if isinstance(module_or_node, Node) else self.module2node.get(module_or_node)
        if node is None:
            h = self._handler_of(module_or_node)
            return h.get_out_channels(module_or_node) if h else None
        if node.is_parameter:
            return int(node.module.shape[node.pruning_dim])
        return node.handler.get_out_channels(node.module)

    def get_in_channels(self, module_or_node: Any) -> int | None:
        """Input channels of a module (or node) as its handler counts them, None if no handler does.

        The original's name; a bare parameter node reports the size of its pruned dim.
        """
        node = module_or_node if isinstance(module_or_node, Node) else self.module2node.get(module_or_node)
        if node is None:
            h = self._handler_of(module_or_node)
            return h.get_in_channels(module_or_node) if h else None
        if node.is_parameter:
            return int(node.module.shape[node.pruning_dim])
        return node.handler.get_in_channels(node.module)

    @staticmethod
    def is_out_channel_pruning_fn(fn: Callable) -> bool:
        """Whether ``fn`` is a handler's ``prune_out_channels`` (by identity, never by name)."""
        return pruning_side(fn) == "out"

    @staticmethod
    def is_in_channel_pruning_fn(fn: Callable) -> bool:
        """Whether ``fn`` is a handler's ``prune_in_channels`` (by identity, never by name).

        A handler with one set of channels (``prune_in_channels = prune_out_channels``,
        a BatchNorm-like layer) counts as an out-channel function.
        """
        fn_side = pruning_side(fn)
        return fn_side == "in" or (fn_side == "out" and fn == getattr(fn.__self__, "prune_in_channels", None))

    # -- public graph API: slots, alive positions, widths, planning ---------------------------------
    # A *slot* is one prunable axis (an int): a layer's output or input channels (``node.out_slot``,
    # ``node.in_slot``), a dim of a traced value or of a bare parameter. Positions are *original*
    # indices of the traced model; a prune marks them dead, so they never shift.

    @property
    def version(self) -> int:
        """How many prunes this graph has committed; a :class:`Group` remembers the one it was planned on."""
        return self._version

    @property
    def slot_graph(self):
        """The :class:`~depgraph.dims.slots.SlotGraph`: sizes, rules, endpoints, frozen slots (read-only use)."""
        self._require_built()
        return self._graph

    @property
    def dead_positions(self) -> dict[int, torch.Tensor]:
        """``{slot: bool mask of original positions removed}``, for :func:`~depgraph.dims.propagate.propagate`
        (a copy: changing it changes nothing)."""
        return dict(self._dead)

    def param_nodes(self, tensor: torch.Tensor) -> list[Node]:
        """The nodes of a bare parameter or buffer, one per prunable dim (``node.pruning_dim``)."""
        self._require_built()
        return list(self._param_nodes.get(tensor, []))

    def slot_of(self, module: Any, pruning_fn: Callable) -> int:
        """The slot ``pruning_fn`` removes positions from on ``module``.

        Raises:
            UnknownModuleError: ``module`` is not in the graph.
            HandlerMismatchError: ``pruning_fn`` is not a pruning function, or not one for this module.
            UnsupportedOpError: the module has no prunable channels.
        """
        return self._slot_for(self._node(module), pruning_fn)

    def alive_positions(self, slot: int) -> torch.Tensor:
        """Original positions of ``slot`` still present, ascending (int64)."""
        self._require_built()
        d = self._dead.get(slot)
        n = self._graph.sizes[slot]
        return torch.arange(n) if d is None else (~d).nonzero().flatten()

    def is_alive(self, slot: int, positions: torch.Tensor) -> torch.Tensor:
        """A bool mask: which of ``positions`` (original) of ``slot`` are still present."""
        d = self._dead.get(slot)
        positions = torch.as_tensor(positions, dtype=torch.long)
        return torch.ones(positions.shape, dtype=torch.bool) if d is None else ~d[positions]

    def current_width(self, slot: int) -> int:
        """How many positions ``slot`` has now (its original size minus the removed ones)."""
        self._require_built()
        d = self._dead.get(slot)
        return self._graph.sizes[slot] - (int(d.sum()) if d is not None else 0)

    def original_width(self, slot: int) -> int:
        """The size ``slot`` had in the traced model."""
        self._require_built()
        return self._graph.sizes[slot]

    def to_current(self, slot: int, positions: torch.Tensor) -> torch.Tensor:
        """Current indices of original ``positions`` of ``slot`` (which must all be alive).

        Raises:
            InvalidIndicesError: some positions were already removed (they have no current index).
        """
        positions = torch.as_tensor(positions, dtype=torch.long)
        d = self._dead.get(slot)
        if d is None:
            return positions
        if positions.numel() and bool(d[positions].any()):
            gone = positions[d[positions]].tolist()[:8]
            raise InvalidIndicesError(f"positions {gone} of {self._graph.labels[slot]} were already pruned")
        return positions - torch.cumsum(d.long(), 0)[positions]

    def to_original(self, slot: int, current: torch.Tensor) -> torch.Tensor:
        """Original positions of ``current`` indices of ``slot`` (the inverse of :meth:`to_current`)."""
        return self.alive_positions(slot)[torch.as_tensor(current, dtype=torch.long)]

    def propagate(self, slot: int, positions: torch.Tensor, blocked: dict[int, str] | None = None,
                  **options: Any) -> Propagation:
        """Everything coupled to removing original ``positions`` of ``slot`` from the model as it is now.

        ``blocked``: more slots that must not change, for this query only (``{slot: reason}``);
        ``options`` go to :func:`~depgraph.dims.propagate.propagate` (``grouping``, ``until`` ...).
        """
        self._require_built()
        return propagate(self._graph, slot, torch.as_tensor(positions, dtype=torch.long), self._dead,
                         blocked, **options)

    def coupled(self, module: Any, pruning_fn: Callable) -> list[tuple[Node, str]]:
        """Every ``(node, side)`` whose channels move with one channel of ``module`` under ``pruning_fn``.

        Examples:
            >>> [(n.name, side) for n, side in DG.coupled(model.conv1, tp.prune_conv_out_channels)]
            [('conv1', 'out'), ('bn1', 'out'), ('layer1.0.conv1', 'in'), ...]
        """
        slot = self.slot_of(module, pruning_fn)
        plan = self.propagate(slot, self.alive_positions(slot)[:1], stop_at_frozen=False)
        eps = self._graph.endpoints
        return [(eps[s].node, "out" if eps[s].is_out else "in") for s in plan.order if s in eps]

    def closed_positions(self, slot: int, position: int) -> torch.Tensor:
        """Original positions of ``slot`` that go with its original ``position`` (itself included),
        ascending: the root of the group :meth:`get_pruning_group` plans for that one channel.

        Grouped convolutions, channel shuffles and attention head dims close a single channel
        over several positions; planners ask this for many channels of one root, so answers
        are kept until the next prune (or freeze) changes the graph.
        """
        self._require_built()
        memo = self._closure_memo()
        key = (slot, int(position))
        got = memo.get(key)
        if got is None:
            plan = self.propagate(slot, torch.tensor([key[1]]), unfrozen=set(self._outputs))
            got = plan.removed(slot)[0]
            if not plan.violations:
                memo[key] = got
        return got

    def _closure_memo(self) -> dict[tuple[int, int], torch.Tensor]:
        dead, n_frozen, memo = self._closures
        if dead is not self._dead or n_frozen != len(self._graph.frozen):
            memo = {}
            self._closures = (self._dead, len(self._graph.frozen), memo)
        return memo

    def plan_group(self, slot: int, positions: torch.Tensor, blocked: dict[int, str] | None = None,
                   unfrozen: set[int] | None = None) -> Group:
        """The group removing original ``positions`` of ``slot``, as the graph is now; changes nothing.

        Positions already removed are left out (planning in original indices is safe after any prune).
        ``unfrozen``: frozen slots this group may change after all (model outputs, for an explicit request).
        """
        positions = torch.as_tensor(positions, dtype=torch.long).unique()
        if positions.numel():
            positions = positions[self.is_alive(slot, positions)]
        plan = self.propagate(slot, positions, blocked, unfrozen=unfrozen)
        return Group(graph=self, items=self._items(plan), plan=plan, version=self._version, root=(slot, positions))

    def is_stale(self, group: Group) -> bool:
        """Whether a prune committed after ``group`` was planned changed a slot the group reaches."""
        v = group.version
        if v is None or v == self._version:
            return False
        return any(self._changed_at.get(s, -1) > v for s in group.propagation.state)

    def _require_built(self) -> None:
        if self._graph is None:
            raise DepgraphError("call build_dependency(model, example_inputs) first")

    # -- hooks ----------------------------------------------------------------------------------
    def register_prune_hook(self, hook: Callable[..., Any], *, when: str = "after") -> RemovableHandle:
        """Call ``hook`` on every prune of this graph; ``handle.remove()`` detaches it.

        ``when="before"``: ``hook(graph, items)`` inside the transaction, before any handler runs.
        ``when="after"``: ``hook(graph, plan)`` after the handlers, before the forward check; called
        again as ``hook(graph, None)`` when that prune is rolled back. A hook that raises fails the
        prune (the model is restored). See :mod:`depgraph.dependency.hooks`.

        Returns:
            A :class:`torch.utils.hooks.RemovableHandle`.

        Raises:
            DepgraphError: ``when`` is not "before" or "after", or ``hook`` is not callable.

        Example:
            >>> handle = DG.register_prune_hook(lambda graph, plan: print("pruned"), when="after")
            >>> handle.remove()
        """
        return self._hooks.register(hook, when)

    def prune_hooks(self, when: str) -> tuple[Callable[..., Any], ...]:
        """The hooks registered for ``when`` ("before" or "after"), in call order."""
        return self._hooks.of(when)

    def _slot_for(self, node: Node, fn: Callable) -> int:
        if pruning_side(fn) is None:
            what = getattr(fn, "__qualname__", None) or type(fn).__name__
            raise HandlerMismatchError(
                f"{what} is not a pruning function: pass a handler's prune_out_channels/prune_in_channels "
                f"for {node.name} ({type(node.module).__name__}), e.g. tp.prune_conv_out_channels or "
                "DG.get_pruner_of_module(module).prune_out_channels"
            )
        owner = fn.__self__
        if not node.is_parameter:
            if not owner.accepts(node.module) and owner.stand_in(node.module) is None:
                raise HandlerMismatchError(
                    f"{fn.__name__} of {type(owner).__name__} does not fit {node.name} "
                    f"({type(node.module).__name__}); use the pruning function for {type(node.module).__name__}"
                )
        if pruning_side(fn) == "in" and node.in_slot is not None:
            return node.in_slot
        if node.out_slot is not None:
            return node.out_slot
        if node.in_slot is not None:
            return node.in_slot
        raise UnsupportedOpError(f"{node.name} has no prunable channels in this graph")

    def get_pruning_group(self, module: Any, pruning_fn: Callable, idxs: Indices) -> Group:
        """Everything that must be pruned with ``pruning_fn(module, idxs)``; changes nothing.

        Raises:
            UnknownModuleError: ``module`` is not in the graph.
            HandlerMismatchError: ``pruning_fn`` does not fit the module.
            InvalidIndicesError: an index is negative or out of range.
        """
        node = self._node(module)
        slot = self._slot_for(node, pruning_fn)
        alive = self.alive_positions(slot)
        raw = _index_tensor(idxs, node.name)
        if raw.numel() and (raw.dtype.is_floating_point or raw.dtype.is_complex or raw.dtype == torch.bool):
            raise InvalidIndicesError(f"pruning indices for {node.name} must be integers, got dtype {raw.dtype}")
        cur = raw.to(torch.long).flatten()
        if cur.numel():
            cur = torch.unique(cur)
            if int(cur[0]) < 0 or int(cur[-1]) >= alive.numel():
                bad = int(cur[0]) if int(cur[0]) < 0 else int(cur[-1])
                raise InvalidIndicesError(
                    f"index {bad} is out of range for the {alive.numel()} "
                    f"{'output' if slot == node.out_slot else 'input'} channels of {node.name}"
                )
        # An explicit request may change the model's outputs, as in Torch-Pruning (models that
        # return intermediate activations); pruners and get_all_groups keep them (apply_group warns).
        return self.plan_group(slot, alive[cur], unfrozen=set(self._outputs))

    def _items(self, plan: Propagation) -> list[GroupItem]:
        eps = self._graph.endpoints
        root_slot = plan.order[0] if plan.order else None
        items = []
        root_shift = self._shift(root_slot) if root_slot is not None else None
        for slot in plan.order:
            ep = eps.get(slot)
            if ep is None:
                continue
            pos, roots = plan.removed(slot)
            # to_current without its check: a propagation never removes a position already pruned
            shift = root_shift if slot == root_slot else self._shift(slot)
            if shift is not None:
                pos = pos - shift[pos]
            if root_shift is not None:
                roots = roots - root_shift[roots]
            src = eps.get(plan.source.get(slot, slot), ep)
            dep = Dependency(src.handler, ep.handler, src.node, ep.node, side="out" if ep.is_out else "in")
            idxs = index_list(pos, ascending=True)
            # most members follow the root position for position: one list serves as both
            same = pos.shape == roots.shape and bool(torch.equal(pos, roots))
            items.append(GroupItem(dep, idxs, None if same else index_list(roots),
                                   tensors=(pos, pos if same else roots)))
        if items and root_slot not in eps:
            raise DepgraphError("the root of a group must be a prunable layer")
        return items

    def _shift(self, slot: int) -> torch.Tensor | None:
        """Pruned positions at or before each original position of ``slot`` (None: none pruned):
        ``original - shift[original]`` is the current index of a live position."""
        d = self._dead.get(slot)
        return None if d is None else torch.cumsum(d.long(), 0)

    def get_all_groups(
        self,
        ignored_layers: Iterable[nn.Module] = (),
        root_module_types: tuple = DEFAULT_ROOT_TYPES,
    ) -> Iterator[Group]:
        """Yield every prunable group once, rooted at the first layer of ``root_module_types`` in it.

        The default is the pruners' (:data:`depgraph.defaults.DEFAULT_ROOT_TYPES`, LSTMs
        included), so this lists exactly the groups a pruner with default options ranks.

        A layer whose handler ``acts_as`` one of ``root_module_types`` counts as one: naming
        ``nn.Linear`` roots groups at GPT-2's ``Conv1D`` too.
        """
        self._require_built()
        blocked: dict[int, str] = {}
        for m in _expand(ignored_layers):
            node = self.module2node.get(m)
            if node is not None and node.out_slot is not None:
                blocked[node.out_slot] = f"{node.name} is ignored"
        visited: set[int] = set()
        roots = tuple(root_module_types)
        for module, node in list(self.module2node.items()):
            if not isinstance(module, nn.Module) or not matches_layer_types(module, roots, self._custom):
                continue
            slot = node.out_slot
            if slot is None or slot in visited or slot in blocked or slot in self._graph.frozen:
                continue
            alive = self.alive_positions(slot)
            plan = propagate(self._graph, slot, alive, self._dead, blocked, grouping=True)
            visited.update(s for s in plan.state if s in self._graph.endpoints)
            if plan.violations or alive.numel() < 2 or not self._single_channel_prunable(slot, alive, blocked):
                continue
            yield Group(graph=self, items=self._items(plan), plan=plan, version=self._version, root=(slot, alive))

    def _single_channel_prunable(self, slot: int, alive: torch.Tensor, blocked: dict[int, str]) -> bool:
        """Whether removing one root channel leaves every member non-empty.

        Coupling can be so tight that any removal cascades to all channels (the
        pass-through halves of a ShuffleNetV2 stage); such groups are not offered.
        """
        plan = propagate(self._graph, slot, alive[:1], self._dead, blocked)
        if plan.violations:
            return False
        # Reached no frozen slot under the stricter freeze (blocked, outputs): the same plan as
        # closed_positions would make, which planners ask next.
        self._closure_memo()[(slot, int(alive[0]))] = plan.removed(slot)[0]
        for s in plan.state:
            d = self._dead.get(s)
            n_alive = self._graph.sizes[s] - (int(d.sum()) if d is not None else 0)
            if plan.counts.get(s, 0) >= n_alive:
                return False
        return True

    def check_pruning_group(self, group: Group) -> bool:
        """False when the group reaches a frozen dim or would leave some layer with no channel."""
        if group.blocked_by:
            return False
        for dep, idxs in group:
            n = self._width(dep)
            if n is not None and len(set(idxs)) >= n:
                return False
        return True

    def _width(self, dep: Dependency) -> int | None:
        node = dep.target
        if node.is_parameter:
            return int(node.module.shape[node.pruning_dim])
        if dep.side == "heads":
            return int(node.module.num_heads)
        slot = node.out_slot if dep.is_out() else node.in_slot
        alive = None if slot is None else self.current_width(slot)
        return handler_width(node.handler, node.module, dep.is_out(), alive, node.name)

    # -- applying -----------------------------------------------------------------------
    def apply_group(self, group: Group, record_history: bool = True) -> None:
        """Prune every member of ``group`` as one :class:`~depgraph.dependency.transaction.Transaction`.

        validate (stale plan, frozen dims, emptied layers) -> snapshot the members -> before-hooks ->
        handlers -> size attributes -> after-hooks -> forward check (when the group reaches a run-time
        size: a reshape factor, a bound attribute, a custom layer, a size the forward compared in
        Python; inside a pruner step one check for the whole step instead) -> commit (dead positions,
        version, kept-channel records, history). Any ``BaseException`` restores the snapshot.

        Raises:
            StaleGroupError: a prune committed after the group was planned changed a layer it reaches.
            UnsupportedOpError: the group reaches a frozen dim, or pruning it breaks the forward pass.
            OverPruningError: a member would lose all its channels.
            DepgraphError: whatever a handler or hook raised (typed errors as themselves, others as
                :class:`~depgraph.errors.PruneFailedError`), after the restore.
        """
        plan: Propagation = group.propagation
        items = list(group.items)
        if not items:
            return
        root = items[0]
        where = f"the group rooted at {root.dep.target.name} ({len(root.idxs)} channels)"
        if self.is_stale(group):
            raise StaleGroupError(
                f"{where} was planned on version {group.version} of the model, but a later prune changed "
                f"layers it reaches (now version {self._version}); pruning it would remove other channels. "
                "Plan it again (DG.get_pruning_group / group.prune(idxs=...)) on the model as it is now"
            )
        if plan.violations:
            reasons = "; ".join(sorted(set(plan.violations.values())))
            raise UnsupportedOpError(f"cannot prune {where}: it reaches dimensions that must not change: {reasons}")
        problems = []
        widths = {id(it): self._width(it.dep) for it in items}  # before any change: the records need them too
        for it in items:
            n = widths[id(it)]
            if n is None:
                continue
            if len(set(it.idxs)) >= n:
                problems.append(f"{it.dep.target.name} would lose all {n} channels")
            elif it.idxs and (min(it.idxs) < 0 or max(it.idxs) >= n):
                problems.append(f"{it.dep.target.name}: index {max(it.idxs)} out of range for {n} channels")
        if problems:
            raise OverPruningError(f"cannot prune {where}: " + "; ".join(problems))
        self._warn_outputs(plan, where)
        ordered = [it for it in items if it.dep.side != "in"] + [it for it in items if it.dep.side == "in"]
        dead = dict(self._dead)
        changed = []
        for slot, st in plan.state.items():
            gone = st >= 0
            if plan.counts.get(slot, 0):  # the propagation counted what each slot loses: no reduction here
                changed.append(slot)
            dead[slot] = gone if slot not in dead else dead[slot] | gone
        attrs = self._bound_attributes(plan, dead)
        owners = [getattr(it.dep.target, "owner", None) for it in ordered if it.dep.target.is_parameter]
        targets = [it.dep.target.module for it in ordered] + [o for o in owners if o is not None]
        covered = self._covered and self._atomic_depth > 0
        with Transaction(f"pruning {where}", [] if covered else targets + [owner for owner, _, _ in attrs]) as tx:
            state = self._state()
            tx.on_rollback(lambda: self._restore_state(state))
            for hook in self._hooks.of("before"):
                hook(self, ordered)
            given = {id(it): it.handler_indices() for it in ordered}
            for it in ordered:
                if it.idxs:
                    try:
                        it.dep(given[id(it)])
                    except DepgraphError as e:  # typed: re-raised as itself, with where it happened
                        add_note_once(e, f"depgraph: raised by {fn_name(it.dep.handler)} on {it.dep.target.name}")
                        raise
                    except Exception as e:
                        raise PruneFailedError(
                            f"pruning {where} failed at {it.dep.target.name} ({type(e).__name__}: {e}); "
                            "the model was restored unchanged") from e
            for owner, attr, value in attrs:
                owner.__dict__[attr] = value
            for hook in self._hooks.of("after"):
                tx.on_rollback(lambda hook=hook: hook(self, None))
                hook(self, plan)
            if not self._atomic_depth and self._needs_forward_check(plan):
                failure = self._forward_failure()
                if failure is not None:
                    self._graph.freeze(plan.order[0], f"pruning it breaks the forward pass ({failure})")
                    raise UnsupportedOpError(
                        f"pruning {where} breaks the model's forward pass ({failure}); the model was "
                        "restored unchanged and this group will not be offered again. Usually a size is written "
                        "into the code (e.g. x.view(-1, 400) or a head count); keep these layers with "
                        "ignored_layers/frozen_layers, or register a dimension rule for the op"
                    )
            self._commit(dead, changed)
            update_records([it for it in ordered if it.dep.side != "heads"], widths, group.inexact_reasons, given)
            if record_history:
                kind = "heads" if root.dep.side == "heads" else root.dep.is_out()
                self.record_history(root.dep.target.name, kind, root.idxs)

    def _state(self) -> tuple:
        return self._dead, len(self._history), dict(self._changed_at), self._version

    def _restore_state(self, state: tuple) -> None:
        self._dead, n, self._changed_at, self._version = state[0], state[1], dict(state[2]), state[3]
        del self._history[n:]

    def _commit(self, dead: dict[int, torch.Tensor], changed: list[int]) -> None:
        self._version += 1
        self._dead = dead
        for slot in changed:
            self._changed_at[slot] = self._version

    # -- atomic sequences: a pruner step, a history replay ----------------------------------------
    def _model_targets(self) -> list[Any]:
        """What a whole-model transaction snapshots: the model, the configs its modules hold, hook state."""
        out: list[Any] = [self.model]
        seen: set[int] = set()
        for m in self.model.modules():
            cfg = vars(m).get("config")
            if cfg is not None and not isinstance(cfg, (nn.Module, torch.Tensor)) and hasattr(cfg, "__dict__") \
                    and id(cfg) not in seen:
                seen.add(id(cfg))
                out.append(cfg)
        out.extend(h for h in self._hooks.all() if hasattr(h, "__dict__"))
        return out

    @contextlib.contextmanager
    def atomic(self, what: str) -> Iterator[Transaction]:
        """Run several prunes as one transaction: all of them commit, or the model is restored.

        Inside the block, groups skip their own forward check; call :meth:`forward_failure`
        once at the end (``prune_groups`` does, and finds the group that broke it).

        Example:
            >>> with DG.atomic("my two prunes"):
            ...     g1.prune(); g2.prune()
        """
        self._require_built()
        tx = Transaction(what, self._model_targets())
        state = self._state()
        tx.on_rollback(lambda: self._restore_state(state))
        self._atomic_depth += 1
        try:
            with tx:
                yield tx
        finally:
            self._atomic_depth -= 1

    def forward_failure(self) -> str | None:
        """Run the model once on the example inputs (eval, no grad): the error text if it fails, else None.

        None as well when the graph was built with ``check_forward=False``.
        """
        return self._forward_failure()

    def prune_groups(self, groups: Iterable[Group], what: str = "a pruner step",
                     record_history: bool = True) -> list[tuple[Group, str]]:
        """Prune ``groups`` (planned lazily is fine) as one transaction with one forward check at the end.

        The check runs when some group reaches a run-time size (the rule a lone prune follows):
        plain channel couplings are exact by construction, and running the model would only repeat
        what the rules proved.

        When the pruned model no longer runs, the groups that break it are found by bisection
        (prefixes of the groups in order, replanned from their original positions), rolled back and
        frozen (never offered again); the rest stay pruned. A group failing to prune (a handler or
        hook error, an interrupt) restores the model as it was before the first group and re-raises.

        Returns:
            ``(group, why)`` for every group left unpruned because the forward pass failed with it.
        """
        skipped: list[tuple[Group, str]] = []
        with self.atomic(what) as tx:
            applied = []
            covered, self._covered = self._covered, True
            try:
                for g in groups:  # planned lazily: the pruner's decisions run between the prunes
                    g.prune(record_history=record_history)
                    applied.append(g)
            finally:
                self._covered = covered
            self._flush_after_hooks(tx)
            failure = self._forward_failure() if any(self._needs_forward_check(g.propagation) for g in applied) else None
            if failure is not None:
                skipped = self._bisect(tx, applied, failure, record_history)
        return skipped

    def _bisect(self, tx: Transaction, applied: list[Group], failure: str,
                record_history: bool) -> list[tuple[Group, str]]:
        """Keep the longest runnable selection of ``applied`` in order: each failing prefix's last group goes."""
        tx.rollback()
        remaining, skipped = list(applied), []
        while remaining:
            save = Transaction("a bisection step", self._model_targets())
            state = self._state()
            save.on_rollback(lambda state=state: self._restore_state(state))

            def attempt(k: int, save: Transaction = save, remaining: list[Group] = remaining) -> str | None:
                save.rollback()
                for g in remaining[:k]:
                    fresh = g.replan()
                    if fresh is not None:
                        fresh.prune(record_history=record_history)
                self._flush_after_hooks(save)
                return self._forward_failure()

            why = attempt(len(remaining))
            if why is None:
                return skipped
            lo, hi = 1, len(remaining)  # prefix hi fails; find the shortest failing prefix
            while lo < hi:
                mid = (lo + hi) // 2
                got = attempt(mid)
                if got is None:
                    lo = mid + 1
                else:
                    hi, why = mid, got
            bad = remaining[lo - 1]
            skipped.append((bad, why))
            attempt(lo - 1)  # the runnable prefix stays applied
            if bad.propagation.order:
                self._graph.freeze(bad.propagation.order[0], f"pruning it breaks the forward pass ({why})")
            remaining = remaining[lo:]
        return skipped

    def _flush_after_hooks(self, tx: Transaction) -> None:
        """After-hooks that batch a pruner step's prunes (the Hugging Face config sync measures every
        layer) run once now: inside the step's transaction, before its forward check."""
        for hook in self._hooks.of("after"):
            flush = getattr(hook, "flush", None)
            if flush is not None:
                tx.on_rollback(lambda hook=hook: hook(self, None))
                flush(self)

    def _width_of(self, slot: int) -> int:
        d = self._dead.get(slot)
        return self._graph.sizes[slot] - (int(d.sum()) if d is not None else 0)

    def _warn_outputs(self, plan: Propagation, where: str) -> None:
        changed = sorted((*self._outputs[s], int((st >= 0).sum()), self._width_of(s))
                         for s, st in plan.state.items() if s in self._outputs and bool((st >= 0).any()))
        if changed:
            what = ", ".join(f"output {i} dim {d} ({n} -> {n - k})" for i, d, k, n in changed)
            warnings.warn(f"pruning {where} changes the shape of the model's outputs: {what}. Only an "
                          "explicit get_pruning_group does this; pruners and get_all_groups keep the outputs",
                          UserWarning, stacklevel=user_stacklevel())

    def _bound_attributes(self, plan: Propagation, dead: dict[int, torch.Tensor]) -> list[tuple[Any, str, int]]:
        """``(module, attribute, new value)`` for size attributes of dims this group shrinks.

        The trace saw ``self.head_dim`` (say) passed as a reshape size; once that
        dim loses positions the attribute must hold the new size.
        """
        out: dict[tuple[int, str], tuple[Any, str, int]] = {}
        for slot, pairs in self._graph.bindings_of(plan.state):  # the group's slots, not every binding
            if not plan.counts.get(slot, 0):
                continue
            size = self._graph.sizes[slot] - int(dead[slot].sum())
            for owner, attr in pairs:
                out[(id(owner), attr)] = (owner, attr, size)
        return list(out.values())

    def _needs_forward_check(self, plan: Propagation) -> bool:
        """Only prunes through run-time sizes (reshapes, bound attributes, custom layers, sizes the
        forward compared in Python) can break the forward in ways the rules do not see; plain channel
        couplings are exact by construction."""
        sensitive = self._graph.shape_sensitive
        return any(s in sensitive for s in plan.state)

    def _forward_failure(self) -> str | None:
        """Run the model once (eval, no grad); the error text if it fails, else None."""
        if self._call is None:
            return None
        inputs, forward_fn = self._call
        modes = [(m, m.training) for m in self.model.modules()]
        try:
            self.model.eval()
            with torch.no_grad():
                call_model(self.model, inputs, forward_fn)
        except Exception as e:  # noqa: BLE001 - reported to the caller with context
            return f"{type(e).__name__}: {str(e)[:300]}"
        finally:
            for m, training in modes:
                m.training = training
        return None

    # -- history ------------------------------------------------------------------------
    def pruning_history(self) -> list[list]:
        """``[module_name, is_out_channel_pruning, idxs]`` per pruned group, in order.

        Whole heads removed from a layer that prunes them as one unit
        (``nn.MultiheadAttention``) are ``[module_name, "heads", head_idxs]``: the
        second field says which kind of prune to replay.
        """
        return [list(h) for h in self._history]

    def record_history(self, module_name: str, kind: bool | str, idxs: Indices) -> None:
        """Append one entry to :meth:`pruning_history` (groups call this after they prune)."""
        self._history.append([module_name, kind, [int(i) for i in idxs]])

    def load_pruning_history(self, pruning_history: list) -> None:
        """Replay a history (from ``pruning_history()``) on this graph's freshly traced model.

        Every entry's module is looked up before the first one is replayed, so a
        history recorded on another definition is refused with the model unchanged.

        Raises:
            UnknownModuleError: entries name modules this model lacks.
            DepgraphError: entries remove heads from modules that cannot lose heads,
                an entry fails to replay, or the replayed model fails its forward pass.
                The replay is one transaction: on any failure (or an interrupt) the model and
                the graph are exactly as they were before the call.
        """
        unknown = sorted({name for name, _, _ in pruning_history if name not in self._names})
        if unknown:
            names = ", ".join(repr(n) for n in unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
            verb = "is not a module" if len(unknown) == 1 else "are not modules"
            raise UnknownModuleError(f"{names} from the pruning history {verb} of this model; "
                                     "replay it on the unpruned definition it was recorded on")
        headless = sorted({name for name, kind, _ in pruning_history
                           if kind == "heads" and not hasattr(self._node(self._names[name]).handler, "prune_heads")})
        if headless:
            raise DepgraphError(f"the pruning history removes heads of {headless[:5]}, whose handlers cannot "
                                "remove heads; replay it on the unpruned definition it was recorded on")
        with self.atomic("replaying the pruning history"):
            for i, (name, kind, idxs) in enumerate(pruning_history):
                target = self._names[name]
                node = self._node(target)
                try:
                    if kind == "heads":
                        ModuleHeadsGroup(self, node, list(idxs)).prune(record_history=True)
                        continue
                    fn = node.handler.prune_out_channels if kind else node.handler.prune_in_channels
                    self.get_pruning_group(target, fn, idxs).prune(record_history=True)
                except DepgraphError as e:
                    add_note_once(e, f"depgraph: at entry {i} of the pruning history ({name!r})")
                    raise
                except Exception as e:
                    raise PruneFailedError(f"replaying entry {i} of the pruning history ({name!r}) failed "
                                           f"({type(e).__name__}: {str(e)[:300]})") from e
            failure = self._forward_failure() if pruning_history else None
            if failure is not None:
                raise UnsupportedOpError(f"the replayed model fails its forward pass ({failure}); replay the "
                                         "history on the unpruned definition it was recorded on")

    # -- legacy spellings ------------------------------------------------------------------
    get_pruning_plan = get_pruning_group


def _expand(layers: Iterable[Any] | None) -> list[Any]:
    out: list[Any] = []
    for m in layers or ():
        out.extend(m.modules() if isinstance(m, nn.Module) else [m])
    return out


def _index_tensor(idxs: Any, where: str) -> torch.Tensor:
    """``idxs`` as a tensor, refusing what is not a collection of integers (None, a string, a float)."""
    if isinstance(idxs, torch.Tensor):
        return idxs.detach().cpu()
    if idxs is None or isinstance(idxs, (str, bytes, float, bool)) or not isinstance(idxs, (Iterable, int)):
        raise InvalidIndicesError(
            f"pruning indices for {where} must be a list, tuple, range or tensor of integers, "
            f"got {type(idxs).__name__} {idxs!r:.60}"
        )
    try:
        return torch.as_tensor(list(idxs) if not isinstance(idxs, int) else [idxs])
    except (TypeError, ValueError, RuntimeError) as e:
        raise InvalidIndicesError(f"pruning indices for {where} must be integers, got {idxs!r:.60} ({e})") from None
