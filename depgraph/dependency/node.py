"""Nodes (prunable layers or bare tensors) and the dependencies between them."""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ..functional.parametrized import plain_weights

__all__ = ["Node", "Dependency", "GroupItem", "fn_name", "index_list", "pruning_side"]


def fn_name(fn: Callable | None) -> str:
    """``prune_out_channels`` -> the public name, e.g. ``prune_conv_out_channels``."""
    if fn is None:
        return "None"
    from .. import functional

    for name in functional.__all__:
        if name.startswith("prune_") and getattr(functional, name) is fn:
            return name
    owner = getattr(fn, "__self__", None)
    return f"{type(owner).__name__}.{fn.__name__}" if owner is not None else getattr(fn, "__name__", repr(fn))


class Node:
    """A prunable thing: a module with a handler, or a bare parameter/buffer (``pruning_dim`` set)."""

    def __init__(self, module: nn.Module | torch.Tensor, name: str, handler: Any, pruning_dim: int | None = None):
        self.module = module
        self.name = name
        self.handler = handler
        self.pruning_dim = pruning_dim
        self.out_slot: int | None = None
        self.in_slot: int | None = None

    @property
    def is_parameter(self) -> bool:
        """Whether the node is a bare parameter/buffer (pruned along ``pruning_dim``) rather than a module."""
        return self.pruning_dim is not None

    def __repr__(self) -> str:
        if self.is_parameter:
            return f"<Node: {self.name} (Parameter{tuple(self.module.shape)}, dim={self.pruning_dim})>"
        return f"<Node: {self.name} ({self.module})>"


def pruning_side(fn: Callable | None) -> str | None:
    """``"out"`` or ``"in"`` when ``fn`` is a handler's pruning method, else None.

    Decided by identity, never by name: ``fn`` must be bound to a
    :class:`~depgraph.functional.BasePruningFunc` and *be* (``==``) that handler's
    ``prune_out_channels`` or ``prune_in_channels`` (the ``tp.prune_*`` functions are
    such bound methods). A handler whose methods carry other names
    (``prune_out_channels = shrink_rows``) is recognised; a lambda is not. A handler
    with one set of channels (``prune_in_channels = prune_out_channels``) counts as "out".
    """
    from ..functional.base import BasePruningFunc

    owner = getattr(fn, "__self__", None)
    if not isinstance(owner, BasePruningFunc):
        return None
    if fn == getattr(owner, "prune_out_channels", None):
        return "out"
    if fn == getattr(owner, "prune_in_channels", None):
        return "in"
    return None


def _takes_index_tensors(fn: Callable) -> bool:
    """Whether ``fn`` is a pruning method written in depgraph (which accepts int64 index tensors)."""
    func = getattr(fn, "__func__", None)
    return func is not None and getattr(func, "__module__", "").startswith("depgraph.") and pruning_side(fn) is not None


class Dependency:
    """``trigger`` applied to ``source`` requires ``handler`` applied to ``target``.

    The side the handler prunes (``"out"``, ``"in"``, or ``"heads"`` for whole heads of a
    layer that computes attention inside itself) is fixed when the dependency is built,
    from the graph endpoint it was read from; nothing looks at method names.

    Attributes:
        trigger: the pruning function applied to ``source``.
        handler: the pruning function applied to ``target`` (alias :attr:`pruning_fn`).
        source, target: :class:`Node` objects (``.module``, ``.name``).
        side: ``"out"``, ``"in"`` or ``"heads"``.
        index_mapping: kept for Torch-Pruning compatibility; depgraph maps indices in the
            graph, so it is ``[None, None]``.
    """

    def __init__(self, trigger: Callable, handler: Callable, source: Node, target: Node,
                 *, side: str | None = None):
        self.trigger = trigger
        self.handler = handler
        self.source = source
        self.target = target
        self.side = side if side is not None else (pruning_side(handler) or "out")
        self.index_mapping = [None, None]

    @property
    def layer(self) -> Any:
        """The pruned module (or tensor): the original's name for ``dep.target.module``."""
        return self.target.module

    @property
    def pruning_fn(self) -> Callable:
        """Alias of :attr:`handler` (the original's name)."""
        return self.handler

    @property
    def pruning_dim(self) -> int | None:
        """For a bare parameter target, the dim its channels lie along; None for a module."""
        return self.target.pruning_dim

    def is_out(self) -> bool:
        """Whether the handler removes output channels of its target (stored when built)."""
        return self.side == "out"

    def is_triggered_by(self, pruning_fn: Callable) -> bool:
        """Whether ``pruning_fn`` is this dependency's trigger."""
        return pruning_fn == self.trigger

    def __call__(self, idxs) -> Any:
        if self.target.is_parameter:
            return self.handler(self.target.module, idxs, dim=self.target.pruning_dim)
        with plain_weights(self.target.module):  # a weight-normed layer: g and v follow its weight
            return self.handler(self.target.module, idxs)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Dependency):
            return NotImplemented
        return (self.source is other.source and self.target is other.target
                and self.trigger == other.trigger and self.handler == other.handler)

    def __hash__(self) -> int:
        return hash((id(self.source), id(self.target), self.trigger, self.handler))

    def __repr__(self) -> str:
        return (
            f"[DEP] {fn_name(self.trigger)} on {self.source.name} => "
            f"{fn_name(self.handler)} on {self.target.name}"
        )


