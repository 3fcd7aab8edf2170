"""The dependency graph, groups and their members."""

from __future__ import annotations

from .graph import DependencyGraph
from .group import Group
from .node import Dependency, GroupItem, Node

__all__ = ["DependencyGraph", "Group", "Dependency", "GroupItem", "Node"]
