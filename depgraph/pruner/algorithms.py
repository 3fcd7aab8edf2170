"""The pruner classes under Torch-Pruning's ``tp.pruner.algorithms`` path."""

from .base import BasePruner, MagnitudePruner, MetaPruner
from .regularized import BNScalePruner, GroupNormPruner, GrowingRegPruner

__all__ = ["BasePruner", "MetaPruner", "MagnitudePruner", "BNScalePruner", "GroupNormPruner", "GrowingRegPruner"]
