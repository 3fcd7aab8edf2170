"""Per-module pruning handlers and the ``tp.prune_*_channels`` functions.

Each ``prune_*`` function is the bound method of one stateless handler
instance, created once, so ``prune_conv_out_channels is
ConvPruner.INSTANCE.prune_out_channels`` holds and the dependency graph can
compare a member's handler with ``is``. They are generated from the handler
classes' ``names`` (see below).
"""

from __future__ import annotations

from .attention import MultiheadAttentionPruner
from .base import (
    BasePruningFunc,
    PrunerBox,
    find_handler,
    get_handler,
    keep_index,
    normalize_idxs,
    prune_tensor,
    register_handler,
    registered_handlers,
)
from .conv import ConvPruner, DepthwiseConvPruner
from .embedding import EmbeddingPruner
from .groupnorm import GroupNormPruner
from .hf_conv1d import Conv1DPruner
from .layernorm import LayerNormPruner, LayernormPruner
from .linear import LinearPruner
from .norm import BatchNormPruner, BatchnormPruner, InstanceNormPruner
from .parameter import ParameterPruner
from .prelu import PReLUPruner
from .rnn import GRUPruner, LSTMPruner, RNNPruner

__all__ = [
    # handler contract and registry
    "BasePruningFunc",
    "PrunerBox",
    "register_handler",
    "get_handler",
    "find_handler",
    "registered_handlers",
    "normalize_idxs",
    "keep_index",
    "prune_tensor",
    # handler classes
    "ConvPruner",
    "DepthwiseConvPruner",
    "LinearPruner",
    "Conv1DPruner",
    "BatchnormPruner",
    "BatchNormPruner",
    "LayernormPruner",
    "LayerNormPruner",
    "GroupNormPruner",
    "InstanceNormPruner",
    "PReLUPruner",
    "EmbeddingPruner",
    "MultiheadAttentionPruner",
    "LSTMPruner",
    "GRUPruner",
    "RNNPruner",
    "ParameterPruner",
]  # + the generated prune_*_channels, then the first release's names (below)

# The prune_* functions are generated from the handler classes: each name in a class's
# ``names`` becomes ``prune_{name}_out_channels`` / ``prune_{name}_in_channels``, the
# bound methods of its one instance (so ``dep.handler is tp.prune_conv_out_channels``).
# Generated rather than written out so that a handler's names and its exports cannot
# drift apart; depgraph/__init__.py and depgraph/pruner/__init__.py re-export them
# explicitly (STYLE.md: an explicit public surface) and tests/functional/test_exports.py
# checks that every list agrees.
EXPORTED_HANDLERS: tuple[type[BasePruningFunc], ...] = (
    ConvPruner,
    DepthwiseConvPruner,
    BatchNormPruner,
    LinearPruner,
    Conv1DPruner,  # transformers' Conv1D (GPT-2)
    PReLUPruner,
    LayerNormPruner,  # also RMSNorm
    EmbeddingPruner,
    ParameterPruner,
    MultiheadAttentionPruner,
    GroupNormPruner,
    InstanceNormPruner,
    LSTMPruner,  # also GRU and RNN
)
for _cls in EXPORTED_HANDLERS:
    for _name in _cls.names:
        for _side in ("out", "in"):
            _fn = f"prune_{_name}_{_side}_channels"
            globals()[_fn] = getattr(_cls.INSTANCE, f"prune_{_side}_channels")
            __all__.append(_fn)
del _cls, _name, _side, _fn

# The first release's names.
prune_conv = ConvPruner.INSTANCE.prune_out_channels
prune_related_conv = ConvPruner.INSTANCE.prune_in_channels
prune_batchnorm = BatchNormPruner.INSTANCE.prune_out_channels
prune_linear = LinearPruner.INSTANCE.prune_out_channels
prune_related_linear = LinearPruner.INSTANCE.prune_in_channels
# Listed last: a handler's public name (in group tables) is its first name here.
__all__ += ["prune_conv", "prune_related_conv", "prune_batchnorm", "prune_linear", "prune_related_linear"]
