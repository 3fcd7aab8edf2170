"""``DependencyGraph``: trace a model once, then answer "what else must go if these channels go?".

All coupling is computed in the *original* index space of the traced model.
Each prune marks positions dead instead of rebuilding the graph, so the graph
stays valid across any number of prunes and every member's indices are
translated to its current width on the way out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
import torch.nn as nn

from .._types import ExampleInputs, Indices
from ..defaults import DEFAULT_ROOT_TYPES
from ..dims.propagate import Propagation, propagate
from ..errors import (
    DepgraphError,
    HandlerMismatchError,
    InvalidIndicesError,
    OverPruningError,
    UnknownModuleError,
    UnsupportedOpError,
)
from ..functional.base import BasePruningFunc, find_handler, matches_layer_types, registered_handlers
from ..trace.kept import CacheDropper
from ..trace.recorder import call_model, record
from .build import GraphBuilder
from .group import Group
from .heads import ModuleHeadsGroup
from .node import Dependency, GroupItem, Node
from .records import update_records
from .transaction import Snapshot

__all__ = ["DependencyGraph"]


class DependencyGraph:
    """The pruning dependency graph of one model.

    Call tree::

        build_dependency(model, example_inputs)      trace + slot graph
        get_pruning_group(module, fn, idxs)          plan (pure)
            group.prune()  -> apply_group(group)     validate all, snapshot, mutate, restore on error
        get_all_groups(ignored_layers, root_types)   every prunable group once

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
        # Called as hook(graph, plan) after the handlers ran and before the forward check,
        # e.g. to update size attributes (num_heads, head_dim) that the forward reads; and as
        # hook(graph, None) when that prune is rolled back, to undo what the hook changed.
        self._after_prune_hooks: list[Callable] = []
        # Called as hook(graph, items) inside the transaction: after validation and the snapshot,
        # before any handler runs (items carry current indices). What it changes on the members'
        # modules is restored with them if the prune fails (bias compensation uses it).
        self._before_prune_hooks: list[Callable] = []

    # -- building ------------------------------------------------------------------
    def register_customized_layer(self, layer_type: type | nn.Module, layer_pruner: BasePruningFunc) -> None:
        """Use ``layer_pruner`` for ``layer_type`` (a class or one module instance); call before building."""
        self._custom[layer_type] = layer_pruner

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
        trace = record(model, example_inputs, self._is_leaf, forward_fn, output_transform)
        self._call = (example_inputs, forward_fn) if check_forward else None
        builder = GraphBuilder(trace, self._handler_of, custom_types, verbose)
        self._graph = builder.build()
        self._trace = trace
        if any(k.is_cache for k in trace.kept):
            self._after_prune_hooks.append(CacheDropper(trace.kept))
        self.module2node = {}
        for m in model.modules():  # model order, for deterministic get_all_groups
            if m in builder.module2node:
                self.module2node[m] = builder.module2node[m]
        self.module2node.update({k: v for k, v in builder.module2node.items() if k not in self.module2node})
        self._param_nodes = builder.param_nodes
        self._dead = {}
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
        from ..integrations.timm import attach as attach_timm  # imports no timm; a no-op without timm modules

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
        node = self.module2node.get(module)
        return node.handler if node is not None else self._handler_of(module)

    def get_out_channels(self, module_or_node: Any) -> int | None:
        node = module_or_node if isinstance(module_or_node, Node) else self.module2node.get(module_or_node)
        if node is None:
            h = self._handler_of(module_or_node)
            return h.get_out_channels(module_or_node) if h else None
        if node.is_parameter:
            return int(node.module.shape[node.pruning_dim])
        return node.handler.get_out_channels(node.module)

    def get_in_channels(self, module_or_node: Any) -> int | None:
        node = module_or_node if isinstance(module_or_node, Node) else self.module2node.get(module_or_node)
        if node is None:
            h = self._handler_of(module_or_node)
            return h.get_in_channels(module_or_node) if h else None
        if node.is_parameter:
            return int(node.module.shape[node.pruning_dim])
        return node.handler.get_in_channels(node.module)

    @staticmethod
    def is_out_channel_pruning_fn(fn: Callable) -> bool:
        return getattr(fn, "__name__", "") == "prune_out_channels"

    @staticmethod
    def is_in_channel_pruning_fn(fn: Callable) -> bool:
        return getattr(fn, "__name__", "") == "prune_in_channels"

    def _alive(self, slot: int) -> torch.Tensor:
        d = self._dead.get(slot)
        n = self._graph.sizes[slot]
        return torch.arange(n) if d is None else (~d).nonzero().flatten()

    def _slot_for(self, node: Node, fn: Callable) -> int:
        owner = getattr(fn, "__self__", None)
        if isinstance(owner, BasePruningFunc) and owner.TARGET_MODULES and not node.is_parameter:
            if not isinstance(node.module, owner.TARGET_MODULES) and owner.stand_in(node.module) is None:
                raise HandlerMismatchError(
                    f"{fn.__name__} of {type(owner).__name__} does not fit {node.name} "
                    f"({type(node.module).__name__}); use the pruning function for {type(node.module).__name__}"
                )
        if self.is_in_channel_pruning_fn(fn) and node.in_slot is not None:
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
        alive = self._alive(slot)
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
        return self._plan(slot, alive[cur])

    def _plan(self, slot: int, orig: torch.Tensor, blocked: dict[int, str] | None = None) -> Group:
        plan = propagate(self._graph, slot, orig, self._dead, blocked)
        return Group(self, self._items(plan), plan)

    def _to_current(self, slot: int, pos: torch.Tensor) -> torch.Tensor:
        d = self._dead.get(slot)
        if d is None:
            return pos
        return pos - torch.cumsum(d.long(), 0)[pos]

    def _items(self, plan: Propagation) -> list[GroupItem]:
        eps = self._graph.endpoints
        root_slot = plan.order[0] if plan.order else None
        items = []
        for slot in plan.order:
            ep = eps.get(slot)
            if ep is None:
                continue
            pos, roots = plan.removed(slot)
            pos, roots = self._to_current(slot, pos), self._to_current(root_slot, roots)
            src = eps.get(plan.source.get(slot, slot), ep)
            dep = Dependency(src.handler, ep.handler, src.node, ep.node)
            items.append(GroupItem(dep, pos.tolist(), roots.tolist()))
        if items and root_slot not in eps:
            raise DepgraphError("the root of a group must be a prunable layer")
        return items

    def get_all_groups(
        self,
        ignored_layers: Iterable[nn.Module] = (),
        root_module_types: tuple = DEFAULT_ROOT_TYPES,
    ) -> Iterator[Group]:
        """Yield every prunable group once, rooted at the first layer of ``root_module_types`` in it.

        A layer whose handler ``acts_as`` one of ``root_module_types`` counts as one: naming
        ``nn.Linear`` roots groups at GPT-2's ``Conv1D`` too.
        """
        if self._graph is None:
            raise DepgraphError("call build_dependency(model, example_inputs) first")
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
            alive = self._alive(slot)
            plan = propagate(self._graph, slot, alive, self._dead, blocked, grouping=True)
            visited.update(s for s in plan.state if s in self._graph.endpoints)
            if plan.violations or alive.numel() < 2 or not self._single_channel_prunable(slot, alive, blocked):
                continue
            yield Group(self, self._items(plan), plan)

    def _single_channel_prunable(self, slot: int, alive: torch.Tensor, blocked: dict[int, str]) -> bool:
        """Whether removing one root channel leaves every member non-empty.

        Coupling can be so tight that any removal cascades to all channels (the
        pass-through halves of a ShuffleNetV2 stage); such groups are not offered.
        """
        plan = propagate(self._graph, slot, alive[:1], self._dead, blocked)
        if plan.violations:
            return False
        for s, st in plan.state.items():
            d = self._dead.get(s)
            n_alive = self._graph.sizes[s] - (int(d.sum()) if d is not None else 0)
            if int((st >= 0).sum()) >= n_alive:
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
        h = node.handler
        return h.get_out_channels(node.module) if dep.is_out() else h.get_in_channels(node.module)

    # -- applying -----------------------------------------------------------------------
    def apply_group(self, group: Group, record_history: bool = True) -> None:
        """Prune every member of ``group`` as one transaction (see module docstring)."""
        plan: Propagation = group._plan
        items = self._items(plan)  # re-read: earlier prunes may have shifted current indices
        if not items:
            return
        root = items[0]
        where = f"group rooted at {root.dep.target.name} ({len(root.idxs)} channels)"
        if plan.violations:
            reasons = "; ".join(sorted(set(plan.violations.values())))
            raise UnsupportedOpError(f"cannot prune the {where}: it reaches dimensions that must not change: {reasons}")
        problems = []
        for it in items:
            n = self._width(it.dep)
            if n is None:
                continue
            if len(it.idxs) >= n:
                problems.append(f"{it.dep.target.name} would lose all {n} channels")
            elif it.idxs and (it.idxs[0] < 0 or it.idxs[-1] >= n):
                problems.append(f"{it.dep.target.name}: index {it.idxs[-1]} out of range for {n} channels")
        if problems:
            raise OverPruningError(f"cannot prune the {where}: " + "; ".join(problems))
        ordered = [it for it in items if it.dep.is_out()] + [it for it in items if not it.dep.is_out()]
        dead = dict(self._dead)
        for slot, st in plan.state.items():
            gone = st >= 0
            dead[slot] = gone if slot not in dead else dead[slot] | gone
        attrs = self._bound_attributes(plan, dead)
        snap = Snapshot([it.dep.target.module for it in ordered] + [owner for owner, _, _ in attrs])
        widths = {id(it): self._width(it.dep) for it in ordered}
        it = root
        try:
            for hook in self._before_prune_hooks:
                hook(self, ordered)
            for it in ordered:
                if it.idxs:
                    it.dep(it.idxs)
        except Exception as e:
            snap.restore()
            raise DepgraphError(
                f"pruning the {where} failed at {it.dep.target.name} ({type(e).__name__}: {e}); "
                "the model was restored unchanged"
            ) from e
        for owner, attr, value in attrs:
            owner.__dict__[attr] = value
        ran: list[Callable] = []
        try:
            for hook in self._after_prune_hooks:
                ran.append(hook)
                hook(self, plan)
            failure = self._forward_failure() if self._needs_forward_check(plan) else None
        except Exception as e:  # noqa: BLE001 - a failing hook rolls back like a failing forward
            failure = f"an after-prune hook failed ({type(e).__name__}: {e})"
        if failure is not None:
            for hook in reversed(ran):
                hook(self, None)
            snap.restore()
            self._graph.freeze(plan.order[0], f"pruning it breaks the forward pass ({failure})")
            raise UnsupportedOpError(
                f"pruning the {where} breaks the model's forward pass ({failure}); the model was "
                "restored unchanged and this group will not be offered again. Usually a size is written "
                "into the code (e.g. x.view(-1, 400) or a head count); keep these layers with "
                "ignored_layers/frozen_layers, or register a dimension rule for the op"
            )
        self._dead = dead
        update_records(ordered, widths, group.inexact_reasons)
        if record_history:
            self.record_history(root.dep.target.name, root.dep.is_out(), root.idxs)

    def _bound_attributes(self, plan: Propagation, dead: dict[int, torch.Tensor]) -> list[tuple[Any, str, int]]:
        """``(module, attribute, new value)`` for size attributes of dims this group shrinks.

        The trace saw ``self.head_dim`` (say) passed as a reshape size; once that
        dim loses positions the attribute must hold the new size.
        """
        out: dict[tuple[int, str], tuple[Any, str, int]] = {}
        for slot, pairs in self._graph.bindings.items():
            if slot not in plan.state or not bool((plan.state[slot] >= 0).any()):
                continue
            size = self._graph.sizes[slot] - int(dead[slot].sum())
            for owner, attr in pairs:
                out[(id(owner), attr)] = (owner, attr, size)
        return list(out.values())

    def _needs_forward_check(self, plan: Propagation) -> bool:
        """Only prunes through run-time sizes (reshapes, bound attributes, custom layers) can break
        the forward in ways the rules do not see; plain channel couplings are exact by construction."""
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
                or an entry fails to replay (the entries before it stay applied).
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
        for name, kind, idxs in pruning_history:
            target = self._names[name]
            node = self._node(target)
            if kind == "heads":
                ModuleHeadsGroup(self, node, list(idxs)).prune(record_history=True)
                continue
            fn = node.handler.prune_out_channels if kind else node.handler.prune_in_channels
            self.get_pruning_group(target, fn, idxs).prune(record_history=True)

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
