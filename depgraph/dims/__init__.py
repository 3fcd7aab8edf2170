"""Per-op dimension rules and the index maps they use.

Importing this package registers every built-in rule. Add a rule for a new op
with :func:`register_dim_rule`.
"""

from __future__ import annotations

from . import (  # noqa: F401  (register rules)
    attention,
    concat,
    elementwise,
    embedding,
    factory,
    indexing,
    linear_ops,
    modules,
    reduce,
    reshape,
    spatial,
)
from .indexmap import Compose, Gather, Identity, IndexMap, Lookup, Offset
from .registry import RuleContext, get_dim_rule, register_dim_rule, registered_dim_rules

__all__ = [
    "IndexMap",
    "Identity",
    "Offset",
    "Gather",
    "Lookup",
    "Compose",
    "RuleContext",
    "register_dim_rule",
    "get_dim_rule",
    "registered_dim_rules",
]
