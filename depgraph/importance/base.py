"""The ``Importance`` contract and the registry of named criteria.

An importance criterion maps a pruning group to one score per root index:
low scores are removed first. ``scores[k]`` belongs to ``group[0].idxs[k]``.

Call tree of :class:`GroupImportance`, the base of every built-in criterion
(``*`` marks what a subclass may override)::

    imp(group)                                     -> (len(group[0].idxs),) or None
        for each member i: dep, idxs = group[i]
            imp.accepts(target)                    *  filter by ``target_types``
            imp.score_member(target, side, idxs, dep)  *  (len(idxs),) or None
            scatter onto root positions via group[i].root_idxs (summing repeats)
        reduce_stack(stack, mask, group_reduction)    mean/sum/max/prod/first/gate/None
        normalize(scores, normalizer)                 mean/max/sum/standarization/gaussian/lamp/None

A criterion that does not fit this template (``RandomImportance``) overrides
``__call__`` directly. Inside :func:`member_access`, each member is scored within
``opener(node)``: the streamed checkpoint path puts one member's real tensors into a
meta-device layer there, so a group spanning every layer is never held at once. ``None`` means "no member of this group can be scored";
pruners then leave the group alone.

Register a criterion under a name with ``@register_importance("name")`` and
build it with :func:`create_importance`.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from .._types import CHANNEL_SIDES
from ..defaults import CONV_AND_LINEAR, DEFAULT_TARGET_TYPES
from ..errors import DepgraphError, OptionError
from ..functional.base import matches_layer_types
from .reduce import Normalizer, Reduction, check_normalizer, check_reduction, normalize, reduce_stack

if TYPE_CHECKING:  # the graph imports criteria and pruners; only the types are needed here
    from ..dependency.group import Group
    from ..dependency.node import Dependency


__all__ = [
    "Importance",
    "GroupImportance",
    "register_importance",
    "create_importance",
    "list_importances",
    "DEFAULT_TARGET_TYPES",
    "CONV_AND_LINEAR",
    "check_power",
    "member_access",
    "member_indices",
    "root_lookup",
    "root_positions",
]

# how GroupImportance reaches each member's tensors (None: they are in the model already)
_OPENER: ContextVar[Callable[[Any], AbstractContextManager[Any]] | None] = ContextVar("depgraph_member_opener", default=None)


@contextlib.contextmanager
def member_access(opener: Callable[[Any], AbstractContextManager[Any]]) -> Iterator[None]:
    """While inside, :class:`GroupImportance` scores each member within ``opener(node)``.

    ``node`` is the member's graph node (``.name``, ``.module``); the opener makes its
    tensors readable for the duration (e.g. materialises them from a checkpoint into a
    meta-device layer) and restores them on exit. The order and arithmetic of scoring
    are unchanged, so the scores equal those of a model holding every tensor.
    """
    token = _OPENER.set(opener)
    try:
        yield
    finally:
        _OPENER.reset(token)

def check_power(p: float) -> float:
    """``p`` of a norm or power, refused at construction when it is not positive.

    Raises:
        OptionError (a ValueError): ``p <= 0`` (or not a number).
    """
    if not isinstance(p, (int, float)) or isinstance(p, bool) or not p > 0:
        raise OptionError(f"p must be positive (1 for L1, 2 for L2), got {p!r}")
    return p


_REGISTRY: dict[str, type] = {}
T = TypeVar("T", bound=type)


def register_importance(name: str) -> Callable[[T], T]:
    """Class decorator registering a criterion under ``name``; returns the class unchanged."""

    def deco(cls: T) -> T:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            warnings.warn(f"replacing the importance registered as {name!r}", stacklevel=2)
        _REGISTRY[name] = cls
        return cls

    return deco


def create_importance(name: str, **kwargs: Any) -> Importance:
    """Instantiate the criterion registered as ``name`` with ``kwargs``.

    Raises:
        DepgraphError: no criterion has that name (the message lists the known ones).
    """
    cls = _REGISTRY.get(name)
    if cls is None:
        raise DepgraphError(
            f"no importance criterion is registered as {name!r}; known: {', '.join(sorted(_REGISTRY))}"
        )
    return cls(**kwargs)


def list_importances() -> list[str]:
    """Names of the registered criteria, sorted."""
    return sorted(_REGISTRY)


class Importance:
    """Base class of importance criteria: ``__call__(group) -> 1-D tensor``.

    Subclasses implement ``__call__``; most should derive from
    :class:`GroupImportance`, which handles member iteration, index mapping,
    reduction and normalisation.
    """

    def __call__(self, group: Group) -> torch.Tensor | None:
        raise NotImplementedError(f"{type(self).__name__} must implement __call__(group)")


def _refuse_meta(criterion: Importance, group: Group) -> None:
    """Scores read weights; a model on the meta device has shapes but no values to read."""
    for i in range(len(group)):
        node = group[i].dep.target
        m = node.module
        w = m if isinstance(m, torch.Tensor) else getattr(m, "weight", None)
        if isinstance(w, torch.Tensor) and w.is_meta:
            raise DepgraphError(
                f"{type(criterion).__name__} scores channels from weight values, but {node.name} is on the "
                "meta device (shapes only, no values): load real weights, score with "
                "tp.importance.RandomImportance, or prune chosen indices with DependencyGraph.get_pruning_group")


def member_indices(item: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(idxs, root_idxs)`` of a group member as int64 tensors.

    A graph's :class:`~depgraph.dependency.node.GroupItem` hands over the tensors it was planned
    with; any other ``(dep, idxs)`` item (built by hand) has its lists converted.
    """
    get = getattr(item, "index_tensors", None)
    if get is not None:
        return get()
    idxs = torch.as_tensor(list(item.idxs), dtype=torch.long)
    roots = getattr(item, "root_idxs", item.idxs)
    return idxs, (idxs if roots is item.idxs else torch.as_tensor(list(roots), dtype=torch.long))


