"""The dependency graph, groups and their members."""

from __future__ import annotations

from .graph import DependencyGraph
from .group import Group
from .heads import AttentionHeads, ModuleHeads, find_attention_heads, find_module_heads
from .node import Dependency, GroupItem, Node

__all__ = ["DependencyGraph", "Group", "Dependency", "GroupItem", "Node", "AttentionHeads", "ModuleHeads",
           "find_attention_heads", "find_module_heads"]
