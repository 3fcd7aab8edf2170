"""Which ratio applies to a group, and which groups are ranked together.

Every group root falls in exactly one *scope*:

* a key of ``pruning_ratio_dict`` - a module (covering all its sub-modules)
  or a tuple of modules; when keys overlap, the smallest one wins, so
  ``{model: 0.3, model.layer4: 0.6}`` gives ``layer4`` 0.6;
* otherwise the default scope with ``pruning_ratio``.

Every scope is ranked per group (local) or as one pool when
``global_pruning=True``, split by group structure when ``isomorphic=True``. A
tuple key shares its ratio among its layers, and its ranking only under
``global_pruning`` (so each layer of it gets the ratio on its own otherwise), as
in Torch-Pruning. The head table is built with ``pool_tuples=True``: a tuple of
attention blocks is ranked as one pool (the original has no tuple keys there).
Each scope's schedule is computed once, at construction.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass

import torch.nn as nn

from .options import PrunerOptions
from .scheduler import check_schedule

__all__ = ["Scope", "ScopeTable"]


@dataclass(frozen=True)
class Scope:
    key: Hashable
    schedule: tuple[float, ...]
    pooled: bool  # rank all of this scope's groups together


class ScopeTable:
    """Resolves a root module to its :class:`Scope`."""

    def __init__(self, options: PrunerOptions, *, pool_tuples: bool = False) -> None:
        steps = options.iterative_steps
        sched = options.iterative_pruning_ratio_scheduler

        def schedule(ratio: float) -> tuple[float, ...]:
            return tuple(
                check_schedule(sched(ratio, steps), ratio, steps, getattr(sched, "__name__", "scheduler"))
            )

        self.default = Scope("default", schedule(options.pruning_ratio), options.global_pruning)
        self._owner: dict[nn.Module, tuple[int, Scope]] = {}  # module -> (scope size, scope)
        for i, (key, ratio) in enumerate(options.pruning_ratio_dict):
            is_tuple = isinstance(key, tuple)
            members = {m for k in (key if is_tuple else (key,)) for m in k.modules()}
            scope = Scope(("dict", i), schedule(float(ratio)), (is_tuple and pool_tuples) or options.global_pruning)
            for m in members:
                prev = self._owner.get(m)
                if prev is None or len(members) < prev[0]:
                    self._owner[m] = (len(members), scope)

    def scope_of(self, module: object) -> Scope:
        """The scope that decides ``module``'s ratio and ranking: the entry of
        ``pruning_ratio_dict`` that owns it, else the default scope.
        """
        hit = self._owner.get(module) if isinstance(module, nn.Module) else None
        return hit[1] if hit is not None else self.default

    def scope_of_any(self, modules: Iterable[object]) -> Scope:
        """The smallest scope holding any of ``modules`` (an attention block's q/k/v/o layers)."""
        hits = [self._owner[m] for m in modules if isinstance(m, nn.Module) and m in self._owner]
        return min(hits, key=lambda h: h[0])[1] if hits else self.default

    def ratio(self, module: object, step: int) -> float:
        """The ratio ``module``'s scope must reach after ``step`` steps."""
        schedule = self.scope_of(module).schedule
        return schedule[min(max(step, 0), len(schedule) - 1)]
