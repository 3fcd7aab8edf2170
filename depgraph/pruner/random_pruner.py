"""``RandomPruner``: the baseline that removes random channels."""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from ..importance import RandomImportance
from .base import BasePruner

__all__ = ["RandomPruner"]


class RandomPruner(BasePruner):
    """``BasePruner`` with :class:`~depgraph.importance.RandomImportance` by default."""

    def __init__(self, model: nn.Module, example_inputs: Any, importance: Any = None, **kwargs: Any) -> None:
        super().__init__(
            model, example_inputs, importance if importance is not None else RandomImportance(), **kwargs
        )
