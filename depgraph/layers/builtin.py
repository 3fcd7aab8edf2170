"""The built-in layer specs: one :class:`LayerSpec` per layer family, each registered once.

Each spec names its parts where they are written: the handler in
:mod:`depgraph.functional`, the dimension rule in :mod:`depgraph.dims.modules`, the
channel layout in :mod:`depgraph.importance.channels` and the MAC rule in
:mod:`depgraph.utils.op_rules`. transformers' ``Conv1D`` has its spec beside its
handler (:mod:`depgraph.functional.hf_conv1d`), registered once transformers is
imported. Modules with a MAC rule and nothing to prune (activations, pooling,
upsampling, RNN cells) register only that part, with
:func:`~depgraph.utils.register_op_rule`.
"""

from __future__ import annotations

import torch.nn as nn

from ..dims import modules as rules
from ..functional.attention import MultiheadAttentionPruner
from ..functional.conv import ConvPruner
from ..functional.embedding import EmbeddingPruner
from ..functional.groupnorm import GroupNormPruner
from ..functional.layernorm import LayerNormPruner
from ..functional.linear import LinearPruner
from ..functional.norm import BatchNormPruner, InstanceNormPruner
from ..functional.prelu import PReLUPruner
from ..functional.rnn import LSTMPruner
from ..importance import channels as layouts
from ..utils import op_rules as macs
from ..utils import op_rules_seq as seq_macs
from .spec import LayerSpec, register_layer

__all__ = [
    "ConvSpec",
    "ConvTransposeSpec",
    "LinearSpec",
    "BatchNormSpec",
    "InstanceNormSpec",
    "GroupNormSpec",
    "LayerNormSpec",
    "PReLUSpec",
    "EmbeddingSpec",
    "MultiheadAttentionSpec",
    "RNNSpec",
]

_RMSNORM = (nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()


@register_layer(nn.Conv1d, nn.Conv2d, nn.Conv3d)
class ConvSpec(LayerSpec):
    """Convolutions (grouped and depthwise too)."""

    handler = ConvPruner.INSTANCE
    dim_rule = staticmethod(rules.conv_module_rule)
    channel_slices = staticmethod(layouts.conv_slices)
    count_macs = staticmethod(macs.count_conv)


@register_layer(nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
class ConvTransposeSpec(ConvSpec):
    """Transposed convolutions: as :class:`ConvSpec`, MACs charged per input element."""

    count_macs = staticmethod(macs.count_conv_transpose)


@register_layer(nn.Linear)
class LinearSpec(LayerSpec):
    """``nn.Linear`` (and subclasses such as timm's ``Linear``)."""

    handler = LinearPruner.INSTANCE
    dim_rule = staticmethod(rules.linear_module_rule)
    channel_slices = staticmethod(layouts.linear_slices)
    count_macs = staticmethod(macs.count_linear)


@register_layer(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
class BatchNormSpec(LayerSpec):
    """Batch norms: one set of channels, passed through."""

    handler = BatchNormPruner.INSTANCE
    dim_rule = staticmethod(rules.batchnorm_module_rule)
    channel_slices = staticmethod(layouts.per_channel_slices)
    count_macs = staticmethod(macs.count_affine_norm)


@register_layer(nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
class InstanceNormSpec(BatchNormSpec):
    """Instance norms: as batch norms, the channel dim counted from the spatial dims."""

    handler = InstanceNormPruner.INSTANCE
    dim_rule = staticmethod(rules.instancenorm_module_rule)


@register_layer(nn.GroupNorm)
class GroupNormSpec(BatchNormSpec):
    """``nn.GroupNorm``: channels factored into (groups, per group); normalising makes it inexact."""

    handler = GroupNormPruner.INSTANCE
    dim_rule = staticmethod(rules.groupnorm_module_rule)


@register_layer(nn.LayerNorm, *_RMSNORM)
class LayerNormSpec(LayerSpec):
    """``nn.LayerNorm`` and ``nn.RMSNorm`` over the last dim."""

    handler = LayerNormPruner.INSTANCE
    dim_rule = staticmethod(rules.layernorm_module_rule)
    channel_slices = staticmethod(layouts.layer_norm_slices)
    count_macs = staticmethod(macs.count_layer_norm)


@register_layer(nn.PReLU)
class PReLUSpec(LayerSpec):
    """``nn.PReLU``: per-channel slopes (one shared slope couples nothing)."""

    handler = PReLUPruner.INSTANCE
    dim_rule = staticmethod(rules.prelu_module_rule)
    channel_slices = staticmethod(layouts.per_channel_slices)
    count_macs = staticmethod(macs.count_activation)


@register_layer(nn.Embedding, nn.EmbeddingBag)
class EmbeddingSpec(LayerSpec):
    """Embedding tables ``(V, D)``: the channels are ``D``."""

    handler = EmbeddingPruner.INSTANCE
    dim_rule = staticmethod(rules.embedding_module_rule)
    channel_slices = staticmethod(layouts.embedding_slices)
    count_macs = staticmethod(macs.count_free)


@register_layer(nn.MultiheadAttention)
class MultiheadAttentionSpec(LayerSpec):
    """``nn.MultiheadAttention``: the embed dim, widened to the same position in every head."""

    handler = MultiheadAttentionPruner.INSTANCE
    dim_rule = staticmethod(rules.mha_module_rule)
    count_macs = staticmethod(seq_macs.count_mha)


@register_layer(nn.LSTM, nn.GRU, nn.RNN)
class RNNSpec(LayerSpec):
    """Recurrent layers (multi-layer, bidirectional): input features and hidden units."""

    handler = LSTMPruner.INSTANCE
    dim_rule = staticmethod(rules.rnn_module_rule)
    count_macs = staticmethod(seq_macs.count_rnn)
