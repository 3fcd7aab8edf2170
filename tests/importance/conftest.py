"""Fixtures: hand-built groups for unit-testing criteria without the dependency graph.

A group here has the contract shape: ``group[i]`` has ``.dep`` (with
``.target.module`` and ``.handler``), ``.idxs`` and ``.root_idxs``; iterating
yields ``(dep, idxs)``. Build one with the ``make_group`` fixture.
"""

from dataclasses import dataclass, field

import pytest


class FakeHandler:
    """Stands in for a depgraph handler: only the identity of its bound methods matters."""

    def prune_out_channels(self, layer, idxs):
        raise AssertionError("criteria must not prune")

    def prune_in_channels(self, layer, idxs):
        raise AssertionError("criteria must not prune")


HANDLER = FakeHandler()
OUT = HANDLER.prune_out_channels
IN = HANDLER.prune_in_channels


@dataclass
class Node:
    module: object
    name: str = "layer"
    pruning_dim: int | None = None


@dataclass
class Dep:
    target: Node
    handler: object
    side: str = "out"  # recorded by the graph when it builds a Dependency
    source: Node | None = None
    trigger: object = None


@dataclass
class Item:
    dep: Dep
    idxs: list
    root_idxs: list


@dataclass
class Group:
    items: list = field(default_factory=list)

    def __getitem__(self, i):
        return self.items[i]

    def __len__(self):
        return len(self.items)

    def __iter__(self):
        return iter((it.dep, it.idxs) for it in self.items)


def make_group(*members):
    """``members``: ``(module, side, idxs, root_idxs=None, pruning_dim=None)``; first one is the root."""
    items = []
    for m in members:
        module, side, idxs = m[0], m[1], list(m[2])
        root = list(m[3]) if len(m) > 3 and m[3] is not None else list(idxs)
        dim = m[4] if len(m) > 4 else None
        handler = OUT if side == "out" else IN
        items.append(Item(Dep(Node(module, pruning_dim=dim), handler, side), idxs, root))
    return Group(items)


@pytest.fixture(name="make_group")
def make_group_fixture():
    return make_group


@pytest.fixture(name="sides")
def sides_fixture():
    return {"out": OUT, "in": IN}
