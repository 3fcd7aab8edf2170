"""Turn a recorded trace into the slot graph: endpoints, rules, frozen dims.

Called once by ``DependencyGraph.build_dependency``; pure with respect to the
model (nothing is mutated).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

from .. import dims as _dims  # noqa: F401  (registers every dimension rule)
from .._caller import user_stacklevel
from ..dims.indexmap import Identity
from ..dims.modules import custom_module_rule
from ..dims.propagate import propagate
from ..dims.registry import RuleContext, get_dim_rule
from ..dims.slots import Endpoint, FactorRule, PairRule, SlotGraph
from ..errors import HandlerMismatchError
from ..functional import ParameterPruner, prune_parameter_out_channels
from ..functional.base import BasePruningFunc
from ..functional.parametrized import unsupported_parametrization
from ..trace.graph import OpNode, Trace
from ..trace.shape_int import AttrExpr
from .node import Node

__all__ = ["GraphBuilder"]


def _ints_in(obj: Any, depth: int = 0):
    """The attribute expressions (:class:`AttrExpr`) among an op's arguments, nested containers included."""
    if isinstance(obj, AttrExpr):
        yield obj
    elif depth < 4 and isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _ints_in(v, depth + 1)
    elif depth < 4 and isinstance(obj, dict):
        for v in obj.values():
            yield from _ints_in(v, depth + 1)
    elif isinstance(obj, slice):
        yield from _ints_in((obj.start, obj.stop, obj.step), depth + 1)

PARAMETER_HANDLER = ParameterPruner.INSTANCE


def _classes(graph: SlotGraph, identity_only: bool) -> list[int] | None:
    """One representative per slot: slots joined by rules share it (union-find, ``O(rules)``).

    With ``identity_only``, only identity pair rules join: removing a position
    from one slot of such a class removes the same position from all of them,
    so membership answers most reachability questions without a propagation.
    Otherwise every rule joins, and slots of different classes (connected
    components) never reach each other; None if a rule of an unknown kind
    leaves the components unknown.
    """
    parent = list(range(len(graph.sizes)))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def join(a: int, b: int) -> None:
        a, b = find(a), find(b)
        if a != b:
            parent[a] = b

    for rules in graph.rules:
        for r in rules:
            if isinstance(r, PairRule):
                if r.identity or not identity_only:
                    join(r.a, r.b)
            elif not identity_only and isinstance(r, FactorRule):
                for part in r.parts:
                    join(r.merged, part)
            elif not identity_only:
                return None  # a rule of another kind: which slots it joins is unknown
    return [find(s) for s in range(len(parent))]