class GroupItem(namedtuple("GroupItem", ["dep", "idxs"])):
    """One member of a group: a dependency and the indices it removes from its target.

    A named tuple ``(dep, idxs)`` as in Torch-Pruning: ``for dep, idxs in group``,
    ``item.dep``, ``item._asdict()`` all work. ``item.root_idxs[i]`` (an attribute, not
    a field, so unpacking stays two-wide) is the root channel that ``idxs[i]`` goes with,
    which is how importance scores of all members are gathered onto the root's channels;
    it defaults to ``idxs``.
    """

    def __new__(cls, dep: Dependency, idxs: list[int], root_idxs: list[int] | None = None, *,
                tensors: tuple[torch.Tensor, torch.Tensor] | None = None) -> GroupItem:
        self = super().__new__(cls, dep, idxs)
        if root_idxs is not None:
            self.__dict__["root_idxs"] = root_idxs
        if tensors is not None:  # the planner's int64 tensors of idxs and root_idxs, kept for criteria
            self.__dict__["index_tensors_"] = tensors
        return self

    def index_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(idxs, root_idxs)`` as int64 tensors, so criteria need not rebuild them from the lists.

        The graph's members carry the tensors they were planned with; any other member (built by
        hand, or whose lists were changed in place to another length) converts its lists.
        """
        idxs, roots = self.idxs, self.root_idxs
        kept = self.__dict__.get("index_tensors_")
        if kept is not None and kept[0].numel() == len(idxs) and kept[1].numel() == len(roots):
            return kept
        t = torch.as_tensor(list(idxs), dtype=torch.long)
        return t, (t if roots is idxs else torch.as_tensor(list(roots), dtype=torch.long))

    def handler_indices(self) -> list[int] | torch.Tensor:
        """What the graph hands this member's handler: the planned int64 tensor for depgraph's own
        handlers (they take tensors, and turning a list back into one costs more than pruning a small
        layer), the list for any other (Torch-Pruning handlers expect a list).

        The list wins whenever it no longer matches the tensor (changed in place since planning).
        """
        idxs = self.idxs
        kept = self.__dict__.get("index_tensors_")
        if kept is None or not _takes_index_tensors(self.dep.handler):
            return idxs
        t = kept[0]
        if t.numel() != len(idxs) or t.tolist() != (idxs if isinstance(idxs, list) else list(idxs)):
            return idxs
        return t

    @property
    def root_idxs(self) -> list[int]:
        """The root's positions each of ``idxs`` follows (as ``idxs`` when none were given): criteria
        use it to add a member's scores to the right root channel.
        """
        return self.__dict__.get("root_idxs", self.idxs)

    def __repr__(self) -> str:
        return f"GroupItem({self.dep!r}, idxs={_short(self.idxs)})"


def _short(idxs: list[int], n: int = 12) -> str:
    return str(idxs) if len(idxs) <= n else f"[{', '.join(map(str, idxs[:n]))}, ...]"


class _SharedInts:
    """One Python int object per index value, shared by every index list the graph hands out.

    ``tensor.tolist()`` makes a new 28-byte int per element; a pruner holding every group of
    an LLM (an MLP group lists 28672 channels on three members, twice) then holds hundreds
    of megabytes of equal ints. Lists built from this pool cost the 8-byte pointer only.
    """

    def __init__(self) -> None:
        self.pool = np.arange(0, dtype=object)

    def take(self, t: torch.Tensor, ascending: bool = False) -> list[int]:
        if t.numel() == 0:
            return []
        # ascending (the caller knows): the extremes are the ends, no reduction over the tensor
        low, high = (int(t[0]), int(t[-1])) if ascending else (int(t.min()), int(t.max()))
        if low < 0:
            return t.tolist()
        if high >= len(self.pool):
            self.pool = np.arange(max(high + 1, 2 * len(self.pool)), dtype=object)
        return self.pool[t.numpy()].tolist()  # object-array indexing keeps the pool's int objects


_SHARED = _SharedInts()


def index_list(t: torch.Tensor, ascending: bool = False) -> list[int]:
    """``t.tolist()`` for a 1-D int64 tensor of indices, with ints shared across calls (see :class:`_SharedInts`).

    ``ascending=True`` promises ``t`` is sorted (its ends are its extremes).
    """
    return _SHARED.take(t.detach().cpu().flatten(), ascending)
