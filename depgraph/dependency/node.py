"""Nodes (prunable layers or bare tensors) and the dependencies between them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

__all__ = ["Node", "Dependency", "GroupItem", "fn_name"]


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


class Dependency:
    """``trigger`` applied to ``source`` requires ``handler`` applied to ``target``."""

    def __init__(self, trigger: Callable, handler: Callable, source: Node, target: Node):
        self.trigger = trigger
        self.handler = handler
        self.source = source
        self.target = target

    @property
    def layer(self) -> Any:
        """The pruned module (or tensor): the original's name for ``dep.target.module``."""
        return self.target.module

    @property
    def pruning_dim(self) -> int | None:
        """For a bare parameter target, the dim its channels lie along; None for a module."""
        return self.target.pruning_dim

    def is_out(self) -> bool:
        """Whether the dependency removes output channels of its target (else input channels)."""
        return getattr(self.handler, "__name__", "") == "prune_out_channels"

    def __call__(self, idxs) -> Any:
        if self.target.is_parameter:
            return self.handler(self.target.module, idxs, dim=self.target.pruning_dim)
        return self.handler(self.target.module, idxs)

    def __repr__(self) -> str:
        return (
            f"[DEP] {fn_name(self.trigger)} on {self.source.name} => "
            f"{fn_name(self.handler)} on {self.target.name}"
        )


class GroupItem:
    """One member of a group: a dependency and the indices it removes from its target.

    Unpacks as ``dep, idxs``. ``root_idxs[i]`` is the root channel that
    ``idxs[i]`` goes with, which is how importance scores of all members are
    gathered onto the root's channels.
    """

    __slots__ = ("dep", "idxs", "root_idxs")

    def __init__(self, dep: Dependency, idxs: list[int], root_idxs: list[int]):
        self.dep, self.idxs, self.root_idxs = dep, idxs, root_idxs

    def __iter__(self):
        return iter((self.dep, self.idxs))

    def __getitem__(self, i: int):
        return (self.dep, self.idxs)[i]

    def __len__(self) -> int:
        return 2

    def __repr__(self) -> str:
        return f"GroupItem({self.dep!r}, idxs={_short(self.idxs)})"


def _short(idxs: list[int], n: int = 12) -> str:
    return str(idxs) if len(idxs) <= n else f"[{', '.join(map(str, idxs[:n]))}, ...]"