def root_lookup(group: Group) -> tuple[int, torch.Tensor]:
    """``(n, table)``: the number of root channels and a table giving each root index's position
    among them, for :func:`root_positions`.

    One tensor per group instead of a dict of Python ints per channel.
    """
    root, _ = member_indices(group[0])
    n = root.numel()
    size = int(root.max()) + 1 if n else 0
    table = torch.full((size + 1,), -1, dtype=torch.long)  # the last entry: "not a root channel"
    table[root] = torch.arange(n)
    return n, table


def root_positions(table: torch.Tensor, root_idxs: torch.Tensor) -> torch.Tensor:
    """The position among the root channels of each of a member's ``root_idxs`` (``-1``: none)."""
    size = table.numel() - 1
    inside = (root_idxs >= 0) & (root_idxs < size)
    return table[torch.where(inside, root_idxs, size)]


class GroupImportance(Importance):
    """Score every member of a group, map the scores to root channels, reduce, normalise.

    Args:
        group_reduction: how member scores combine per root channel; one of
            ``mean, sum, max, prod, first, gate`` or ``None`` (return the
            ``(members, channels)`` stack of the members that contributed), or
            a callable ``(stack, mask) -> scores``.
        normalizer: ``mean, max, sum, standarization, gaussian, lamp`` or
            ``None``, or a callable; it makes scores of different groups
            comparable for global ranking.
        bias: also score biases (as members of their own).
        target_types: only members whose layer is an instance of one of these
            are scored (``nn.Parameter`` may be added for bare parameters).

    Raises:
        OptionError (a ValueError): an unknown reduction or normaliser name (at construction).
    """

    def __init__(
        self,
        group_reduction: Reduction = "mean",
        normalizer: Normalizer = "mean",
        bias: bool = False,
        target_types: Sequence[type] | None = DEFAULT_TARGET_TYPES,
    ) -> None:
        self.group_reduction = check_reduction(group_reduction)
        self.normalizer = check_normalizer(normalizer)
        self.bias = bool(bias)
        self.target_types = tuple(target_types) if target_types is not None else DEFAULT_TARGET_TYPES

    # -- to override ---------------------------------------------------------
    def accepts(self, target: object) -> bool:
        """Whether a member's layer (or bare parameter) is scored at all.

        A layer whose handler ``acts_as`` a target type counts (GPT-2's ``Conv1D`` as ``nn.Linear``).
        """
        return matches_layer_types(target, self.target_types)

    def score_member(self, target: object, side: str, idxs: torch.Tensor, dep: Dependency) -> torch.Tensor | None:
        """Scores ``(len(idxs),)`` of one member, or None to skip it."""
        raise NotImplementedError(f"{type(self).__name__} must implement score_member")

    def member_scores(self, target: object, side: str, idxs: torch.Tensor, dep: Dependency) -> list[torch.Tensor]:
        """All score rows one member adds (one, or more, e.g. with ``bias=True``)."""
        s = self.score_member(target, side, idxs, dep)
        return [] if s is None else [s]

    # -- the template ----------------------------------------------------------
    @torch.no_grad()
    def __call__(self, group: Group) -> torch.Tensor | None:
        opener = _OPENER.get()
        if opener is None:
            _refuse_meta(self, group)
        n, table = root_lookup(group)
        rows: list[tuple[torch.Tensor, torch.Tensor]] = []  # (scores, root position or n: none)
        for i in range(len(group)):
            item = group[i]
            dep = item.dep
            target = dep.target.module
            side = dep.side  # recorded when the graph built the dependency
            if side not in CHANNEL_SIDES or not self.accepts(target) or len(item.idxs) == 0:
                continue
            idxs, roots = member_indices(item)
            pos = root_positions(table, roots)
            col = torch.where(pos >= 0, pos, n)
            with opener(dep.target) if opener is not None else contextlib.nullcontext():
                for s in self.member_scores(target, side, idxs, dep):
                    s = s.detach().flatten()
                    rows.append((s.to(torch.float64 if s.dtype == torch.float64 else torch.float32), col))
        if not rows:
            return None
        stack, mask = _stack(rows, n)
        scores = reduce_stack(stack, mask, self.group_reduction)
        return normalize(scores, self.normalizer)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(group_reduction={self.group_reduction!r}, "
            f"normalizer={self.normalizer!r}, bias={self.bias})"
        )


