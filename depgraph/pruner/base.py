"""``BasePruner``: ratios, scopes and schedules in; pruned groups out.

Call tree (``*``: what a subclass may override)::

    BasePruner(model, example_inputs, importance, **options)
        options_class.from_kwargs(...)             validate everything first
        DependencyGraph().build_dependency(...)
        update_regularizer()                    *  refresh groups used by regularize()
    step(interactive=False)
        _prune()                                   decisions -> final groups
            planning.collect_candidates            every prunable group
            estimate_importance(group)          *  one score per root channel
            planning.plan_local / plan_pooled      counts, ranking, channel classes
        group.prune()  or  soft.zero_group(group)
    regularize(model, loss=None)                *  add sparsity gradients (no-op here)

Subclasses add options by subclassing :class:`PrunerOptions` and setting
``options_class``; their ``__init__`` takes only the new arguments and passes
the rest through ``**kwargs``.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from .._caller import user_stacklevel
from .._types import ExampleInputs, Indices
from ..dependency import DependencyGraph
from ..dependency.transaction import Transaction
from ..errors import DepgraphError, OptionError, OptionTypeError, OverPruningError, UnsupportedOpError
from ..importance import Importance
from ..trace.gc_pause import gc_paused
from . import planning
from .heads import HeadPlanner
from .options import DEFAULT_ROOT_TYPES, PrunerOptions, check_known_modules, resolve_deprecated
from .scheduler import Scheduler, linear_scheduler
from .scope import ScopeTable
from .selection import pick_lowest
from .soft import zero_group

if TYPE_CHECKING:  # the graph imports criteria and pruners; only the types are needed here
    from ..dependency.group import Group


__all__ = ["BasePruner", "MetaPruner", "MagnitudePruner"]


class BasePruner:
    """Structural pruner: removes the lowest-importance channels of every group.

    Args:
        model: the network; pruned in place.
        example_inputs: a tensor, tuple/list of positional inputs or dict of kwargs.
        importance: a criterion (see :mod:`depgraph.importance`), called on each group.
        global_pruning: rank all groups together instead of each group alone.
        pruning_ratio: fraction of each group's channels to remove (weights
            shrink by about ``1 - (1 - p)**2``).
        pruning_ratio_dict: ``{module or tuple of modules: ratio}``; a tuple's
            layers share the ratio (ranked together under ``global_pruning``).
        max_pruning_ratio: no group loses more than this fraction.
        iterative_steps: number of ``step()`` calls to reach the target.
        iterative_pruning_ratio_scheduler: ``(ratio, steps) -> [0, ..., ratio]``.
        ignored_layers: modules (with their sub-modules) whose output channels
            stay, or parameters that keep their shape.
        round_to: channel counts kept as multiples of this.
        isomorphic: with global pruning, rank only among groups of identical structure.
        in_channel_groups: ``{module: n}``: the module's
            channels form ``n`` blocks that must lose the same local positions
            (grouped convolutions are detected from the graph).
        out_channel_groups: as ``in_channel_groups``.
        prune_num_heads: remove whole attention heads, ``head_pruning_ratio`` of
            each block's heads (``head_pruning_ratio_dict``: per module or tuple
            scope). Heads are found from the trace; under GQA a key/value head goes
            with exactly the query heads that share it; a block keeps one head.
            See :mod:`depgraph.pruner.heads`.
        prune_head_dims: prune head dims of attention groups with ``pruning_ratio``
            (the same dims in every head); both may be combined in one step.
        num_heads: ``{module: n}``, optional: checked against the traced heads
            (a mismatch raises), and keeps head dims aligned across heads.
        customized_pruners: passed to ``DependencyGraph.build_dependency``.
        unwrapped_parameters: as ``customized_pruners``.
        forward_fn: as ``customized_pruners``.
        output_transform: as ``customized_pruners``.
        root_module_types: the layer types groups are rooted at (with the layers whose handler
            ``acts_as`` one of them: GPT-2's ``Conv1D`` for ``nn.Linear``).
        soft_pruning: **(new)** zero the chosen channels (weights, biases and
            norm affines of every member) instead of removing them; shapes stay,
            later steps keep them at zero and count them as pruned.
        compensation: **(new)** what each prune does to the consumers of removed
            channels, inside the prune's transaction: ``tp.importance.BiasMean(stats)``
            adds the mean contribution of the removed input channels to their biases
            (``stats`` from ``collect_activation_stats``; None: the calibrated importance's
            ``.stats``), ``tp.importance.LeastSquares(cov)`` refits the kept input columns
            and the bias of every measured Linear consumer by least squares (``cov`` from
            ``collect_input_covariance``). See :mod:`depgraph.importance.compensation_modes`.
        bias_compensation: **(new)** the flag spelling of
            ``compensation=BiasMean(calibration_stats)``.
        calibration_stats: **(new)** with ``bias_compensation``; alone it is refused.
        lstsq_compensation: **(new)** the flag spelling of ``compensation=LeastSquares(cov)``.
        ch_sparsity: deprecated spellings.
        ch_sparsity_dict: as ``ch_sparsity``.
        channel_groups: as ``ch_sparsity``.

    Raises:
        OptionError (a ValueError): invalid options (all problems listed at once).

    Example:
        >>> imp = tp.importance.GroupMagnitudeImportance(p=2)
        >>> pruner = tp.pruner.BasePruner(model, torch.randn(1, 3, 224, 224), imp,
        ...                               pruning_ratio=0.5, ignored_layers=[model.fc])
        >>> pruner.step()
    """

    options_class: type[PrunerOptions] = PrunerOptions

    def __init__(
        self,
        model: nn.Module,
        example_inputs: ExampleInputs,
        importance: Importance | Callable,
        global_pruning: bool = False,
        pruning_ratio: float = 0.5,
        pruning_ratio_dict: dict | None = None,
        max_pruning_ratio: float = 1.0,
        iterative_steps: int = 1,
        iterative_pruning_ratio_scheduler: Scheduler = linear_scheduler,
        ignored_layers: Sequence | None = None,
        round_to: int | None = None,
        isomorphic: bool = False,
        in_channel_groups: dict | None = None,
        out_channel_groups: dict | None = None,
        num_heads: dict | None = None,
        prune_num_heads: bool = False,
        prune_head_dims: bool = True,
        head_pruning_ratio: float = 0.0,
        head_pruning_ratio_dict: dict | None = None,
        customized_pruners: dict | None = None,
        unwrapped_parameters: Any = None,
        root_module_types: Sequence[type] = DEFAULT_ROOT_TYPES,
        forward_fn: Callable | None = None,
        output_transform: Callable | None = None,
        channel_groups: dict | None = None,
        ch_sparsity: float | None = None,
        ch_sparsity_dict: dict | None = None,
        *,
        soft_pruning: bool = False,
        bias_compensation: bool = False,
        calibration_stats: Any = None,
        lstsq_compensation: Any = None,
        compensation: Any = None,
        **extra: Any,
    ) -> None:
        kwargs = {
            k: v
            for k, v in locals().items()
            if k not in ("self", "model", "example_inputs", "importance", "extra", "__class__")
        }
        kwargs.update(extra)
        kwargs = resolve_deprecated(kwargs)
        try:
            self.options = self.options_class.from_kwargs(**kwargs)
        except TypeError as e:
            raise OptionTypeError(f"{type(self).__name__}: {e}") from None
        if not callable(importance):
            raise OptionTypeError(f"importance must be callable (group -> scores), got {type(importance).__name__}")
        check_known_modules(model, self.options)
        self.model = model
        self.importance = importance
        self.scopes = ScopeTable(self.options)
        layers = [x for x in self.options.ignored_layers if isinstance(x, nn.Module)]
        params = [x for x in self.options.ignored_layers if isinstance(x, torch.Tensor)]
        # As in Torch-Pruning: each ignored module with all of its sub-modules, in order.
        self.ignored_layers = [sub for layer in layers for sub in layer.modules()]
        self.ignored_params = params
        with gc_paused():  # graph, group listing, heads: many small objects, none of them cyclic garbage
            self.DG = DependencyGraph().build_dependency(
                model,
                example_inputs,
                forward_fn=forward_fn,
                output_transform=output_transform,
                unwrapped_parameters=unwrapped_parameters,
                customized_pruners=dict(self.options.customized_pruners) or None,
                ignored_layers=layers or None,
                ignored_params=params or None,
            )
            if self.options.compensation is not None:
                self._compensation_hook = self.options.compensation.enable(
                    self.DG, lambda: getattr(self.importance, "stats", None))
            self.current_step = 0
            self._soft_pruned: dict[Any, set[int]] = {}
            self._initial: dict[Any, int] = {}
            # (slot graph, version, groups): listing them is a propagation per group, so the first
            # step and update_regularizer reuse the list while no prune has changed the graph
            self._listed: tuple[Any, int, list[Group]] | None = None
            for group in self.prunable_groups():
                self._initial[group[0].dep.target.module] = len(group[0].idxs)
            opts = self.options
            _warn_unused_options(opts)
            needs_heads = opts.prune_num_heads or opts.num_heads or not opts.prune_head_dims
            self._heads = HeadPlanner(self) if needs_heads else None
            # root slot -> class label per original channel; filled and read by pruner.planning
            self.closure_cache: dict[int, torch.Tensor] = {}
            self.update_regularizer()

    # -- compatibility attributes -------------------------------------------------------
    @property
    def pruning_ratio(self) -> float:
        """The original's attribute: the default fraction of channels removed by the last step."""
        return self.options.pruning_ratio

    @property
    def iterative_steps(self) -> int:
        """The original's attribute: the number of ``step()`` calls the schedule spreads the ratio over."""
        return self.options.iterative_steps

    @property
    def round_to(self) -> int | None:
        """The original's attribute: channel counts are kept multiples of this (None: any count)."""
        return self.options.round_to

    @property
    def global_pruning(self) -> bool:
        """The original's attribute: whether channels are ranked across layers (read from the options)."""
        return self.options.global_pruning

    def initial_width(self, root: Any, default: int) -> int:
        """Root channels at construction (``default`` for a root first seen later).

        Ratios are fractions of this width, not of the current one, so an
        iterative schedule reaches its target instead of compounding.
        """
        return self._initial.setdefault(root, default)

    def initial_widths(self) -> dict[Any, int]:
        """A copy of every ``root -> width`` the ratios of this pruner refer to (see :meth:`initial_width`)."""
        return dict(self._initial)

    def set_initial_width(self, root: Any, width: int) -> None:
        """Change the reference width of ``root``; a step rolled back restores the old one.

        Removing whole attention heads also removes their head dims: the head
        planner lowers the reference of those head-dim groups so the removed
        heads are not counted again as pruned dims.
        """
        self._initial[root] = int(width)

    def soft_pruned_positions(self, root: Any) -> frozenset[int]:
        """Root positions of ``root`` that soft pruning has zeroed so far (empty without soft pruning).

        They still exist in the weights but count as removed: planning never
        picks them again and counts them towards the ratio.
        """
        return frozenset(self._soft_pruned.get(root, ()))

    def declared_channel_groups(self) -> dict[tuple[Any, str], int]:
        """``(module, side) -> n`` from in/out_channel_groups and (for head dims) num_heads."""
        out = {(m, "in"): n for m, n in self.options.in_channel_groups}
        out.update({(m, "out"): n for m, n in self.options.out_channel_groups})
        if self.options.prune_head_dims:
            out.update({(m, "out"): n for m, n in self.options.num_heads if (m, "out") not in out})
        return out

    def get_target_pruning_ratio(self, module: nn.Module, step: int = -1) -> float:
        """The ratio ``module``'s groups reach after ``step`` steps (``-1``: the current step).

        Capped at ``max_pruning_ratio``, as the planner caps it.
        """
        step = self.current_step if step < 0 else step
        return min(self.scopes.ratio(module, step), self.options.max_pruning_ratio)

    def get_target_head_pruning_ratio(self, module: nn.Module) -> float:
        """The fraction of ``module``'s attention heads removed once the current step is done."""
        if self._heads is not None:
            return min(self._heads.scopes.ratio(module, self.current_step), 1.0)
        heads = ScopeTable(self.options.replace(
            pruning_ratio=self.options.head_pruning_ratio,
            pruning_ratio_dict=self.options.head_pruning_ratio_dict), pool_tuples=True)
        return min(heads.ratio(module, self.current_step), 1.0)

    @property
    def num_heads(self) -> dict[nn.Module, int]:
        """``{module: heads now}`` for each module given in ``num_heads=``, updated by every step.

        Keyed as the caller keyed ``num_heads`` (e.g. ``q_proj`` for the query
        heads, ``k_proj`` for the key/value heads under GQA), so scripts that copy
        the counts back after ``step()`` read the pruned ones.
        """
        if self._heads is None:
            return {}
        return self._heads.current_counts()

    def prunable_groups(self) -> list[Group]:
        """Every group this pruner may prune, on the model as it is now (``ignored_layers`` and
        ``root_module_types`` applied); the same list until a prune changes the graph.

        Do not mutate the list or its groups: the next step and ``update_regularizer`` read it.
        """
        graph, version = self.DG.slot_graph, self.DG.version
        listed = self._listed
        if listed is None or listed[0] is not graph or listed[1] != version:
            groups = list(self.DG.get_all_groups(self.ignored_layers, self.options.root_module_types))
            listed = self._listed = (graph, version, groups)
        return listed[2]

    def shrinkable_groups(self) -> list[Group]:
        """The groups a step may remove channels of: :meth:`prunable_groups` less the attention groups
        that ``prune_head_dims=False`` leaves whole while no head goes.

        With ``prune_num_heads`` a removed head takes its channels out of those groups, so they
        stay. What a calibration has to measure (the statistics of the other groups are never read).
        """
        skip = set() if self.options.prune_num_heads else self._head_dim_slots()
        if not skip:
            return list(self.prunable_groups())
        nodes = self.DG.module2node
        return [g for g in self.prunable_groups()
                if getattr(nodes.get(g[0].dep.target.module), "out_slot", None) not in skip]

    # -- scoring ------------------------------------------------------------------------------
    def estimate_importance(self, group: Group) -> torch.Tensor | None:
        """One score per root channel of ``group`` (None: leave the group alone)."""
        return self.importance(group)

    # -- pruning ---------------------------------------------------------------------------------
    def step(self, interactive: bool = False) -> Iterator[Any] | None:
        """Advance one iterative step: prune, or with ``interactive=True`` yield the groups to prune.

        A step is one transaction: its groups all commit, or (a handler or hook error, Ctrl-C)
        the model, the graph and the pruner's schedule are exactly as before the call and the
        error is re-raised. When a group of the step reaches a run-time size (a reshape, a head
        count, a custom layer, a size the forward compares in Python), the pruned model is run once
        on the example inputs at the end of the step; when it fails, the groups that break it are
        found (bisection), left unpruned, frozen for later steps and named in a warning, and the
        rest stay pruned. Plain channel couplings are exact by construction and need no run.

        With ``interactive=True`` the caller prunes each yielded group itself
        (``group.prune()``); each group is its own transaction with its own forward check, so
        stopping the loop early leaves the groups pruned so far pruned and the model runnable.

        Raises:
            DepgraphError: the importance returned unusable scores, or a group failed to prune
                (the step is rolled back).
        """
        self.current_step += 1
        if self.current_step > self.options.iterative_steps:
            warnings.warn(
                f"step {self.current_step} exceeds iterative_steps={self.options.iterative_steps}; "
                "nothing is pruned (call reset() to start over)",
                stacklevel=2,
            )
            return iter(()) if interactive else None
        groups = self._prune()
        if interactive:
            return groups
        if self.options.soft_pruning:
            self._soft_step(groups)
            return None
        before = (self.current_step - 1, dict(self._initial))
        try:
            with contextlib.ExitStack() as stack:
                stack.enter_context(gc_paused())  # planning and pruning: many short-lived objects, none cyclic
                for hook in self.DG.prune_hooks("after"):  # e.g. HF config sync: judge the step's end state
                    if hasattr(hook, "deferred"):
                        stack.enter_context(hook.deferred())
                skipped = self.DG.prune_groups(groups, what=f"step {self.current_step} of {type(self).__name__}")
        except BaseException:
            self.current_step, self._initial = before[0], before[1]
            raise
        for group, why in skipped:
            root = group[0]
            warnings.warn(
                f"depgraph: {type(self).__name__} step {self.current_step} left the group rooted at "
                f"{root.dep.target.name} (removing {len(root.idxs)} channels) unpruned: the model's forward pass "
                f"fails with it ({why}); the other groups of the step were pruned",
                stacklevel=2,
            )
        return None

    def _prune(self) -> Iterator[Any]:
        # Decide everything on the model as it is now, then apply: criteria whose
        # statistics follow parameter shapes (Hessian, OBDC) stay valid, and no
        # group is scored half-way through another group's prune.
        blocks = self._heads.blocks() if self._heads is not None and self.options.prune_num_heads else None
        heads = self._heads.plan(blocks) if blocks is not None else []
        skip = self._head_dim_slots(blocks)
        cands = list(planning.candidates(self, pooled=None, skip=skip))  # one walk over the groups
        local = [(c, planning.plan_local(self, c)) for c in cands if not c.scope.pooled]
        pooled = [c for c in cands if c.scope.pooled]
        decided = [(c, idxs) for c, idxs in local if idxs]
        decided += [(c, planning.pick(self, c, n)) for c, n in planning.plan_pooled(self, pooled)]
        for cand, idxs in decided:
            if self._width_now(cand) != cand.alive:  # overlapped by a group pruned before it
                n = len(idxs) - len(cand.soft)
                cand = planning.refresh(self, cand)
                idxs = planning.pick(self, cand, min(n, cand.current - 1))
            if idxs:
                yield from self._final_group(cand, idxs)
        if heads:  # last: decisions hold original positions, valid after the head-dim prunes
            yield from self._heads.groups(heads)

    def _head_dim_slots(self, blocks: list | None = None) -> set[int]:
        """Root slots of attention groups left alone: with ``prune_head_dims=False`` every head keeps
        its size, whether or not whole heads go (``prune_num_heads``)."""
        if self._heads is None or self.options.prune_head_dims:
            return set()
        return self._heads.attention_slots(blocks)

    def _width_now(self, cand: planning.Candidate) -> int | None:
        out = self.DG.is_out_channel_pruning_fn(cand.fn)
        return self.DG.get_out_channels(cand.root) if out else self.DG.get_in_channels(cand.root)

    def _final_group(self, cand: planning.Candidate, idxs: list[int]) -> Iterator[Any]:
        group = self.DG.get_pruning_group(cand.root, cand.fn, idxs)
        if self.DG.check_pruning_group(group):
            yield group

    def _soft_step(self, groups: Iterable[Group]) -> None:
        """Zero every group of the step in one transaction: all of them, or (an error, Ctrl-C)
        none, with the weights, the soft-pruned record and the schedule as before the call."""
        step, soft = self.current_step - 1, {k: set(v) for k, v in self._soft_pruned.items()}

        def undo() -> None:
            self.current_step, self._soft_pruned = step, soft

        with Transaction(f"soft-pruning step {self.current_step} of {type(self).__name__}") as tx:
            tx.on_rollback(undo)
            for group in groups:
                tx.cover_values(p for dep, _ in group for p in _params_of(dep.target.module))
                self._soft_prune(group)

    def _soft_prune(self, group: Group) -> None:
        root = group[0].dep.target.module
        zero = getattr(group, "zero", None)  # heads inside one layer zero themselves
        zero() if zero is not None else zero_group(group)
        self._soft_pruned.setdefault(root, set()).update(int(i) for i in group[0].idxs)

    def manual_prune_width(
        self, layer: nn.Module, pruning_fn: Callable, pruning_ratios_or_idxs: float | Indices
    ) -> None:
        """Prune ``layer`` (and its group) by a ratio (lowest importance first) or by exact indices.

        Raises:
            UnsupportedOpError: the group reaches a layer in ``ignored_layers`` (its output
                width never changes, here as in ``step``) or another frozen dimension.
            OverPruningError: the group would leave some layer without channels.
        """
        if isinstance(pruning_ratios_or_idxs, float):
            if not 0.0 <= pruning_ratios_or_idxs <= 1.0:
                raise OptionError(f"pruning ratio must be in [0, 1], got {pruning_ratios_or_idxs}")
            out = self.DG.is_out_channel_pruning_fn(pruning_fn)
            width = self.DG.get_out_channels(layer) if out else self.DG.get_in_channels(layer)
            full = self.DG.get_pruning_group(layer, pruning_fn, list(range(width)))
            scores = self.estimate_importance(full)
            if scores is None:
                raise DepgraphError(f"the importance cannot score the group of {type(layer).__name__}")
            idxs = pick_lowest(scores, min(int(width * pruning_ratios_or_idxs), width - 1))
        else:
            idxs = pruning_ratios_or_idxs
        group = self.DG.get_pruning_group(layer, pruning_fn, idxs)
        if group.blocked_by:
            raise UnsupportedOpError(
                f"manual_prune_width: the group of {type(layer).__name__} reaches widths that must not change "
                f"({'; '.join(group.blocked_by)}); nothing was pruned"
            )
        if not self.DG.check_pruning_group(group):
            raise OverPruningError(
                f"manual_prune_width: pruning {len(group[0].idxs)} channels of "
                f"{type(layer).__name__} would empty a layer or reach a frozen dimension"
            )
        group.prune()

    def reset(self) -> None:
        """Start the schedule over (the already pruned model is kept)."""
        self.current_step = 0

    # -- history -----------------------------------------------------------------------------------
    def pruning_history(self) -> list:
        """Every prune applied through this pruner's graph, in original indices, for
        :meth:`load_pruning_history` on a fresh copy of the model.
        """
        return self.DG.pruning_history()

    def load_pruning_history(self, pruning_history: list) -> None:
        """Replay a history from :meth:`pruning_history` on this pruner's (unpruned) model.

        One transaction: if any entry fails, the model is as before and the error is re-raised.
        """
        self.DG.load_pruning_history(pruning_history)

    # -- sparse training -----------------------------------------------------------------------------
    def update_regularizer(self) -> None:
        """Refresh the groups ``regularize`` works on (call after pruning the model)."""
        self._groups = list(self.prunable_groups())

    def regularize(self, model: nn.Module, loss: torch.Tensor | None = None) -> None:
        """Add sparsity gradients; call between ``loss.backward()`` and ``optimizer.step()``.

        ``BasePruner`` adds none; see the regularising subclasses.
        """


def _warn_unused_options(opts: PrunerOptions) -> None:
    """Options the original reads only in another mode and ignores silently otherwise: warn by name."""
    unused = [name for name, given in (("head_pruning_ratio", opts.head_pruning_ratio > 0),
                                       ("head_pruning_ratio_dict", bool(opts.head_pruning_ratio_dict)))
              if given]
    if unused and not opts.prune_num_heads:
        warnings.warn(f"{' and '.join(unused)} given without prune_num_heads=True: no head is removed "
                      "(pass prune_num_heads=True to remove whole heads)", stacklevel=user_stacklevel())
    if opts.isomorphic and not opts.global_pruning:
        warnings.warn("isomorphic=True given without global_pruning=True: it only splits a ranking shared by "
                      "several groups, so it changes nothing here", stacklevel=user_stacklevel())


class MetaPruner(BasePruner):
    """Alias of :class:`BasePruner` (the original's name)."""


class MagnitudePruner(BasePruner):
    """Alias of :class:`BasePruner`; pair it with a magnitude importance."""


def _params_of(target: object) -> list[torch.Tensor]:
    """The tensors soft pruning may zero for one group member: a layer's parameters, or the
    bare parameter itself."""
    if isinstance(target, nn.Module):
        return list(target.parameters())
    return [target] if isinstance(target, torch.Tensor) else []
