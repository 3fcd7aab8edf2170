"""Pruners: turn ratios, scopes and schedules into pruned groups.

``depgraph.pruner.importance`` is :mod:`depgraph.importance` and
``depgraph.pruner.function`` re-exports :mod:`depgraph.functional`, as in the
original package layout.
"""

from .. import importance
from . import algorithms, function
from .base import BasePruner, MagnitudePruner, MetaPruner
from .function import (
    BasePruningFunc,
    PrunerBox,
    prune_batchnorm,
    prune_batchnorm_in_channels,
    prune_batchnorm_out_channels,
    prune_conv,
    prune_conv1d_in_channels,
    prune_conv1d_out_channels,
    prune_conv_in_channels,
    prune_conv_out_channels,
    prune_depthwise_conv_in_channels,
    prune_depthwise_conv_out_channels,
    prune_embedding_in_channels,
    prune_embedding_out_channels,
    prune_groupnorm_in_channels,
    prune_groupnorm_out_channels,
    prune_gru_in_channels,
    prune_gru_out_channels,
    prune_instancenorm_in_channels,
    prune_instancenorm_out_channels,
    prune_layernorm_in_channels,
    prune_layernorm_out_channels,
    prune_linear,
    prune_linear_in_channels,
    prune_linear_out_channels,
    prune_lstm_in_channels,
    prune_lstm_out_channels,
    prune_multihead_attention_in_channels,
    prune_multihead_attention_out_channels,
    prune_parameter_in_channels,
    prune_parameter_out_channels,
    prune_prelu_in_channels,
    prune_prelu_out_channels,
    prune_related_conv,
    prune_related_linear,
    prune_rmsnorm_in_channels,
    prune_rmsnorm_out_channels,
    prune_rnn_in_channels,
    prune_rnn_out_channels,
)
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
    # low-level pruning functions, as the original re-exports them here
    "BasePruningFunc",
    "PrunerBox",
    "prune_conv",
    "prune_related_conv",
    "prune_batchnorm",
    "prune_linear",
    "prune_related_linear",
    "prune_conv_out_channels",
    "prune_conv_in_channels",
    "prune_depthwise_conv_out_channels",
    "prune_depthwise_conv_in_channels",
    "prune_batchnorm_out_channels",
    "prune_batchnorm_in_channels",
    "prune_linear_out_channels",
    "prune_linear_in_channels",
    "prune_conv1d_out_channels",
    "prune_conv1d_in_channels",
    "prune_prelu_out_channels",
    "prune_prelu_in_channels",
    "prune_layernorm_out_channels",
    "prune_layernorm_in_channels",
    "prune_rmsnorm_out_channels",
    "prune_rmsnorm_in_channels",
    "prune_embedding_out_channels",
    "prune_embedding_in_channels",
    "prune_parameter_out_channels",
    "prune_parameter_in_channels",
    "prune_multihead_attention_out_channels",
    "prune_multihead_attention_in_channels",
    "prune_groupnorm_out_channels",
    "prune_groupnorm_in_channels",
    "prune_instancenorm_out_channels",
    "prune_instancenorm_in_channels",
    "prune_lstm_out_channels",
    "prune_lstm_in_channels",
    "prune_gru_out_channels",
    "prune_gru_in_channels",
    "prune_rnn_out_channels",
    "prune_rnn_in_channels",
    # sub-modules under their original names
    "importance",
    "function",
    "algorithms",
]