class GraphBuilder:
    """Builds a :class:`SlotGraph` and the nodes for one trace."""

    def __init__(self, trace: Trace, handler_of: Callable[[nn.Module], BasePruningFunc | None],
                 custom_types: tuple, verbose: bool = True):
        self.trace = trace
        self.handler_of = handler_of
        self.custom_types = custom_types
        self.verbose = verbose
        self.graph = SlotGraph()
        self.value_slots: dict[tuple[int, int], int] = {}
        self.module2node: dict[Any, Node] = {}
        self.param_nodes: dict[Any, list[Node]] = {}
        self.warned: set[str] = set()
        self._same: list[int] = []  # identity class of each slot, set before the derived-size checks
        self._members: dict[int, list[int]] = {}  # identity class -> its slots, filled on first need
        self._linked: list[int] | None = []  # connected component of each slot (every rule joins)

    # -- endpoints --------------------------------------------------------------
    def node_of(self, module: nn.Module) -> Node | None:
        """The graph node of ``module``, created when a handler serves its type; None otherwise,
        so layers depgraph cannot prune never become nodes.
        """
        node = self.module2node.get(module)
        if node is None:
            handler = self.handler_of(module)
            if handler is None:
                return None
            name = self.trace.module_names.get(module, type(module).__name__)
            node = self.module2node[module] = Node(module, name, handler)
        return node

    def endpoint(self, module: nn.Module, is_out: bool, width: int | None = None) -> int | None:
        """The slot of ``module``'s output (``is_out``) or input channels, created on first use.

        Rules call this for every layer they meet; creating slots lazily keeps layers no op
        reaches out of the graph. A slot of a user's handler or custom layer is marked
        shape-sensitive, since only a forward pass can confirm such a prune.
        """
        node = self.node_of(module)
        if node is None:
            return None
        slot = node.out_slot if is_out else node.in_slot
        if slot is not None:
            return slot
        h = node.handler
        n = handler_width(h, module, is_out, width, node.name)
        if n is None:
            return None
        slot = self.graph.new_slot(int(n), f"{node.name}.{'out' if is_out else 'in'}")
        if isinstance(module, self.custom_types) or type(h).__module__.split(".")[0] != "depgraph":
            self.graph.shape_sensitive.add(slot)  # a user's handler: check the forward after pruning
        fn = h.prune_out_channels if is_out else h.prune_in_channels
        self.graph.endpoints[slot] = Endpoint(node, fn, is_out)
        why = unsupported_parametrization(module, node.name)
        if why is not None:  # an orthogonal or spectral-norm weight: removing rows changes it whole
            self.graph.freeze(slot, why)
        if is_out:
            node.out_slot = slot
        else:
            node.in_slot = slot
        return slot

    # -- build ------------------------------------------------------------------
    def build(self) -> SlotGraph:
        """Run every op's dimension rule over the trace and return the coupled slots.

        What no rule covers, the model's inputs and outputs, and tensors the model keeps
        between calls are frozen or marked shape-sensitive here, so pruning never changes
        them silently.
        """
        ctx = RuleContext(self.graph, self.value_slots, self.endpoint)
        pinned: dict[tuple[int, str], str] = {}
        for op in self.trace.ops:
            ctx.covered = set()
            mark = len(self.graph.bind_log)
            self._apply_rule(op, ctx)
            self._freeze_uncovered(op, ctx)
            self._pin_unfollowed(op, set(self.graph.bind_log[mark:]), pinned)
        for v in self.trace.inputs:
            self._freeze_value(v, "model input")
        for v in self.trace.outputs:
            self._freeze_value(v, "model output")
        for k in self.trace.kept:  # a tensor the model keeps between calls: check the forward after a prune
            k.slots = frozenset(s for d in range(k.value.ndim) if (s := self.value_slots.get((k.value.id, d))) is not None)
            if k.may_be_stale:  # an attribute every call overwrites is never read stale
                self.graph.shape_sensitive.update(k.slots)
        for key in self.trace.size_reads:  # a size Python compared (``if c.shape[1] <= 4``): check the forward
            if (slot := self.value_slots.get(key)) is not None:
                self.graph.shape_sensitive.add(slot)
        for v in self.trace.values:
            if v.kind == "const":
                self._freeze_value(v, f"a tensor created outside the model or by a constant (shape {list(v.shape)})")
        self._param_endpoints()
        self._tie_shared_weights()
        self._check_derived_sizes()
        self._freeze_pinned(pinned)
        return self.graph

    def _pin_unfollowed(self, op: OpNode, followed: set[tuple[int, str]], pinned: dict) -> None:
        """Attributes ``op`` reads as ints (a size, a split, a slice bound) without its rule making them follow.

        Updating such an attribute after a prune would change what ``op`` computes
        (SHViT reads ``self.pdim`` both as the size of a piece of ``qkv`` and in
        ``split(x, [self.pdim, ...])``): every dim bound to it must then stay.
        """
        for value in _ints_in((op.args, op.kwargs)):
            for _, factors in value.terms:
                for owner, attr, v in factors:
                    key = (id(owner), attr)
                    if key not in followed and key not in pinned:
                        name = self.trace.module_names.get(owner) if isinstance(owner, nn.Module) else None
                        who = f"{name or '<model>'} ({type(owner).__name__})" if name is not None \
                            else type(owner).__name__
                        pinned[key] = (f"{op.where()} reads {who}.{attr} = {v} where it cannot follow a prune; "
                                       f"pruning this dim would change {attr} under it")

    def _freeze_pinned(self, pinned: dict[tuple[int, str], str]) -> None:
        for slot, pairs in self.graph.bindings.items():
            for owner, attr in pairs:
                reason = pinned.get((id(owner), attr))
                if reason is not None:
                    self.graph.freeze(slot, reason)

    def _check_derived_sizes(self) -> None:
        """A reshape size read from another tensor's shape follows a prune only if that
        tensor's dim shrinks with it (``b, c, h, w = x.shape; pool(x).view(b, c)`` does;
        Swin's ``reshape(..., C // num_heads)`` with C the *input* width of qkv does not)."""
        if not self.graph.derived:
            return
        self._same = _classes(self.graph, identity_only=True)
        self._linked = _classes(self.graph, identity_only=False)
        for slot, src, where in self.graph.derived:
            if slot in self.graph.frozen:
                continue
            sources = {self.value_slots.get(key) for key in src} - {None}
            if slot in sources:
                continue
            # Cheapest answer first (each is pure): identity classes, the factors, a propagation.
            if not (self._same_class(slot, sources) or self._factors_follow(slot, sources)
                    or self._reaches(slot, sources)):
                # Neither side may change alone: the size would then be computed wrong.
                reason = f"{where}: a size is computed from another tensor's shape"
                for s in (slot, *sources):
                    self.graph.freeze(s, reason)

    def _factors_follow(self, slot: int, sources: set[int]) -> bool:
        """A size that is a product whose every factor follows on its own: each part of the
        reshape's factorisation reaches a source dim or is bound to an attribute.

        repeat_kv's ``reshape(B, kv_heads * n_rep, ...)``: ``kv_heads`` is read from the
        shape (a kv head goes with it), ``n_rep`` is ``self.num_key_value_groups`` (updated).
        """
        g = self.graph
        merged = [slot] + [r.b if r.a == slot else r.a for r in g.rules[slot]
                           if isinstance(r, PairRule) and isinstance(r.fwd, Identity)]
        read = math.prod(g.sizes[s] for s in sources)
        for m in merged:
            for rule in g.rules[m]:
                if not (isinstance(rule, FactorRule) and rule.merged == m):
                    continue
                reach = [self._reaches(p, sources) for p in rule.parts]
                if not all(r or self._bound(p) for p, r in zip(rule.parts, reach, strict=True)):
                    continue
                # The attribute-bound parts must be the factors the size multiplies into what it
                # read: MaxViT's ``reshape(B, G, P, D)`` with ``D = x.size(-1)`` merges parts sized
                # by ``n_heads`` and ``head_dim``, but D follows x, not those attributes.
                bound_only = math.prod(s for s, r in zip(rule.sizes, reach, strict=True) if not r)
                if bound_only * read == rule.n:
                    return True
        return False

    def _bound(self, slot: int) -> bool:
        """``slot`` or a slot identical to it (a permute, an elementwise op away) is bound to an attribute."""
        g = self.graph
        seen, frontier = {slot}, [slot]
        while frontier:
            s = frontier.pop()
            if s in g.bindings:
                return True
            for r in g.rules[s]:
                if isinstance(r, PairRule) and isinstance(r.fwd, Identity):
                    other = r.b if r.a == s else r.a
                    if other not in seen:
                        seen.add(other)
                        frontier.append(other)
        return False

    def _same_class(self, slot: int, sources: set[int]) -> bool:
        same = self._same[slot]
        return any(self._same[s] == same for s in sources)

    def _reaches(self, slot: int, sources: set[int]) -> bool:
        """Whether removing position 0 of ``slot`` removes some position of a slot in ``sources``.

        Most derived sizes (a batch or token count passed on to a ``view``) are
        linked to their source by identity rules alone, which carry position 0
        unchanged: those are answered from the identity classes without a
        propagation, which is what keeps the build linear in the number of ops.
        """
        if self._same_class(slot, sources):
            return True
        linked = self._linked
        if linked is not None and all(linked[s] != linked[slot] for s in sources):
            return False  # no chain of rules leads there
        # Reaching any slot of a source's identity class reaches the source: stop there.
        if not self._members:
            for s, c in enumerate(self._same):
                self._members.setdefault(c, []).append(s)
        targets = {t for c in {self._same[s] for s in sources} for t in self._members[c]}
        plan = propagate(self.graph, slot, torch.zeros(1, dtype=torch.long), {}, stop_at_frozen=False,
                         grouping=True, until=targets)
        return bool(targets & plan.state.keys())

    def _apply_rule(self, op: OpNode, ctx: RuleContext) -> None:
        if op.is_module:
            handler = self.handler_of(op.target)
            if isinstance(op.target, self.custom_types) or (handler is not None and
                                                           get_dim_rule(type(op.target)) is None):
                custom_module_rule(op, ctx, handler)
                return
            rule = get_dim_rule(type(op.target))
        else:
            rule = get_dim_rule(op.target)
        if rule is None:
            if op.inputs:  # factories (arange, zeros, tensor) make constants: frozen, nothing to warn about
                self._warn_unsupported(op)
            return
        try:
            rule(op, ctx)
        except Exception as e:  # noqa: BLE001 - an odd call must not break the build
            self._warn_unsupported(op, f"its dimension rule failed ({type(e).__name__}: {e})")
            ctx.covered = set()

    def _freeze_uncovered(self, op: OpNode, ctx: RuleContext) -> None:
        for v in [*op.inputs, *op.outputs]:
            for d, n in enumerate(v.shape):
                if n > 1 and (v.id, d) not in ctx.covered:
                    slot = self.value_slots.get((v.id, d))
                    if slot is None:
                        slot = self.value_slots[(v.id, d)] = self.graph.new_slot(n, f"{v!r}.dim{d}")
                    self.graph.freeze(slot, f"{op.where()} does not allow pruning dim {d} of {list(v.shape)}")

    def _freeze_value(self, v, reason: str) -> None:
        for d in range(v.ndim):
            slot = self.value_slots.get((v.id, d))
            if slot is not None:
                self.graph.freeze(slot, reason)

    def _warn_unsupported(self, op: OpNode, why: str = "") -> None:
        key = op.name
        if key in self.warned:
            return
        self.warned.add(key)
        if self.verbose:
            msg = why or "it has no dimension rule"
            warnings.warn(
                f"depgraph: {op.where()}: {msg}; the dimensions it touches will not be pruned. "
                "Register a rule with depgraph.dims.register_dim_rule to prune through it.",
                stacklevel=user_stacklevel(),
            )

    def _param_endpoints(self) -> None:
        """Bare parameters (not owned by a layer with a handler) become prunable per dim."""
        for v in self.trace.params.values():
            if v.id in self.graph.layer_params:
                continue  # a rule tied it to its layer's endpoints; the layer's handler prunes it
            owned = v.owner is not None and self.handler_of(v.owner) is not None and self._handler_prunes(v)
            for d in range(v.ndim):
                slot = self.value_slots.get((v.id, d))
                if slot is None:
                    continue
                if owned:
                    self.graph.freeze(slot, f"{v.qualname} of {type(v.owner).__name__} is used outside its layer")
                    continue
                # One node per (tensor, dim); buffers follow channels like parameters.
                node = Node(v.tensor_ref, v.qualname, PARAMETER_HANDLER, pruning_dim=d)
                node.owner, node.attr = v.owner, v.attr
                node.out_slot = slot
                self.module2node.setdefault(v.tensor_ref, node)
                self.param_nodes.setdefault(v.tensor_ref, []).append(node)
                self.graph.endpoints[slot] = Endpoint(node, prune_parameter_out_channels, True, d)

    def _handler_prunes(self, v) -> bool:
        """Whether the handler of ``v``'s owner prunes ``v``.

        A leaf layer's tensors are all its handler's. A layer whose overridden ``forward``
        was traced may hold tensors of its own besides the layer's (the ``gain`` of timm's
        ``ScaledStdConv2d``): the handler knows nothing of them, so they are bare
        parameters, pruned along whatever dims the rules couple them to.
        """
        return v.owner in self.trace.module_calls or v.attr in _LAYER_TENSORS

    def _tie_shared_weights(self) -> None:
        """Layers holding one weight Parameter (tied embedding and lm_head) lose the same positions.

        The trace sees two layers; only their shared tensor couples them. Without this
        pairing the embedding group would shrink the lm_head's weight under its input.
        """
        slots: dict[tuple[int, int], list[int]] = {}
        for module, node in self.module2node.items():
            sides = next((s for t, s in _WEIGHT_SIDES if isinstance(module, t)), None)
            weight = getattr(module, "weight", None) if sides else None
            if not isinstance(weight, torch.Tensor):
                continue
            for dim, is_out in sides.items():
                slot = node.out_slot if is_out else node.in_slot
                if slot is not None:
                    slots.setdefault((id(weight), dim), []).append(slot)
        for first, *rest in slots.values():
            for s in rest:
                if self.graph.sizes[s] == self.graph.sizes[first]:
                    self.graph.pair(first, s)
                else:
                    self.graph.freeze(s, "its weight is shared with a layer of another width")


