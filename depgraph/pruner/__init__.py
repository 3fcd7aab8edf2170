"""Pruners: turn ratios, scopes and schedules into pruned groups.

``depgraph.pruner.importance`` is :mod:`depgraph.importance` and
``depgraph.pruner.function`` re-exports :mod:`depgraph.functional`, as in the
original package layout.
"""

from .. import importance
from . import algorithms, function
from .base import BasePruner, MagnitudePruner, MetaPruner
from .options import PrunerOptions
from .random_pruner import RandomPruner
from .regularized import (
    BNScaleOptions,
    BNScalePruner,
    GroupNormOptions,
    GroupNormPruner,
    GrowingRegOptions,
    GrowingRegPruner,
)
from .scheduler import linear_scheduler
from .soft import zero_group

__all__ = [
    # pruners
    "BasePruner",
    "MetaPruner",
    "MagnitudePruner",
    "BNScalePruner",
    "GroupNormPruner",
    "GrowingRegPruner",
    "RandomPruner",
    # schedules and options
    "linear_scheduler",
    "PrunerOptions",
    "BNScaleOptions",
    "GroupNormOptions",
    "GrowingRegOptions",
    # soft pruning
    "zero_group",
    # sub-modules under their original names
    "importance",
    "function",
    "algorithms",
]
