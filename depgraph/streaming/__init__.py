"""Prune checkpoints bigger than memory: plan on ``meta``, stream the safetensors shards, write a pruned checkpoint.

    >>> from depgraph.streaming import prune_checkpoint
    >>> print(prune_checkpoint("llama-7b", "llama-7b-pruned", ratio=0.2, max_memory="2GB"))

See :mod:`depgraph.streaming.api` for the stages and :mod:`depgraph.streaming.plan`
for why the streamed result equals the in-memory one. transformers is imported
only when a checkpoint is pruned.
"""

from .api import StreamReport, prune_checkpoint
from .memory import available_memory, parse_size
from .options import IMPORTANCES, PruneOptions
from .shards import CheckpointError, MemoryBudgetError

__all__ = [
    "prune_checkpoint",
    "StreamReport",
    "PruneOptions",
    "IMPORTANCES",
    "parse_size",
    "available_memory",
    "CheckpointError",
    "MemoryBudgetError",
]