def _stack(rows: list[tuple[torch.Tensor, torch.Tensor]], n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(members, n)`` scores summed onto root positions (a flatten maps many to one) and the
    mask of the cells some score reached; column ``n`` of each row takes what reaches no root.

    One ``index_add`` over all rows: per row only its offset is a tensor op.
    """
    device, dtype = rows[0][0].device, rows[0][0].dtype
    if any(s.device != device or s.dtype != dtype for s, _ in rows):  # mixed: one row at a time
        out_dtype = torch.float64 if any(s.dtype == torch.float64 for s, _ in rows) else torch.float32
        parts = [_stack([(s, col)], n) for s, col in rows]
        return (torch.cat([p[0].to(device, out_dtype) for p in parts]),
                torch.cat([p[1].to(device) for p in parts]))
    m, width = len(rows), n + 1
    flat = torch.cat([col.to(device) + k * width for k, (_, col) in enumerate(rows)])
    stack = torch.zeros(m * width, dtype=dtype, device=device)
    stack.index_add_(0, flat, torch.cat([s for s, _ in rows]))
    mask = torch.zeros(m * width, dtype=torch.bool, device=device)
    mask[flat] = True
    return stack.view(m, width)[:, :n].contiguous(), mask.view(m, width)[:, :n].contiguous()
