"""Per-module pruning handlers and the ``tp.prune_*_channels`` functions.

Each function below is the bound method of one stateless handler instance,
created once, so ``prune_conv_out_channels is ConvPruner.INSTANCE.prune_out_channels``
holds and the dependency graph can compare a member's handler with ``is``.
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
    # pruning functions
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
    # legacy names of the first release
    "prune_conv",
    "prune_related_conv",
    "prune_batchnorm",
    "prune_linear",
    "prune_related_linear",
]

prune_conv_out_channels = ConvPruner.INSTANCE.prune_out_channels
prune_conv_in_channels = ConvPruner.INSTANCE.prune_in_channels
prune_depthwise_conv_out_channels = DepthwiseConvPruner.INSTANCE.prune_out_channels
prune_depthwise_conv_in_channels = DepthwiseConvPruner.INSTANCE.prune_in_channels
prune_batchnorm_out_channels = BatchNormPruner.INSTANCE.prune_out_channels
prune_batchnorm_in_channels = BatchNormPruner.INSTANCE.prune_in_channels
prune_linear_out_channels = LinearPruner.INSTANCE.prune_out_channels
prune_linear_in_channels = LinearPruner.INSTANCE.prune_in_channels
prune_conv1d_out_channels = Conv1DPruner.INSTANCE.prune_out_channels  # transformers' Conv1D (GPT-2)
prune_conv1d_in_channels = Conv1DPruner.INSTANCE.prune_in_channels
prune_prelu_out_channels = PReLUPruner.INSTANCE.prune_out_channels
prune_prelu_in_channels = PReLUPruner.INSTANCE.prune_in_channels
prune_layernorm_out_channels = LayerNormPruner.INSTANCE.prune_out_channels
prune_layernorm_in_channels = LayerNormPruner.INSTANCE.prune_in_channels
prune_rmsnorm_out_channels = prune_layernorm_out_channels
prune_rmsnorm_in_channels = prune_layernorm_in_channels
prune_embedding_out_channels = EmbeddingPruner.INSTANCE.prune_out_channels
prune_embedding_in_channels = EmbeddingPruner.INSTANCE.prune_in_channels
prune_parameter_out_channels = ParameterPruner.INSTANCE.prune_out_channels
prune_parameter_in_channels = ParameterPruner.INSTANCE.prune_in_channels
prune_multihead_attention_out_channels = MultiheadAttentionPruner.INSTANCE.prune_out_channels
prune_multihead_attention_in_channels = MultiheadAttentionPruner.INSTANCE.prune_in_channels
prune_groupnorm_out_channels = GroupNormPruner.INSTANCE.prune_out_channels
prune_groupnorm_in_channels = GroupNormPruner.INSTANCE.prune_in_channels
prune_instancenorm_out_channels = InstanceNormPruner.INSTANCE.prune_out_channels
prune_instancenorm_in_channels = InstanceNormPruner.INSTANCE.prune_in_channels
prune_lstm_out_channels = LSTMPruner.INSTANCE.prune_out_channels
prune_lstm_in_channels = LSTMPruner.INSTANCE.prune_in_channels
prune_gru_out_channels = prune_lstm_out_channels
prune_gru_in_channels = prune_lstm_in_channels
prune_rnn_out_channels = prune_lstm_out_channels
prune_rnn_in_channels = prune_lstm_in_channels

# The first release's names.
prune_conv = prune_conv_out_channels
prune_related_conv = prune_conv_in_channels
prune_batchnorm = prune_batchnorm_out_channels
prune_linear = prune_linear_out_channels
prune_related_linear = prune_linear_in_channels