# weight dim -> whether the layer's output (True) or input endpoint carries it
_WEIGHT_SIDES: tuple[tuple[type, dict[int, bool]], ...] = (
    (nn.Embedding, {1: True}),
    (nn.Linear, {0: True, 1: False}),
)
# What a handler of a built-in layer prunes: its weight, bias and running statistics.
_LAYER_TENSORS = frozenset({"weight", "bias", "running_mean", "running_var", "num_batches_tracked"})


def handler_width(handler: Any, module: nn.Module, is_out: bool, traced: int | None, name: str) -> int | None:
    """``handler.get_{out,in}_channels(module)``; the ``traced`` width when a user's getter fails.

    Handlers written for the original library may have a getter that is never
    called there (its custom-layer example reads ``self.in_dim`` on the handler).
    The traced tensor says the width as well; a warning names the broken getter.

    Raises:
        HandlerMismatchError: the getter failed and no traced width is known.
    """
    side = "out" if is_out else "in"
    try:
        return handler.get_out_channels(module) if is_out else handler.get_in_channels(module)
    except Exception as e:  # noqa: BLE001 - a user's handler: report it, do not crash the build
        if traced is None or type(handler).__module__.split(".")[0] == "depgraph":
            raise HandlerMismatchError(
                f"{type(handler).__name__}.get_{side}_channels failed on {name} ({type(module).__name__}): "
                f"{type(e).__name__}: {e}"
            ) from e
        warnings.warn(
            f"{type(handler).__name__}.get_{side}_channels({name}) raised {type(e).__name__}: {e}; "
            f"using the traced width {traced}. Fix the handler so pruners can read the layer's width",
            stacklevel=user_stacklevel(),
        )
        return int(traced)
